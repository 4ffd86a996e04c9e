"""mlxedge: faithful GGUF / ONNX / Hugging Face -> MLX conversion, and a runtime for the result."""

from __future__ import annotations

__version__ = "0.2.0"

from .errors import MlxEdgeError


def load(path: str, backend: str = "auto", matmul: str | None = None):
    """Load a converted bundle directory or a ``.gguf`` file (converted once into the cache).

    ``backend`` is ``"auto"`` (MLX on Apple Silicon, else the fastest correct backend here),
    ``"mlx"`` or ``"numpy"``. ``matmul``, for the NumPy backend: ``"auto"`` (onnxruntime's kernels
    where installed), ``"onnxruntime"``, ``"onnxruntime-int8"`` or ``"numpy"``; None reads
    MLXEDGE_MATMUL. Returns a :class:`mlxedge.api.Model`.
    """
    from .api import load as _load

    return _load(path, backend=backend, matmul=matmul)


__all__ = ["MlxEdgeError", "__version__", "load"]
