"""Steppers: how a scheduler runs one model — prefill one sequence, then decode many together.

`NumpyStepper` decodes the active sequences in one batched step (backends/numpy/batch.py) when the
architecture allows; any other engine (MLX, NumPy families without a batched step) goes through
`EngineStepper`, one `forward` per sequence per step: still served concurrently, not batched.
The MLX backend uses mlx-lm's own `BatchGenerator` (`MlxBatchStepper`) where mlx-lm has it: it
owns the caches and samples with mlx-lm's samplers; the scheduler keeps EOS, stop strings, lengths
and the detokenizer, as for the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Sequence

import numpy as np

from ..backends.mlx import MlxEngine
from ..backends.numpy import batch
from ..backends.numpy.engine import NumpyEngine
from ..backends.numpy.memory import available_memory
from ..engine import Engine
from .prompt_cache import PromptCache


class EngineStepper:
    """Any `Engine`: prefill and decode through `engine.forward`, sequence by sequence."""

    batched = False
    generates = False  # True: the stepper samples itself (admit / step / release)

    def __init__(self, engine: Engine):
        self.engine = engine

    def start(self, ids: Sequence[int]) -> tuple[Any, np.ndarray]:
        """A new cache holding the prompt, and the logits (vocab,) of its last token."""
        cache = self.engine.make_cache()
        return cache, self.engine.forward(list(ids), cache, last_only=True)[-1]

    def start_many(self, prompts: Sequence[Sequence[int]]) -> list[tuple[Any, np.ndarray]]:
        """`start` for several prompts admitted together."""
        return [self.start(ids) for ids in prompts]

    def retire(self, tokens: Sequence[int], cache: Any) -> None:
        """A sequence left; `cache` holds `tokens`."""

    def decode(self, tokens: Sequence[int], caches: Sequence[Any]) -> np.ndarray:
        """Logits (B, vocab): token b fed after caches[b]."""
        return np.stack([self.engine.forward([t], c, last_only=True)[-1] for t, c in zip(tokens, caches)])


class NumpyStepper(EngineStepper):
    """The NumPy backend: one (B, hidden) matmul per linear for all active sequences."""

    def __init__(self, engine: NumpyEngine, prompt_cache_bytes: int = 64 << 20):
        super().__init__(engine)
        self.batched = batch.supports(engine.model)
        self.prompt_cache = PromptCache(prompt_cache_bytes)
        kernels = engine.model.kernels
        if self.batched and kernels is not None:  # MLAS's SGEMM for the batched float32 products,
            # at the price of a packed copy of those weights: only where it fits twice over
            linears = batch.linears(engine.model)
            kernels.packs = 2 * sum(lin.pack_bytes() for lin in linears) < available_memory()[0]
            for lin in linears if kernels.packs else ():
                lin.pack()

    def start(self, ids: Sequence[int]) -> tuple[Any, np.ndarray]:
        return self.start_many([ids])[0]

    def start_many(self, prompts: Sequence[Sequence[int]]) -> list[tuple[Any, np.ndarray]]:
        """Only what the prompt cache lacks is prefilled: a prompt it has no prefix of alone, first
        (so that the next ones can reuse it: a shared system prompt), then all the remainders
        together in one `extend_step`."""
        out: list = [None] * len(prompts)
        rest = []  # (index, cache holding a prefix, the tokens after it)
        for i, ids in enumerate(prompts):
            hit = self.prompt_cache.lookup(ids)
            if hit is None:
                out[i] = super().start(ids)
                self.prompt_cache.store(ids, out[i][0])
            else:
                rest.append((i, hit[0], list(ids[hit[1]:])))
        if len(rest) > 1 and self.batched:
            rows = batch.extend_step(self.engine.model, [r[2] for r in rest], [r[1] for r in rest])
        else:
            rows = [self.engine.forward(r[2], r[1], last_only=True)[-1] for r in rest]
        for (i, cache, _), logits in zip(rest, rows):
            out[i] = (cache, logits)
            self.prompt_cache.store(prompts[i], cache)
        return out

    def retire(self, tokens: Sequence[int], cache: Any) -> None:
        self.prompt_cache.store(tokens, cache)  # the next chat turn starts with these

    def decode(self, tokens: Sequence[int], caches: Sequence[Any]) -> np.ndarray:
        if not self.batched or len(tokens) == 1:  # B = 1: exactly the single-sequence path
            return super().decode(tokens, caches)
        return batch.decode_step(self.engine.model, tokens, caches)


class MlxBatchStepper:
    """mlx-lm's continuous batching (`mlx_lm.generate.BatchGenerator`) for the MLX backend."""

    batched = True
    generates = True

    def __init__(self, engine: MlxEngine, max_batch: int = 16):
        from mlx_lm.generate import BatchGenerator

        self.engine = engine
        # no stop tokens: EOS is the scheduler's (ignore_eos too); no length limit of its own
        self.gen = BatchGenerator(engine.model, max_tokens=1 << 30, completion_batch_size=max_batch,
                                  prefill_batch_size=min(8, max_batch))
        self.seqs: dict[int, Any] = {}

    def admit(self, seq) -> None:
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        p = seq.job.params
        if p.seed is not None:
            import mlx.core as mx

            mx.random.seed(p.seed)  # mlx-lm samples from one global generator: seeds are not per request
        sampler = make_sampler(temp=p.temp, top_p=p.top_p, min_p=p.min_p, min_tokens_to_keep=p.min_tokens_to_keep,
                               top_k=p.top_k)
        processors = make_logits_processors(repetition_penalty=p.repetition_penalty,
                                            repetition_context_size=p.repetition_context_size)
        [uid] = self.gen.insert([list(seq.job.ids)], max_tokens=[seq.job.max_tokens + 1], samplers=[sampler],
                                logits_processors=[processors])
        seq.uid = uid
        self.seqs[uid] = seq

    def step(self) -> list[tuple[Any, int]]:
        """(sequence, sampled token) for every sequence that got one in this step."""
        return [(self.seqs[r.uid], int(r.token)) for r in self.gen.next_generated() if r.uid in self.seqs]

    def release(self, seq) -> None:
        if self.seqs.pop(getattr(seq, "uid", -1), None) is not None:
            self.gen.remove([seq.uid])

    def close(self) -> None:
        self.gen.close()


def has_batch_generator() -> bool:
    return importlib.util.find_spec("mlx_lm") is not None and \
        hasattr(importlib.import_module("mlx_lm.generate"), "BatchGenerator")


def stepper_for(engine: Engine, max_batch: int = 16, prompt_cache_bytes: int = 64 << 20):
    if isinstance(engine, NumpyEngine):
        return NumpyStepper(engine, prompt_cache_bytes)
    if isinstance(engine, MlxEngine) and has_batch_generator():
        return MlxBatchStepper(engine, max_batch)
    return EngineStepper(engine)
