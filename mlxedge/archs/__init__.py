"""What mlxedge knows about each architecture, one module per mlx-lm `model_type`.

`get("qwen2")` imports `mlxedge.archs.qwen2`, as mlx-lm finds `mlx_lm.models.qwen2`: no registry.
Each module holds the facts every reader and backend needs about that architecture:

    MODEL_TYPE, HF_CLASS      config.json's model_type and architectures
    GGUF_ARCH                 llama.cpp's general.architecture (None: no GGUF reader)
    NUMPY                     the NumPy backend's family module (backends/numpy/<NUMPY>.py)
    FLOAT_DTYPE               16-bit float the model needs (bfloat16: activations need its range)
    GGUF_BLOCK                llama.cpp per-block tensor names -> mlx-lm module paths
    PERMUTED_QK, NORM_PLUS_ONE  llama.cpp conventions the GGUF reader undoes
    FUSED                     qkv_proj / gate_up_proj are single modules in mlx-lm
    ONNX                      the ONNX reader was checked on real exports of it
    DROP_TIED_HEAD            mlx-lm's sanitize drops lm_head whenever the config says tied
    TIE_DEFAULT               tie_word_embeddings when config.json does not say (mlx-lm's default)
    gguf_config(config, get, tensor_names)  architecture-specific config.json fields from GGUF
    parameters(config)        every parameter mlx-lm's model asks for -> shape (out, in)

`check_config(config, where)` checks config.json's fields and types (every reader and the bundle
loader use it); `check(config, shapes, where)` is the completeness check every reader ends with.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
from types import ModuleType

from ..errors import MlxEdgeError

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.*)")


def get(model_type: str) -> ModuleType:
    """The architecture module for an mlx-lm model_type."""
    if not isinstance(model_type, str) or not re.fullmatch(r"[a-z0-9_]+", model_type or ""):
        raise MlxEdgeError(f"unsupported model_type {model_type!r} (supported: {', '.join(supported())})")
    try:
        return importlib.import_module(f"{__name__}.{model_type}")
    except ModuleNotFoundError:
        raise MlxEdgeError(f"unsupported model_type {model_type!r} (supported: {', '.join(supported())})") from None


def supported() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def from_gguf(gguf_arch: str) -> ModuleType:
    """The architecture module whose GGUF_ARCH is llama.cpp's `general.architecture`."""
    for name in supported():
        mod = get(name)
        if mod.GGUF_ARCH == gguf_arch:
            return mod
    names = [get(n).GGUF_ARCH for n in supported() if get(n).GGUF_ARCH]
    raise MlxEdgeError(f"unsupported architecture {gguf_arch!r} (supported: {', '.join(names)})")


def sort_key(name: str) -> tuple:
    """Parameter order in a bundle: embedding, then block by block, then norm and head."""
    m = _LAYER.match(name)
    return (1, int(m.group(1)), m.group(2)) if m else (0 if "embed" in name else 2, 0, name)


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def llama_parameters(config: dict, norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm"),
                     qk_norm: bool = False) -> dict[str, tuple]:
    """Parameters of a llama-shaped decoder (separate q/k/v, gated MLP) -> shape."""
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    hd = head_dim(config)
    nq = config["num_attention_heads"] * hd
    nkv = (config.get("num_key_value_heads") or config["num_attention_heads"]) * hd
    block = {"self_attn.q_proj": (nq, hidden), "self_attn.k_proj": (nkv, hidden),
             "self_attn.v_proj": (nkv, hidden), "self_attn.o_proj": (hidden, nq),
             "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn),
             **{n: (hidden,) for n in norms}}
    if qk_norm:
        block |= {"self_attn.q_norm": (hd,), "self_attn.k_norm": (hd,)}
    return decoder(config, block)


def decoder(config: dict, block: dict[str, tuple]) -> dict[str, tuple]:
    """The block's modules for every layer, plus embedding, final norm and (untied) head."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    out = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        out |= {f"model.layers.{i}.{m}.weight": shape for m, shape in block.items()}
    out["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", get(config["model_type"]).TIE_DEFAULT):
        out["lm_head.weight"] = (vocab, hidden)
    return out


# config.json fields every architecture reads: (required, low, high). Bounds are generous; they keep
# a corrupt count from sizing anything (the layer count is also bounded by the tensors present).
INT_FIELDS = {"hidden_size": (True, 1, 1 << 20), "intermediate_size": (True, 1, 1 << 22),
              "num_hidden_layers": (True, 1, 1 << 16), "num_attention_heads": (True, 1, 1 << 14),
              "vocab_size": (True, 1, 1 << 24), "num_key_value_heads": (False, 1, 1 << 14),
              "head_dim": (False, 1, 1 << 16), "max_position_embeddings": (False, 1, 1 << 32),
              "sliding_window": (False, 0, 1 << 32)}
FLOAT_FIELDS = {"rms_norm_eps": (0.0, 1.0), "rope_theta": (1e-6, 1e15), "partial_rotary_factor": (1e-6, 1.0)}
TOKEN_FIELDS = ("bos_token_id", "eos_token_id")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_config(config, where: str) -> None:
    """config.json is an object with a supported model_type and well-typed, consistent sizes."""
    if not isinstance(config, dict):
        raise MlxEdgeError(f"{where}: config.json is a JSON {type(config).__name__}, expected an object")
    if "model_type" not in config:
        raise MlxEdgeError(f"{where}: config.json has no model_type")
    get(config["model_type"])
    for key, (required, low, high) in INT_FIELDS.items():
        value = config.get(key)
        if value is None:
            if required:
                raise MlxEdgeError(f"{where}: config.json lacks {key}")
            continue
        if not _is_int(value) or not low <= value <= high:
            raise MlxEdgeError(f"{where}: config.json {key} is {value!r}, expected an integer in [{low}, {high}]")
    for key, (low, high) in FLOAT_FIELDS.items():
        if key in config and not _is_number(config[key], low, high):
            raise MlxEdgeError(f"{where}: config.json {key} is {config[key]!r}, expected a number in [{low}, {high}]")
    _check_rope_scaling(config, where)
    if "tie_word_embeddings" in config and not isinstance(config["tie_word_embeddings"], bool):
        raise MlxEdgeError(f"{where}: config.json tie_word_embeddings is {config['tie_word_embeddings']!r}, "
                           f"expected true or false")
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads % kv:
        raise MlxEdgeError(f"{where}: config.json num_attention_heads {heads} is not a multiple of "
                           f"num_key_value_heads {kv}")
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise MlxEdgeError(f"{where}: config.json hidden_size {config['hidden_size']} is not a multiple of "
                           f"num_attention_heads {heads} (and no head_dim is given)")
    check_token_ids(config, config["vocab_size"], f"{where}: config.json")


def _is_number(x, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and low <= x <= high


def _check_rope_scaling(config: dict, where: str) -> None:
    """null, or an object whose kind is a string, whose factors are positive numbers and whose
    per-frequency factors (longrope) are lists of them, one per rotated pair of dimensions."""
    scaling = config.get("rope_scaling")
    if scaling is None:
        return
    rotary = config.get("partial_rotary_factor", 1.0)
    half = int(head_dim(config) * rotary) // 2 if _is_number(rotary, 1e-12, 1.0) else -1
    if not isinstance(scaling, dict):
        raise MlxEdgeError(f"{where}: config.json rope_scaling is {scaling!r}, expected an object or null")
    for key, value in scaling.items():
        if key in ("type", "rope_type"):
            ok = isinstance(value, str)
        elif key in ("long_factor", "short_factor"):
            ok = isinstance(value, list) and all(_is_number(x, 1e-12) for x in value) and len(value) == half
        elif key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                     "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
            ok = value is None and key != "factor" or _is_number(value, 1e-12)
        else:
            continue
        if not ok:
            expected = ("a string" if key.endswith("type") else f"{half} positive numbers" if key.endswith("_factor")
                        and key.startswith(("long", "short")) else "a positive number")
            raise MlxEdgeError(f"{where}: config.json rope_scaling.{key} is {str(value)[:60]!r}, expected {expected}")


def check_token_ids(obj: dict, vocab: int, where: str) -> None:
    """bos/eos ids (an id or a list of ids) name tokens of the vocabulary."""
    for key in TOKEN_FIELDS:
        value = obj.get(key)
        for i in value if isinstance(value, list) else [] if value is None else [value]:
            if not _is_int(i) or not 0 <= i < vocab:
                raise MlxEdgeError(f"{where} {key} is {value!r}, expected token ids in [0, {vocab})")


def check(config: dict, shapes: dict[str, tuple], where: str) -> None:
    """config.json is well-formed, every parameter mlx-lm will ask for is there with its shape, and
    nothing else is left.

    Biases (qwen2's q/k/v, llama's attention_bias) are checked against their weight's rows; a
    tied model may carry an lm_head that duplicates nothing (mlx-lm then uses it)."""
    check_config(config, where)
    arch = get(config["model_type"])
    if config["num_hidden_layers"] > len(shapes):
        raise MlxEdgeError(f"{where}: the config says {config['num_hidden_layers']} layers, but there are only "
                           f"{len(shapes)} tensors")
    try:
        want = arch.parameters(config)
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise MlxEdgeError(f"{where}: config.json cannot describe a {config['model_type']} model ({e!r})") from None
    missing = sorted(set(want) - set(shapes), key=sort_key)
    if missing:
        raise MlxEdgeError(f"{where} is missing {len(missing)} tensors for {config['model_type']}, "
                           f"e.g. {missing[0]}")
    for name, shape in shapes.items():
        base = name[: -len(".bias")] + ".weight" if name.endswith(".bias") else None
        if base in want:
            expected = want[base][:1]
        elif name in want:
            expected = want[name]
        elif name == "lm_head.weight":  # a tied model's own head (kept when it differs)
            expected = want["model.embed_tokens.weight"]
        else:
            raise MlxEdgeError(f"{where}: unexpected tensor {name} for {config['model_type']}")
        if tuple(shape) != tuple(expected):
            raise MlxEdgeError(f"{where}: {name} has shape {list(shape)}, the config says {list(expected)}")
