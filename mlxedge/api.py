"""The Python API: `m = mlxedge.load(path)`, then `m.generate`, `m.stream`, `m.logits`, `m.tokenizer`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import modelcache, store
from .errors import MlxEdgeError, OutOfMemory
from .backends import make_engine
from .engine import Engine, Generation
from .formats.bundle import read_config
from .sampling import SamplingParams
from .tokenizer import Tokenizer

SAMPLING_KEYS = {"temp", "top_p", "top_k", "min_p", "min_tokens_to_keep", "repetition_penalty",
                 "repetition_context_size", "seed"}


class Model:
    """A loaded model: a tokenizer and an engine (backend) over one bundle directory."""

    def __init__(self, directory: Path, engine: Engine, tokenizer: Tokenizer, context_length: int | None = None):
        self.path = directory
        self.engine = engine
        self.tokenizer = tokenizer
        self.defaults = store.settings(directory)  # a store model's SYSTEM / PARAMETERs: under arguments
        self.context_length = context_length  # config.json's max_position_embeddings; None: unknown
        if self.defaults.get("num_ctx"):  # a Modelfile's num_ctx narrows it
            self.context_length = min(self.defaults["num_ctx"], context_length or self.defaults["num_ctx"])

    def check_context(self, n_tokens: int) -> None:
        """Refuse a prompt longer than the model's context, at once and with both lengths."""
        if self.context_length and n_tokens > self.context_length:
            raise MlxEdgeError(f"the prompt is {n_tokens} tokens, longer than the model's context of "
                               f"{self.context_length} tokens (nothing is truncated: shorten it)")

    @property
    def backend(self) -> str:
        return self.engine.name

    def encode_prompt(self, prompt: str, system: str | None = None,
                      chat_template: bool | None = None) -> list[int]:
        """Token ids for `prompt`: rendered with the chat template when the model has one (or when
        `chat_template` is True), else the raw text with the tokenizer's BOS."""
        system = self.defaults.get("system") if system is None else system
        use_template = self.tokenizer.chat_template is not None if chat_template is None else chat_template
        if use_template:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
            return self.tokenizer.encode_chat(messages)
        if system:
            raise MlxEdgeError("a system prompt needs the chat template")
        return self.tokenizer.encode(prompt)

    def generation(self, ids: Sequence[int], max_tokens: int | None = None, stop: Sequence[str] = (),
                   **sampling) -> Generation:
        """A `Generation` over token ids: iterate it for text, then read `.text` and `.stats`."""
        unknown = set(sampling) - SAMPLING_KEYS
        if unknown:
            raise TypeError(f"unknown sampling options: {', '.join(sorted(unknown))}")
        options = self.defaults.get("options", {})
        sampling = {**{k: v for k, v in options.items() if k in SAMPLING_KEYS}, **sampling}
        stop, max_tokens = stop or options.get("stop", ()), max_tokens or options.get("max_tokens", 256)
        self.check_context(len(ids))
        if self.context_length:  # generation stops at the end of the context ("length")
            max_tokens = max(1, min(max_tokens, self.context_length - len(ids)))
        return Generation(self.engine, self.tokenizer, list(ids), SamplingParams(**sampling),
                          max_tokens=max_tokens, stop=tuple(stop))

    def stream(self, prompt: str, max_tokens: int | None = None, stop: Sequence[str] = (), system: str | None = None,
               chat_template: bool | None = None, **sampling) -> Iterator[str]:
        """Yield the reply to `prompt` piece by piece (whole characters only).

        Sampling options: temp, top_p, top_k, min_p, repetition_penalty, repetition_context_size, seed.
        """
        ids = self.encode_prompt(prompt, system=system, chat_template=chat_template)
        yield from self.generation(ids, max_tokens=max_tokens, stop=stop, **sampling)

    def generate(self, prompt: str, max_tokens: int | None = None, stop: Sequence[str] = (), system: str | None = None,
                 chat_template: bool | None = None, **sampling) -> str:
        """The whole reply to `prompt` (greedy unless `temp` > 0). Options as in `stream`."""
        return "".join(self.stream(prompt, max_tokens=max_tokens, stop=stop, system=system,
                                   chat_template=chat_template, **sampling))

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Float32 logits (T, vocab) for a token sequence run from an empty cache."""
        ids = list(token_ids)
        if not ids:
            raise MlxEdgeError("logits() needs at least one token")
        return self.engine.forward(ids, self.engine.make_cache())


def load(path: str | Path, backend: str = "auto", quiet: bool = True, matmul: str | None = None) -> Model:
    """Load a store name, a converted bundle directory or a `.gguf` file (converted once into the store).

    `matmul` (NumPy backend): "numpy", "onnxruntime", "onnxruntime-int8" or "auto"
    (backends/numpy/gemm.py); None reads MLXEDGE_MATMUL, default auto."""
    directory = modelcache.resolve(path, quiet=quiet)
    try:
        engine = make_engine(directory, backend, matmul)
        context = read_config(directory).get("max_position_embeddings")
        return Model(directory, engine, Tokenizer(directory), context_length=context)
    except OutOfMemory:
        raise  # the entry is good; this machine is short of memory
    except MlxEdgeError as e:
        if not modelcache.discard(path, directory):  # never keep an entry that does not load as a good one
            raise
        raise MlxEdgeError(f"{path}: its converted copy in the cache failed to load and was removed "
                           f"(the next run converts it again): {e}") from None
