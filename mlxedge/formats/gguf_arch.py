"""Per-architecture tables: GGUF tensor names -> mlx-lm parameter names, and GGUF metadata ->
Hugging Face config.json. One small, explicit table per architecture family."""

from __future__ import annotations

import re

from ..errors import MlxEdgeError

# llama.cpp's per-block tensor names -> mlx-lm's, shared by every architecture we read.
BLOCK_COMMON = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
BLOCK = {
    "llama": {**BLOCK_COMMON, "ffn_norm": "post_attention_layernorm"},
    "qwen2": {**BLOCK_COMMON, "ffn_norm": "post_attention_layernorm"},
    "qwen3": {**BLOCK_COMMON, "ffn_norm": "post_attention_layernorm",
              "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
    "gemma3": {**BLOCK_COMMON, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
               "post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
    # llama.cpp keeps Phi-3's fused projections, and so does mlx-lm.
    "phi3": {"attn_norm": "input_layernorm", "attn_qkv": "self_attn.qkv_proj",
             "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"},
}
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text", "phi3": "phi3"}
HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}
# llama.cpp's converter interleaves q/k rows for its RoPE kernel only for these (LlamaModel.permute).
PERMUTED_QK = {"llama"}
# Gemma stores RMSNorm weights as w and multiplies by (1 + w); llama.cpp's converter adds the 1.
NORM_PLUS_ONE = {"gemma3"}
# Checkpoint entries with no parameter in mlx-lm (precomputed, or derived from config).
IGNORED = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}

_BLK = re.compile(r"^blk\.(\d+)\.(.+)\.(weight|bias)$")


def mlx_name(arch: str, gguf_name: str) -> str | None:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; None if unknown."""
    m = _BLK.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        target = BLOCK[arch].get(part)
        return f"model.layers.{layer}.{target}.{kind}" if target else None
    base, _, kind = gguf_name.rpartition(".")
    target = GLOBAL.get(base)
    return f"{target}.{kind}" if target else None


def hf_config(arch: str, meta: dict, tensor_names: set[str], vocab_size: int) -> dict:
    """Hugging Face config.json (with every field mlx-lm reads) from GGUF metadata."""
    if arch not in MODEL_TYPE:
        raise MlxEdgeError(f"unsupported architecture {arch!r} (supported: {', '.join(MODEL_TYPE)})")

    def get(key, default=None, required=False):
        value = meta.get(f"{arch}.{key}", default)
        if required and value is None:
            raise MlxEdgeError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length", required=True))
    n_heads = int(get("attention.head_count", required=True))
    n_kv = get("attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):  # per-layer counts (some newer files): ours are uniform
        if len(set(n_kv)) != 1:
            raise MlxEdgeError("per-layer KV head counts are not supported")
        n_kv = n_kv[0]
    head_dim = int(get("attention.key_length", hidden // n_heads))
    ffn = get("feed_forward_length", required=True)
    ffn = ffn[0] if isinstance(ffn, list) else ffn
    config = {
        "architectures": [HF_CLASS[arch]],
        "model_type": MODEL_TYPE[arch],
        "hidden_size": hidden,
        "intermediate_size": int(ffn),
        "num_hidden_layers": int(get("block_count", required=True)),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(n_kv),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    scaling = _rope_scaling(arch, get)
    if scaling:
        config["rope_scaling"] = scaling
    if arch == "llama":
        config.update(attention_bias="blk.0.attn_q.bias" in tensor_names, mlp_bias=False)
    if arch == "gemma3":
        pattern = 6  # llama.cpp hard-codes Gemma 3's 5 local : 1 global layer pattern
        n_layers = config["num_hidden_layers"]
        config.update(
            sliding_window=int(get("attention.sliding_window", 512)),
            sliding_window_pattern=pattern,
            layer_types=["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                         for i in range(n_layers)],
            rope_local_base_freq=10000.0,
            # llama.cpp scales queries by 1/sqrt(head_dim), except Gemma 3 27B (62 layers): hidden/heads.
            query_pre_attn_scalar=hidden // n_heads if n_layers == 62 else head_dim,
            hidden_activation="gelu_pytorch_tanh",
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
        )
    if arch == "phi3":
        rot = get("rope.dimension_count", head_dim)
        config["partial_rotary_factor"] = rot / head_dim
        orig = get("rope.scaling.original_context_length")
        if orig:
            config["original_max_position_embeddings"] = int(orig)
        sw = get("attention.sliding_window")
        if sw:
            config["sliding_window"] = int(sw)
    if arch in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
    return config


def _rope_scaling(arch: str, get) -> dict | None:
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if kind in (None, "none") and not factor:
        return None
    if kind in ("linear", None) and factor:
        return {"type": "linear", "rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out = {"type": "yarn", "rope_type": "yarn", "factor": float(factor)}
        orig = get("rope.scaling.original_context_length")
        if orig:
            out["original_max_position_embeddings"] = int(orig)
        return out
    raise MlxEdgeError(f"{arch}: rope scaling type {kind!r} is not supported")
