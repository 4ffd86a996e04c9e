"""Qwen3: the llama layout with an RMSNorm on each query and key head (q_norm, k_norm)."""

from __future__ import annotations

from . import llama_parameters
from .llama import GGUF_BLOCK as LLAMA_BLOCK

MODEL_TYPE = "qwen3"
HF_CLASS = "Qwen3ForCausalLM"
GGUF_ARCH = "qwen3"
NUMPY = "llama"
FLOAT_DTYPE = "float16"
PERMUTED_QK = False
NORM_PLUS_ONE = False
TIE_DEFAULT = True
FUSED = False
ONNX = True
DROP_TIED_HEAD = True
GGUF_BLOCK = {**LLAMA_BLOCK, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}


def gguf_config(config: dict, get, tensor_names: set[str]) -> None:
    config["use_sliding_window"] = False


def parameters(config: dict) -> dict[str, tuple]:
    return llama_parameters(config, qk_norm=True)
