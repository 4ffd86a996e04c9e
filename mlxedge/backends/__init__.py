"""Backends: `mlx` (mlx-lm's models on Metal, or MLX's CPU build) and `numpy` (portable).

Each provides an `Engine` (mlxedge/engine.py) over a bundle directory; `make_engine` picks one.
"""

from __future__ import annotations

import platform
from pathlib import Path

from ..engine import Engine
from ..errors import MlxEdgeError
from ..formats.hf import read_hf
from .mlx import MlxEngine, metal_available
from .numpy.engine import NumpyEngine

BACKENDS = ("auto", "mlx", "numpy")


def default_backend() -> str:
    """MLX where Metal is there; elsewhere NumPy.

    Measured on a shared 2-core Linux box (AMD EPYC) with SmolLM2-135M Q4_1 through the CLI: NumPy
    (single-threaded BLAS) ~80 tokens/s prefill and ~9 decode; MLX's CPU build ~3 and ~2-6 (its
    quantized matmul on CPU is the bottleneck, and ~40x slower again in float16).
    """
    if platform.system() == "Darwin" and metal_available():
        return "mlx"
    return "numpy"


def make_engine(directory: Path, backend: str = "auto", matmul: str | None = None) -> Engine:
    """Load the bundle at `directory` with the chosen backend, after checking everything either
    backend will read from it (config, safetensors headers against the files, shapes, tokenizer).
    `matmul` picks the NumPy backend's kernels (numpy/engine.py; None: MLXEDGE_MATMUL or auto)."""
    if backend not in BACKENDS:
        raise MlxEdgeError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    read_hf(directory, check_only=True)
    return _make_engine(directory, backend, matmul)


def _make_engine(directory: Path, backend: str, matmul: str | None) -> Engine:
    if backend == "mlx":
        return MlxEngine(directory)
    if backend == "numpy":
        return NumpyEngine(directory, matmul)
    choice = default_backend()
    try:
        return _make_engine(directory, choice, matmul)
    except MlxEdgeError as first:
        # e.g. an architecture the NumPy backend does not have: the other backend may run it
        try:
            return _make_engine(directory, "numpy" if choice == "mlx" else "mlx", matmul)
        except MlxEdgeError:
            raise first from None
