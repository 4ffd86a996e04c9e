"""The Python API: `m = mlxedge.load(path)`, then `m.generate`, `m.stream`, `m.logits`, `m.tokenizer`."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import modelcache
from .errors import MlxEdgeError
from .generation import Engine, Generation, process_peak_rss, sample_tokens
from .sampling import SamplingParams
from .tokenizer import Tokenizer

BACKENDS = ("auto", "mlx", "numpy")
SAMPLING_KEYS = {"temp", "top_p", "top_k", "min_p", "min_tokens_to_keep", "repetition_penalty",
                 "repetition_context_size", "seed"}


class NumpyEngine:
    """Adapts `mlxedge.backends.numpy` (`load(dir)`, `make_cache()`, `forward(ids, cache)`) to `Engine`."""

    name = "numpy"

    def __init__(self, directory: str | Path):
        from .backends import numpy as np_backend

        self.model = np_backend.load(directory)
        self.config = self.model.config

    def make_cache(self) -> Any:
        return self.model.make_cache()

    def cache_length(self, cache: Any) -> int:
        return int(cache.offset)

    def trim_cache(self, cache: Any, n: int) -> bool:
        cache.trim(n)
        return True

    def forward(self, ids: Sequence[int], cache: Any = None, last_only: bool = False) -> np.ndarray:
        return self.model.forward(np.asarray(ids, dtype=np.int64), cache, last_only=last_only)

    def token_stream(self, ids: Sequence[int], cache: Any, params: SamplingParams,
                     history: Sequence[int] = ()) -> Iterator[int]:
        return sample_tokens(lambda t, c: self.forward(t, c, last_only=True), ids, cache, params, history)

    def peak_memory(self) -> int:
        return process_peak_rss()


def default_backend() -> str:
    """MLX where Metal is there; elsewhere NumPy.

    Measured on a shared 2-core Linux box (AMD EPYC) with SmolLM2-135M Q4_1 through the CLI: NumPy
    (single-threaded BLAS) ~80 tokens/s prefill and ~9 decode; MLX's CPU build ~3 and ~2-6 (its
    quantized matmul on CPU is the bottleneck, and ~40x slower again in float16).
    """
    from .backends.mlx import metal_available

    if platform.system() == "Darwin" and metal_available():
        return "mlx"
    return "numpy"


def make_engine(directory: Path, backend: str = "auto") -> Engine:
    """Load the bundle at `directory` with the chosen backend."""
    if backend not in BACKENDS:
        raise MlxEdgeError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "mlx":
        from .backends.mlx import MlxEngine

        return MlxEngine(directory)
    if backend == "numpy":
        return NumpyEngine(directory)
    choice = default_backend()
    try:
        return make_engine(directory, choice)
    except MlxEdgeError as first:
        # e.g. an architecture the NumPy backend does not have: the other backend may run it
        try:
            return make_engine(directory, "numpy" if choice == "mlx" else "mlx")
        except MlxEdgeError:
            raise first from None


class Model:
    """A loaded model: a tokenizer and an engine (backend) over one bundle directory."""

    def __init__(self, directory: Path, engine: Engine, tokenizer: Tokenizer):
        self.path = directory
        self.engine = engine
        self.tokenizer = tokenizer

    @property
    def backend(self) -> str:
        return self.engine.name

    def encode_prompt(self, prompt: str, system: str | None = None,
                      chat_template: bool | None = None) -> list[int]:
        """Token ids for `prompt`: rendered with the chat template when the model has one (or when
        `chat_template` is True), else the raw text with the tokenizer's BOS."""
        use_template = self.tokenizer.chat_template is not None if chat_template is None else chat_template
        if use_template:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
            return self.tokenizer.encode_chat(messages)
        if system:
            raise MlxEdgeError("a system prompt needs the chat template")
        return self.tokenizer.encode(prompt)

    def generation(self, ids: Sequence[int], max_tokens: int = 256, stop: Sequence[str] = (),
                   **sampling) -> Generation:
        """A `Generation` over token ids: iterate it for text, then read `.text` and `.stats`."""
        unknown = set(sampling) - SAMPLING_KEYS
        if unknown:
            raise TypeError(f"unknown sampling options: {', '.join(sorted(unknown))}")
        return Generation(self.engine, self.tokenizer, list(ids), SamplingParams(**sampling),
                          max_tokens=max_tokens, stop=tuple(stop))

    def stream(self, prompt: str, max_tokens: int = 256, stop: Sequence[str] = (), system: str | None = None,
               chat_template: bool | None = None, **sampling) -> Iterator[str]:
        """Yield the reply to `prompt` piece by piece (whole characters only).

        Sampling options: temp, top_p, top_k, min_p, repetition_penalty, repetition_context_size, seed.
        """
        ids = self.encode_prompt(prompt, system=system, chat_template=chat_template)
        yield from self.generation(ids, max_tokens=max_tokens, stop=stop, **sampling)

    def generate(self, prompt: str, max_tokens: int = 256, stop: Sequence[str] = (), system: str | None = None,
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


def load(path: str | Path, backend: str = "auto", quiet: bool = True) -> Model:
    """Load a converted bundle directory or a `.gguf` file (converted once into the cache)."""
    directory = modelcache.resolve(path, quiet=quiet)
    engine = make_engine(directory, backend)
    return Model(directory, engine, Tokenizer(directory))
