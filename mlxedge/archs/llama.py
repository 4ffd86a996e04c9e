"""Llama (and Llama 3.x / SmolLM2): separate q/k/v, gated MLP, RMSNorm. Port of mlx_lm/models/llama.py's
parameter layout; llama.cpp interleaves its q/k rows for RoPE (undone by the GGUF reader)."""

from __future__ import annotations

from . import llama_parameters

MODEL_TYPE = "llama"
HF_CLASS = "LlamaForCausalLM"
GGUF_ARCH = "llama"
NUMPY = "llama"
FLOAT_DTYPE = "float16"
PERMUTED_QK = True
NORM_PLUS_ONE = False
TIE_DEFAULT = True
FUSED = False
ONNX = True
DROP_TIED_HEAD = True

# llama.cpp's per-block tensor names -> mlx-lm's, shared by the llama-shaped architectures.
GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}


def gguf_config(config: dict, get, tensor_names: set[str]) -> None:
    config.update(attention_bias="blk.0.attn_q.bias" in tensor_names, mlp_bias=False)


def parameters(config: dict) -> dict[str, tuple]:
    return llama_parameters(config)
