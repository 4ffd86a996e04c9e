"""Llama-family decoders in NumPy: llama, mistral, qwen2, qwen3.

Port of mlx_lm/models/llama.py, qwen2.py and qwen3.py. They differ only in small ways:
- qwen2: q/k/v projections carry biases (any projection with a `.bias` tensor gets one here);
- qwen3: RMSNorm on each query/key head (`q_norm`, `k_norm`) before RoPE; explicit head_dim;
- llama: optional `layer_types` with "sliding_attention" layers limited to `sliding_window`.
"""

from __future__ import annotations

import numpy as np

from .cache import KVCache
from .layers import Rope, attention, make_rope, rms_norm, silu
from .decoder import NumpyModel
from .weights import Weights, fuse



class Attention:
    def __init__(self, w: Weights, p: str, cfg: dict, head_dim: int, window: int | None, rope: Rope):
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.window = window
        self.eps = cfg["rms_norm_eps"]
        self.qkv = fuse([w.linear(f"{p}.q_proj"), w.linear(f"{p}.k_proj"), w.linear(f"{p}.v_proj")])
        self.o_proj = w.linear(f"{p}.o_proj")
        self.q_norm = w.vector(f"{p}.q_norm.weight") if cfg["model_type"] == "qwen3" else None
        self.k_norm = w.vector(f"{p}.k_norm.weight") if cfg["model_type"] == "qwen3" else None
        self.rope = rope  # shared by all layers: cos/sin computed once per forward

    def __call__(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        T = x.shape[0]
        start = cache.offset
        q, k, v = self.qkv(x)
        q = q.reshape(T, self.n_heads, self.head_dim)  # (T, n_heads, D)
        k = k.reshape(T, self.n_kv, self.head_dim)     # (T, n_kv, D)
        v = v.reshape(T, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q = rms_norm(q, self.q_norm, self.eps)
            k = rms_norm(k, self.k_norm, self.eps)
        q, k = self.rope(q, start), self.rope(k, start)
        keys, values = cache.update(layer, k, v)  # (n_kv, start+T, D)
        k0 = 0 if self.window is None else max(0, start - self.window + 1)
        out = attention(q, keys[:, k0:], values[:, k0:], self.scale, start, k0, self.window)
        return self.o_proj(out)


class MLP:
    def __init__(self, w: Weights, p: str):
        self.gate_up = fuse([w.linear(f"{p}.gate_proj"), w.linear(f"{p}.up_proj")])
        self.down_proj = w.linear(f"{p}.down_proj")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        gate, up = self.gate_up(x)  # (T, intermediate) each
        return self.down_proj(silu(gate) * up)


class TransformerBlock:
    def __init__(self, w: Weights, p: str, cfg: dict, head_dim: int, window: int | None, rope: Rope):
        self.eps = cfg["rms_norm_eps"]
        self.self_attn = Attention(w, f"{p}.self_attn", cfg, head_dim, window, rope)
        self.mlp = MLP(w, f"{p}.mlp")
        self.input_layernorm = w.vector(f"{p}.input_layernorm.weight")
        self.post_attention_layernorm = w.vector(f"{p}.post_attention_layernorm.weight")

    def __call__(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        h = x + self.self_attn(rms_norm(x, self.input_layernorm, self.eps), cache, layer)
        return h + self.mlp(rms_norm(h, self.post_attention_layernorm, self.eps))


def build(w: Weights, config: dict) -> NumpyModel:
    cfg = _normalize(config)
    if cfg["model_type"] == "qwen2":  # mlx-lm's qwen2 derives head_dim, ignoring the config key
        head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    else:
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    n = cfg["num_hidden_layers"]
    layer_types = cfg.get("layer_types") or ["full_attention"] * n
    rope = make_rope(head_dim, cfg["rope_theta"], cfg.get("rope_traditional", False),
                     cfg.get("rope_scaling"), cfg.get("max_position_embeddings"))
    blocks = [TransformerBlock(w, f"model.layers.{i}", cfg, head_dim,
                               cfg.get("sliding_window") if layer_types[i] == "sliding_attention" else None,
                               rope)
              for i in range(n)]
    tied = cfg.get("tie_word_embeddings", True)
    embed = w.embedding("model.embed_tokens")
    lm_head = embed.as_linear() if tied else w.linear("lm_head")
    if tied and w.has("lm_head.weight"):  # mlx-lm drops a stray lm_head when tied
        w.used.update(k for k in w.raw if k.startswith("lm_head."))
    w.used.update(k for k in w.raw if "rotary_emb.inv_freq" in k)
    norm_w, eps = w.vector("model.norm.weight"), cfg["rms_norm_eps"]
    return NumpyModel(config, embed, blocks, lambda h: rms_norm(h, norm_w, eps), lm_head)


def _normalize(config: dict) -> dict:
    """The config as mlx-lm's ModelArgs read it (defaults, transformers-5 `rope_parameters`)."""
    cfg = dict(config)
    if cfg["model_type"] == "qwen3":
        params = cfg.get("rope_parameters") or {}
        if cfg.get("rope_theta") is None:
            cfg["rope_theta"] = params.get("rope_theta")
        if cfg.get("rope_scaling") is None and params:
            cfg["rope_scaling"] = params
    default_theta = 1000000 if cfg["model_type"] == "qwen2" else 10000
    if cfg.get("rope_theta") is None:
        cfg["rope_theta"] = default_theta
    if cfg["model_type"] == "qwen3":  # mlx-lm's qwen3 ignores rope_traditional
        cfg["rope_traditional"] = False
    return cfg
