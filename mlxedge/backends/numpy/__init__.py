"""The portable backend: runs an mlx-lm bundle with NumPy only (no mlx import anywhere here).

    from mlxedge.backends.numpy import load
    m = load("bundle/")
    cache = m.make_cache()
    logits = m.forward(np.array(prompt_ids), cache)    # (T, vocab) float32, prefill
    logits = m.forward(np.array([next_id]), cache)     # (1, vocab), one decode step
    cache.trim(n) / cache.reset()                       # rewind for the next chat turn

One module per architecture family, found by config.json's `model_type`.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import MlxEdgeError
from ...formats.bundle import read_config
from . import gemma3, llama, phi3
from .cache import KVCache
from .model import NumpyModel
from .weights import Weights

__all__ = ["load", "NumpyModel", "KVCache", "SUPPORTED"]

ARCHITECTURES = {t: mod for mod in (llama, gemma3, phi3) for t in mod.MODEL_TYPES}
SUPPORTED = tuple(ARCHITECTURES)


def load(directory: str | Path, *, lean: bool = False) -> NumpyModel:
    """Load a bundle for the NumPy backend.

    Weights are dequantized once into float32 (4 bytes per parameter) for speed. `lean=True`
    keeps them memory-mapped as stored and dequantizes on every use instead: memory near the
    bundle size, but each token costs a full dequantization (many times slower).
    """
    config = read_config(directory)
    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise MlxEdgeError(f"the NumPy backend does not run model_type {model_type!r} "
                           f"(supported: {', '.join(SUPPORTED)})")
    weights = Weights(directory, config, lean=lean)
    try:
        model = arch.build(weights, config)
    except KeyError as e:
        raise MlxEdgeError(f"{Path(directory) / 'config.json'} lacks {e.args[0]!r}") from None
    weights.check_all_used()
    return model
