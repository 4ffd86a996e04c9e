"""Phi-3 in NumPy. Port of mlx_lm/models/phi3.py.

Llama-like, but with fused projections stored in the checkpoint: `qkv_proj` (q, then k, then v
along the output axis) and `gate_up_proj` (gate first, then up). RoPE may cover only the first
`partial_rotary_factor` of each head, and may be "longrope"/"su" scaled (always with the long
factors, as mlx-lm does) or "linear".
"""

from __future__ import annotations

import numpy as np

from ...errors import MlxEdgeError
from .cache import KVCache
from .layers import Rope, attention, longrope, rms_norm, silu
from .decoder import NumpyModel
from .weights import Weights



def _rope(cfg: dict, head_dim: int) -> Rope:
    dims = int(head_dim * cfg.get("partial_rotary_factor", 1.0))
    base = cfg.get("rope_theta", 10000)
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("type")
    exponents = np.arange(0, dims, 2, dtype=np.float64) / dims
    if kind in ("longrope", "su"):
        return longrope(dims, base, scaling, cfg.get("max_position_embeddings", 131072),
                        cfg.get("original_max_position_embeddings", 4096))
    if kind == "linear":
        return Rope(dims, base ** -exponents / scaling["factor"], cfg.get("rope_traditional", False))
    if kind not in (None, "default"):
        raise MlxEdgeError(f"phi3 rope scaling type {kind!r} is not supported")
    return Rope(dims, base ** -exponents, cfg.get("rope_traditional", False))


class Attention:
    def __init__(self, w: Weights, p: str, cfg: dict, rope: Rope):
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg["hidden_size"] // self.n_heads
        self.scale = self.head_dim ** -0.5
        self.qkv_proj = w.linear(f"{p}.qkv_proj")
        self.o_proj = w.linear(f"{p}.o_proj")
        self.rope = rope

    def __call__(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        T, D = x.shape[0], self.head_dim
        start = cache.offset
        qkv = self.qkv_proj(x)  # (T, (n_heads + 2 n_kv) * D)
        q_end, k_end = self.n_heads * D, (self.n_heads + self.n_kv) * D
        q = qkv[:, :q_end].reshape(T, self.n_heads, D)
        k = qkv[:, q_end:k_end].reshape(T, self.n_kv, D)
        v = qkv[:, k_end:].reshape(T, self.n_kv, D)
        q, k = self.rope(q, start), self.rope(k, start)
        keys, values = cache.update(layer, k, v)  # (n_kv, start+T, D)
        return self.o_proj(attention(q, keys, values, self.scale, start, 0))


class MLP:
    def __init__(self, w: Weights, p: str):
        self.gate_up_proj = w.linear(f"{p}.gate_up_proj")
        self.down_proj = w.linear(f"{p}.down_proj")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.gate_up_proj(x)  # (T, 2 * intermediate)
        half = y.shape[-1] // 2
        gate, up = y[:, :half], y[:, half:]
        return self.down_proj(silu(gate) * up)


class TransformerBlock:
    def __init__(self, w: Weights, p: str, cfg: dict, rope: Rope):
        self.eps = cfg["rms_norm_eps"]
        self.self_attn = Attention(w, f"{p}.self_attn", cfg, rope)
        self.mlp = MLP(w, f"{p}.mlp")
        self.input_layernorm = w.vector(f"{p}.input_layernorm.weight")
        self.post_attention_layernorm = w.vector(f"{p}.post_attention_layernorm.weight")

    def __call__(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        h = x + self.self_attn(rms_norm(x, self.input_layernorm, self.eps), cache, layer)
        return h + self.mlp(rms_norm(h, self.post_attention_layernorm, self.eps))


def build(w: Weights, config: dict) -> NumpyModel:
    rope = _rope(config, config["hidden_size"] // config["num_attention_heads"])
    blocks = [TransformerBlock(w, f"model.layers.{i}", config, rope)
              for i in range(config["num_hidden_layers"])]
    tied = config.get("tie_word_embeddings", False)
    embed = w.embedding("model.embed_tokens")
    lm_head = embed.as_linear() if tied else w.linear("lm_head")
    norm_w, eps = w.vector("model.norm.weight"), config["rms_norm_eps"]
    return NumpyModel(config, embed, blocks, lambda h: rms_norm(h, norm_w, eps), lm_head)
