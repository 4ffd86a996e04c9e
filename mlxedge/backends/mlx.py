"""The MLX backend, kept thin: mlx-lm's model definitions, KV cache, sampler and `generate_step`.

Stopping, detokenizing and statistics stay in `mlxedge.engine`, shared with the NumPy backend.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import MlxEdgeError
from ..engine import process_peak_rss
from ..sampling import SamplingParams


def is_available() -> bool:
    """mlx and mlx-lm are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("mlx", "mlx_lm"))


def metal_available() -> bool:
    """An Apple GPU is there for MLX (the case where MLX is the fast backend)."""
    if importlib.util.find_spec("mlx") is None:
        return False
    import mlx.core as mx

    return bool(mx.metal.is_available())


class MlxEngine:
    """An mlx-lm model loaded from a bundle directory."""

    name = "mlx"

    def __init__(self, directory: str | Path):
        if not is_available():
            raise MlxEdgeError("the mlx backend needs `pip install mlx mlx-lm` (or mlx[cpu] on Linux)")
        from mlx_lm.utils import load_model

        try:
            # load_model is mlx_lm.load without the transformers tokenizer (ours is shared)
            self.model, self.config = load_model(Path(directory))
        except (ValueError, FileNotFoundError, RuntimeError, KeyError, TypeError, AttributeError) as e:
            raise MlxEdgeError(f"mlx-lm cannot load {directory}: {str(e).splitlines()[0][:200] if str(e) else repr(e)}") from None
        import mlx.core as mx

        if not mx.metal.is_available():
            # MLX's CPU quantized matmul is ~40x slower in float16 than in float32 (measured: 4.1 s
            # vs 0.11 s for 48x576 @ 576x1536, 4-bit); upcasting scales and norms is exact.
            self.model.set_dtype(mx.float32)

    def make_cache(self) -> list:
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.model)

    def cache_length(self, cache: list) -> int:
        return int(cache[0].offset) if cache else 0

    def trim_cache(self, cache: list, n: int) -> bool:
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if n == 0:
            return True
        if not can_trim_prompt_cache(cache):
            return False
        trim_prompt_cache(cache, n)
        return True

    def forward(self, ids: Sequence[int], cache: Any = None, last_only: bool = False) -> np.ndarray:
        import mlx.core as mx

        logits = self.model(mx.array(np.asarray(ids, dtype=np.uint32))[None], cache=cache)  # (1, T, vocab)
        logits = logits[0, -1:] if last_only else logits[0]
        return np.array(logits.astype(mx.float32))

    def token_stream(self, ids: Sequence[int], cache: list, params: SamplingParams,
                     history: Sequence[int] = ()) -> Iterator[int]:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, generation_stream, wired_limit
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        if params.seed is not None:
            mx.random.seed(params.seed)
        sampler = make_sampler(temp=params.temp, top_p=params.top_p, min_p=params.min_p,
                               min_tokens_to_keep=params.min_tokens_to_keep, top_k=params.top_k)
        processors = make_logits_processors(repetition_penalty=params.repetition_penalty,
                                            repetition_context_size=params.repetition_context_size)
        if processors and history:
            # generate_step only sees the tokens fed in this call; the penalty also wants earlier turns
            earlier = mx.array(np.asarray(history, dtype=np.uint32))
            processors = [lambda toks, logits, p=p: p(mx.concatenate([earlier, toks]), logits)
                          for p in processors]
        prompt = mx.array(np.asarray(ids, dtype=np.uint32))
        # as in mlx-lm's stream_generate: keep the weights wired in GPU memory while generating
        with wired_limit(self.model, [generation_stream]):
            # generate_step feeds each token before yielding it: the cache holds every yielded token
            for token, _ in generate_step(prompt, self.model, max_tokens=-1, sampler=sampler,
                                          logits_processors=processors or None, prompt_cache=cache):
                yield int(token)

    def peak_memory(self) -> int:
        import mlx.core as mx

        return max(int(mx.get_peak_memory()), process_peak_rss())


def load(directory: str | Path) -> MlxEngine:
    """Load a bundle with mlx-lm."""
    return MlxEngine(directory)
