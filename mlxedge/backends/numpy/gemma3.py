"""Gemma 3 (text) in NumPy. Port of mlx_lm/models/gemma3_text.py.

What sets it apart from llama:
- RMSNorm scales by (1 + w), for the block norms, the final norm and the q/k head norms;
- four norms per block: after attention and around the MLP (sandwich norms);
- the embedding is multiplied by sqrt(hidden_size), rounded to bfloat16 as mlx-lm does;
- layers are sliding-window except every `sliding_window_pattern`-th one, which is global;
  sliding layers use `rope_local_base_freq` and no RoPE scaling, global ones `rope_theta` +
  `rope_scaling`;
- attention scale is query_pre_attn_scalar ** -0.5; the MLP uses tanh-approximated GELU;
- `final_logit_softcapping`, when set, caps logits as tanh(x / c) * c (mlx-lm skips this; every
  released Gemma 3 config has it null).
"""

from __future__ import annotations

import numpy as np

from ...dtypes import round_bf16
from .cache import KVCache
from .layers import Rope, attention, gelu_approx, make_rope, rms_norm
from .decoder import NumpyModel
from .weights import Weights, fuse


DEFAULTS = {"head_dim": 256, "rms_norm_eps": 1e-6, "num_key_value_heads": 1,
            "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
            "query_pre_attn_scalar": 256, "sliding_window": 512, "sliding_window_pattern": 6,
            "max_position_embeddings": 32768}


class Attention:
    def __init__(self, w: Weights, p: str, cfg: dict, sliding: bool, rope: Rope):
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg["num_key_value_heads"]
        self.head_dim = cfg["head_dim"]
        self.scale = cfg["query_pre_attn_scalar"] ** -0.5
        self.eps = cfg["rms_norm_eps"]
        self.window = cfg["sliding_window"] if sliding else None
        self.qkv = fuse([w.linear(f"{p}.q_proj"), w.linear(f"{p}.k_proj"), w.linear(f"{p}.v_proj")])
        self.o_proj = w.linear(f"{p}.o_proj")
        self.q_norm = 1.0 + w.vector(f"{p}.q_norm.weight")
        self.k_norm = 1.0 + w.vector(f"{p}.k_norm.weight")
        self.rope = rope

    def __call__(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        T = x.shape[0]
        start = cache.offset
        q, k, v = self.qkv(x)
        q = rms_norm(q.reshape(T, self.n_heads, self.head_dim), self.q_norm, self.eps)  # (T, H, D)
        k = rms_norm(k.reshape(T, self.n_kv, self.head_dim), self.k_norm, self.eps)     # (T, K, D)
        v = v.reshape(T, self.n_kv, self.head_dim)
        q, k = self.rope(q, start), self.rope(k, start)
        keys, values = cache.update(layer, k, v)  # (K, start+T, D)
        # a sliding layer's first query (position `start`) reaches back window-1 positions
        k0 = 0 if self.window is None else max(0, start - self.window + 1)
        out = attention(q, keys[:, k0:], values[:, k0:], self.scale, start, k0, self.window)
        return self.o_proj(out)


class MLP:
    def __init__(self, w: Weights, p: str):
        self.gate_up = fuse([w.linear(f"{p}.gate_proj"), w.linear(f"{p}.up_proj")])
        self.down_proj = w.linear(f"{p}.down_proj")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        gate, up = self.gate_up(x)
        return self.down_proj(gelu_approx(gate) * up)


class TransformerBlock:
    def __init__(self, w: Weights, p: str, cfg: dict, sliding: bool, rope: Rope):
        self.eps = cfg["rms_norm_eps"]
        self.self_attn = Attention(w, f"{p}.self_attn", cfg, sliding, rope)
        self.mlp = MLP(w, f"{p}.mlp")
        names = ("input_layernorm", "post_attention_layernorm",
                 "pre_feedforward_layernorm", "post_feedforward_layernorm")
        self.norms = {n: 1.0 + w.vector(f"{p}.{n}.weight") for n in names}

    def __call__(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        n, eps = self.norms, self.eps
        r = self.self_attn(rms_norm(x, n["input_layernorm"], eps), cache, layer)
        h = x + rms_norm(r, n["post_attention_layernorm"], eps)
        r = self.mlp(rms_norm(h, n["pre_feedforward_layernorm"], eps))
        return h + rms_norm(r, n["post_feedforward_layernorm"], eps)


def build(w: Weights, config: dict) -> NumpyModel:
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    pattern = cfg["sliding_window_pattern"]
    local_rope = make_rope(cfg["head_dim"], cfg["rope_local_base_freq"])
    global_rope = make_rope(cfg["head_dim"], cfg["rope_theta"], False, cfg.get("rope_scaling"),
                            cfg["max_position_embeddings"])
    blocks = []
    for i in range(cfg["num_hidden_layers"]):
        sliding = (i + 1) % pattern != 0
        blocks.append(TransformerBlock(w, f"model.layers.{i}", cfg, sliding,
                                       local_rope if sliding else global_rope))
    tied = not w.has("lm_head.weight")  # as mlx-lm's sanitize decides
    embed = w.embedding("model.embed_tokens")
    lm_head = embed.as_linear() if tied else w.linear("lm_head")
    norm_w, eps = 1.0 + w.vector("model.norm.weight"), cfg["rms_norm_eps"]
    return NumpyModel(config, embed, blocks, lambda h: rms_norm(h, norm_w, eps), lm_head,
                      embed_scale=float(round_bf16(cfg["hidden_size"] ** 0.5)),
                      logit_softcap=cfg.get("final_logit_softcapping"))
