"""The NumPy backend as an `mlxedge.engine.Engine`: our sampling loop over `forward`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ...engine import process_peak_rss, sample_tokens
from ...errors import MlxEdgeError
from ...sampling import SamplingParams
from . import load
from .gemm import CHOICES, shared_threads


def default_matmul() -> str:
    """MLXEDGE_MATMUL (numpy, onnxruntime, onnxruntime-int8 or auto), else auto: onnxruntime's
    kernels where installed."""
    choice = os.environ.get("MLXEDGE_MATMUL", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise MlxEdgeError(f"MLXEDGE_MATMUL={choice!r}: choose from {', '.join(CHOICES)}")
    return choice


class NumpyEngine:
    """Adapts `mlxedge.backends.numpy` (`load(dir)`, `make_cache()`, `forward(ids, cache)`) to `Engine`."""

    name = "numpy"

    def __init__(self, directory: str | Path, matmul: str | None = None):
        # weight mode "auto": what fits in memory; MLAS: the serve process's shared pool, else the
        # caller's thread (one decoding sequence is memory-bound: more threads barely help it)
        self.model = load(directory, matmul=matmul or default_matmul(), threads=shared_threads())
        self.config = self.model.config
        self.weight_mode = self.model.weight_mode
        self.matmul = self.model.matmul

    def make_cache(self) -> Any:
        return self.model.make_cache()

    def cache_length(self, cache: Any) -> int:
        return int(cache.offset)

    def trim_cache(self, cache: Any, n: int) -> bool:
        cache.trim(n)
        return True

    def forward(self, ids: Sequence[int], cache: Any = None, last_only: bool = False) -> np.ndarray:
        try:
            return self.model.forward(np.asarray(ids, dtype=np.int64), cache, last_only=last_only)
        except MemoryError:
            held = 0 if cache is None else cache.offset
            raise MlxEdgeError(f"out of memory running {len(ids)} tokens after {held} in the cache "
                               f"(weights in {self.weight_mode})") from None

    def token_stream(self, ids: Sequence[int], cache: Any, params: SamplingParams,
                     history: Sequence[int] = ()) -> Iterator[int]:
        return sample_tokens(lambda t, c: self.forward(t, c, last_only=True), ids, cache, params, history)

    def peak_memory(self) -> int:
        return process_peak_rss()
