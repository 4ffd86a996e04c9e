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
from ...errors import MlxEdgeError
from ...formats.bundle import read_config
from .cache import KVCache
from .decoder import NumpyModel
from .weights import Weights

__all__ = ["load", "NumpyModel", "KVCache", "family"]


def family(model_type: str):
    """The NumPy module that builds `model_type` (llama.py serves llama, mistral, qwen2, qwen3)."""
    try:
        arch = archs.get(model_type)
    except MlxEdgeError:
        raise MlxEdgeError(f"the NumPy backend does not run model_type {model_type!r} "
                           f"(supported: {', '.join(archs.supported())})") from None
    return importlib.import_module(f"{__name__}.{arch.NUMPY}")


def load(directory: str | Path, *, lean: bool = False) -> NumpyModel:
    """Load a bundle for the NumPy backend.

    Weights are dequantized once into float32 (4 bytes per parameter) for speed. `lean=True`
    keeps them memory-mapped as stored and dequantizes on every use instead: memory near the
    bundle size, but each token costs a full dequantization (many times slower).
    """
    config = read_config(directory)
    arch = family(config.get("model_type"))
    weights = Weights(directory, config, lean=lean)
    try:
        model = arch.build(weights, config)
    except KeyError as e:
        raise MlxEdgeError(f"{Path(directory) / 'config.json'} lacks {e.args[0]!r}") from None
    weights.check_all_used()
    return model
