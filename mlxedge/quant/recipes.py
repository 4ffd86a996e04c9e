"""A recipe is a function (tensor name, shape, source type) -> Target: what to store for it.

`keep` carries the source's own quantization over exactly where MLX can express it; the float
recipes dequantize everything; `q4`/`q8` quantize every matrix uniformly (MLX's default grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Target:
    """kind: "keep" (source form if exact), "float" (dtype) or "affine" (bits, group_size, scale dtype)."""

    kind: str
    dtype: str = "float16"
    bits: int = 0
    group_size: int = 0


Recipe = Callable[[str, tuple, str], Target]

KEEP = Target("keep")
# Fallback for source types MLX cannot express exactly (Q2_K, Q3_K, Q6_K, IQ*): 8-bit group 32 is
# the cheapest MLX form whose error is far below the source's own quantization step (measured per
# tensor and recorded in mlxedge.json).
FALLBACK = Target("affine", "float16", 8, 32)


def is_matrix(name: str, shape: tuple) -> bool:
    """Quantizable: the 2-D weight of a Linear or Embedding (every 2-D weight in our architectures)."""
    return name.endswith(".weight") and len(shape) == 2


def keep(name: str, shape: tuple, src_type: str) -> Target:
    return KEEP


def floating(dtype: str) -> Recipe:
    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        return Target("float", dtype)

    return recipe


def uniform(bits: int, group_size: int = 64) -> Recipe:
    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        if is_matrix(name, shape):
            return Target("affine", "float16", bits, group_size)
        return Target("float", "float16")

    return recipe


RECIPES: dict[str, Recipe] = {
    "keep": keep,
    "f16": floating("float16"),
    "bf16": floating("bfloat16"),
    "f32": floating("float32"),
    "q4": uniform(4),
    "q8": uniform(8),
}


def get(name: str) -> Recipe:
    from ..errors import MlxEdgeError

    if name not in RECIPES:
        raise MlxEdgeError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]
