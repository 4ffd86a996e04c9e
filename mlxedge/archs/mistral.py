"""Mistral: the llama layout under its own model_type (mlx-lm's mistral is llama's code)."""

from __future__ import annotations

from . import llama_parameters

MODEL_TYPE = "mistral"
HF_CLASS = "MistralForCausalLM"
GGUF_ARCH = None  # llama.cpp writes Mistral files as `llama`
NUMPY = "llama"
FLOAT_DTYPE = "float16"
PERMUTED_QK = True
NORM_PLUS_ONE = False
TIE_DEFAULT = True
FUSED = False
ONNX = True
DROP_TIED_HEAD = True
GGUF_BLOCK: dict = {}


def gguf_config(config: dict, get, tensor_names: set[str]) -> None:
    pass


def parameters(config: dict) -> dict[str, tuple]:
    return llama_parameters(config)
