"""The portable backend: runs an mlx-lm bundle with NumPy only (no mlx import anywhere here).

    from mlxedge.backends.numpy import load
    m = load("bundle/")
    cache = m.make_cache()
    logits = m.forward(np.array(prompt_ids), cache)    # (T, vocab) float32, prefill
    logits = m.forward(np.array([next_id]), cache)     # (1, vocab), one decode step
    cache.trim(n) / cache.reset()                       # rewind for the next chat turn

One module per architecture family, named by the architecture's `NUMPY` (mlxedge/archs/).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ... import archs
from ...errors import MlxEdgeError, OutOfMemory
from ...formats.bundle import read_config
from . import gemm, memory
from .cache import KVCache
from .decoder import NumpyModel
from .weights import MODES, Weights

__all__ = ["load", "NumpyModel", "KVCache", "family"]


def family(model_type: str):
    """The NumPy module that builds `model_type` (llama.py serves llama, mistral, qwen2, qwen3)."""
    try:
        arch = archs.get(model_type)
    except MlxEdgeError:
        raise MlxEdgeError(f"the NumPy backend does not run model_type {model_type!r} "
                           f"(supported: {', '.join(archs.supported())})") from None
    return importlib.import_module(f"{__name__}.{arch.NUMPY}")


def load(directory: str | Path, *, mode: str = "auto", lean: bool = False, matmul: str = "numpy",
         threads: int = 1) -> NumpyModel:
    """Load a bundle for the NumPy backend, its weights held in `mode`:

    "float32" (dequantized once: 4 bytes per parameter, fastest), "float16" (2 bytes, widened per
    layer per call), "lean" (kept packed as stored, unpacked per call: memory near the bundle's
    size), or "auto": the first of these that fits in the memory available (memory.py), with an
    MlxEdgeError naming the numbers when none does. `lean=True` means mode="lean".
    The chosen mode is `model.weight_mode`.

    `matmul`: "numpy" (NumPy's BLAS for every product), "onnxruntime" (MLAS kernels on `threads`
    threads for 4-bit weights as stored and for float32 products of 2+ rows: gemm.py),
    "onnxruntime-int8" (the same with activations quantized to int8: faster, not mlx-lm's float32
    arithmetic), or "auto" (onnxruntime where it is installed, unless the weights are held lean:
    MLAS keeps its own copy of them). The choice is `model.matmul`.
    """
    if lean:
        mode = "lean"
    if mode not in ("auto",) + MODES:
        raise MlxEdgeError(f"unknown weight mode {mode!r}; choose from auto, {', '.join(MODES)}")
    config = read_config(directory)
    arch = family(config.get("model_type"))
    fit = memory.estimate(directory, config)
    chosen = fit.pick(mode, str(directory))
    # lean is what fits when little does: "auto" then adds no onnxruntime copies of the weights
    kernels = gemm.resolve("numpy" if matmul == "auto" and chosen == "lean" else matmul, threads)
    try:
        weights = Weights(directory, config, mode=chosen, kernels=kernels)
        model = arch.build(weights, config)
        if kernels is not None:
            kernels.build()
    except KeyError as e:
        raise MlxEdgeError(f"{Path(directory) / 'config.json'} lacks {e.args[0]!r}") from None
    except MemoryError:
        raise OutOfMemory(f"{directory}: out of memory loading in weight mode {chosen} (estimated "
                           f"{fit.needs[chosen] / 1e9:.2f} GB, {fit.available / 1e9:.2f} GB available: "
                           f"{fit.source})") from None
    weights.check_all_used()
    model.weight_mode = chosen
    model.matmul = "numpy" if kernels is None else kernels.name
    model.kernels = kernels
    return model
