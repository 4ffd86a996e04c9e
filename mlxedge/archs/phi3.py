"""Phi-3: fused qkv_proj and gate_up_proj (llama.cpp and mlx-lm both keep them fused), partial
rotary, optional longrope scaling stored by llama.cpp as tensors."""

from __future__ import annotations

from . import decoder, head_dim

MODEL_TYPE = "phi3"
HF_CLASS = "Phi3ForCausalLM"
GGUF_ARCH = "phi3"
NUMPY = "phi3"
FLOAT_DTYPE = "float16"
PERMUTED_QK = False
NORM_PLUS_ONE = False
TIE_DEFAULT = False
FUSED = True  # qkv_proj and gate_up_proj stay fused, as in mlx-lm
ONNX = True
DROP_TIED_HEAD = False
GGUF_BLOCK = {"attn_norm": "input_layernorm", "attn_qkv": "self_attn.qkv_proj",
              "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"}


def gguf_config(config: dict, get, tensor_names: set[str]) -> None:
    hd = config["head_dim"]
    config["partial_rotary_factor"] = get("rope.dimension_count", hd) / hd
    orig = get("rope.scaling.original_context_length")
    if orig:
        config["original_max_position_embeddings"] = int(orig)
    sw = get("attention.sliding_window")
    if sw:
        config["sliding_window"] = int(sw)


def parameters(config: dict) -> dict[str, tuple]:
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    hd = head_dim(config)
    nq = config["num_attention_heads"] * hd
    nkv = (config.get("num_key_value_heads") or config["num_attention_heads"]) * hd
    return decoder(config, {"input_layernorm": (hidden,), "post_attention_layernorm": (hidden,),
                            "self_attn.qkv_proj": (nq + 2 * nkv, hidden), "self_attn.o_proj": (hidden, nq),
                            "mlp.gate_up_proj": (2 * ffn, hidden), "mlp.down_proj": (hidden, ffn)})
