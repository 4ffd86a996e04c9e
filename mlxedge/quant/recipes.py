"""A recipe says what to store for each tensor: a rule (tensor name, shape, source type) -> Target.

`keep` carries the source's own quantization over exactly where MLX can express it; the float
recipes dequantize everything; `q4`/`q8` quantize every matrix uniformly (MLX's default grid).
Recipes built from calibration (`bpwX`, mlxedge/planner.py) also bring their own quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import MlxEdgeError
from .affine import Affine


@dataclass(frozen=True)
class Target:
    """kind: "keep" (source form if exact), "float" (dtype) or "affine" (bits, group_size, scale dtype)."""

    kind: str
    dtype: str = "float16"
    bits: int = 0
    group_size: int = 0


Rule = Callable[[str, tuple, str], Target]


@dataclass(frozen=True)
class Recipe:
    """A finished recipe, as `convert` takes it.

    quantize(name, w (out, in) float32, target) -> Affine replaces MLX's round-to-nearest when
    given; info is recorded in mlxedge.json as `recipe_info`."""

    name: str
    rule: Rule
    quantize: Callable[[str, np.ndarray, Target], Affine] | None = None
    info: dict = field(default_factory=dict)

    def __call__(self, name: str, shape: tuple, src_type: str) -> Target:
        return self.rule(name, shape, src_type)

KEEP = Target("keep")
# Fallback for source types MLX cannot express exactly (Q2_K, Q3_K, Q6_K, IQ*) under `--exact`, and
# for the IQ types quant/lowbit.py has no grid for: 8-bit group 32, the finest MLX form (error
# recorded per tensor in mlxedge.json). By default `keep` takes lowbit's smallest form instead.
FALLBACK = Target("affine", "float16", 8, 32)


def is_matrix(name: str, shape: tuple) -> bool:
    """Quantizable: the 2-D weight of a Linear or Embedding (every 2-D weight in our architectures)."""
    return name.endswith(".weight") and len(shape) == 2


def keep(name: str, shape: tuple, src_type: str) -> Target:
    return KEEP


def floating(dtype: str) -> Rule:
    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        return Target("float", dtype)

    return recipe


def uniform(bits: int, group_size: int = 64) -> Rule:
    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        if is_matrix(name, shape):
            return Target("affine", "float16", bits, group_size)
        return Target("float", "float16")

    return recipe


RECIPES: dict[str, Rule] = {
    "keep": keep,
    "f16": floating("float16"),
    "bf16": floating("bfloat16"),
    "f32": floating("float32"),
    "q4": uniform(4),
    "q8": uniform(8),
    "q2": uniform(2),
    "q3": uniform(3),
    "q5": uniform(5),
    "q6": uniform(6),
}


# -- recipes that need the model: built by a factory from the Source --------------------------
#
# The mixed_* recipes are mlx-lm's `mixed_quant_predicate` rule (mlx_lm/convert.py); q4_k_m is
# llama.cpp's Q4_K_M choice (llama-quant.cpp) in MLX groups; `bpwX` allocates bits per tensor from
# calibration statistics (mlxedge/planner.py). Factories take the Source and keyword options.


def _layer_index(name: str) -> int:
    """The block index in "model.layers.N....", 0 elsewhere (mlx-lm's predicate does the same)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return 0


def use_more_bits(index: int, n_layers: int) -> bool:
    """The layers llama.cpp (and mlx-lm after it) favour: first and last eighth, every third between."""
    return index < n_layers // 8 or index >= 7 * n_layers // 8 or (index - n_layers // 8) % 3 == 2


def _n_layers(source) -> int:
    n = source.config.get("num_hidden_layers") or (source.config.get("text_config") or {}).get("num_hidden_layers")
    if not n:
        raise MlxEdgeError("config.json has no num_hidden_layers; mixed recipes need the layer count")
    return int(n)


def mixed(low: int, high: int, n_layers: int, group_size: int = 64, dtype: str = "float16") -> Rule:
    """mlx-lm's mixed_{low}_{high}: v_proj and down_proj of the favoured layers and lm_head get
    `high` bits, every other matrix (the embedding included) `low` bits, all in one group size."""
    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        if not is_matrix(name, shape):
            return Target("float", dtype)
        path = name[: -len(".weight")]
        more = use_more_bits(_layer_index(path), n_layers)
        if ("v_proj" in path or "v_a_proj" in path or "v_b_proj" in path or "down_proj" in path) and more:
            return Target("affine", dtype, high, group_size)
        if "lm_head" in path:
            return Target("affine", dtype, high, group_size)
        return Target("affine", dtype, low, group_size)

    recipe.__name__ = f"mixed_{low}_{high}"
    return recipe


def q4_k_m(n_layers: int, tied: bool, dtype: str = "float16") -> Rule:
    """llama.cpp's Q4_K_M in MLX terms (group 32 everywhere, as K-quants' 32-weight sub-blocks):
    Q4_K -> 4 bits; Q6_K for the output head (and the embedding when tied to it), for attn_v and
    ffn_down of the favoured layers -> 6 bits; Q5_K for fused qkv -> 5 bits. (llama.cpp's Q8_0
    fallback for heads whose rows are not a multiple of 256 has no MLX counterpart: MLX groups
    are 32.)"""
    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        if not is_matrix(name, shape):
            return Target("float", dtype)
        path = name[: -len(".weight")]
        more = use_more_bits(_layer_index(path), n_layers)
        if path == "lm_head" or (tied and path.endswith("embed_tokens")):
            return Target("affine", dtype, 6, 32)
        if path.endswith("qkv_proj"):
            return Target("affine", dtype, 5, 32)
        if (path.endswith("v_proj") or path.endswith("down_proj")) and more:
            return Target("affine", dtype, 6, 32)
        return Target("affine", dtype, 4, 32)

    return recipe


def _mixed_factory(low: int, high: int):
    def factory(source, group_size: int = 64, **_) -> Rule:
        return mixed(low, high, _n_layers(source), group_size, source.float_dtype)
    return factory


def _q4_k_m_factory(source, **_) -> Rule:
    return q4_k_m(_n_layers(source), bool(source.config.get("tie_word_embeddings", False)), source.float_dtype)


FACTORIES: dict[str, Callable[..., Rule]] = {
    "mixed_2_6": _mixed_factory(2, 6),
    "mixed_3_4": _mixed_factory(3, 4),
    "mixed_3_6": _mixed_factory(3, 6),
    "mixed_4_6": _mixed_factory(4, 6),
    "q4_k_m": _q4_k_m_factory,
}
BPW_PREFIX = "bpw"  # "bpw3.5": the measured allocation under a 3.5 bits-per-weight budget


def names() -> list[str]:
    """Every recipe name the CLI accepts (bpwX stands for any budget)."""
    return [*RECIPES, *FACTORIES, f"{BPW_PREFIX}X"]


def bpw_target(name: str) -> float | None:
    """The budget of a `bpwX` recipe name ("bpw3.5" -> 3.5), None for any other name."""
    if not name.startswith(BPW_PREFIX):
        return None
    try:
        return float(name[len(BPW_PREFIX):])
    except ValueError:
        return None


def get(name: str, source=None, **options) -> Recipe:
    """The recipe called `name` (not bpwX: that one is calibrated, see mlxedge/planner.py).
    Recipes in FACTORIES need `source`; `options` go to their factory."""
    factory = FACTORIES.get(name)
    if factory is not None:
        if source is None:
            raise MlxEdgeError(f"recipe {name!r} needs the source model")
        return Recipe(name, factory(source, **options))
    if name not in RECIPES:
        raise MlxEdgeError(f"unknown recipe {name!r}; choose from {', '.join(names())}")
    return Recipe(name, RECIPES[name])
