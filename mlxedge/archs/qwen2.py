"""Qwen2 / Qwen2.5: the llama layout with q/k/v biases; head_dim always hidden / heads in mlx-lm."""

from __future__ import annotations

from . import llama_parameters
from .llama import GGUF_BLOCK as LLAMA_BLOCK

MODEL_TYPE = "qwen2"
HF_CLASS = "Qwen2ForCausalLM"
GGUF_ARCH = "qwen2"
NUMPY = "llama"
FLOAT_DTYPE = "float16"
PERMUTED_QK = False
NORM_PLUS_ONE = False
TIE_DEFAULT = True
FUSED = False
ONNX = True
DROP_TIED_HEAD = True
GGUF_BLOCK = dict(LLAMA_BLOCK)


def gguf_config(config: dict, get, tensor_names: set[str]) -> None:
    config["use_sliding_window"] = False


def parameters(config: dict) -> dict[str, tuple]:
    # mlx-lm's qwen2 derives head_dim from the width, ignoring a config head_dim
    return llama_parameters({**config, "head_dim": None})
