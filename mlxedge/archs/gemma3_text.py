"""Gemma 3 (text): four norms per block, q/k norms, 5 sliding-window layers to 1 global.

Gemma stores RMSNorm weights as w and applies (1 + w); llama.cpp's converter adds the 1, which the
GGUF reader takes back. Its activations need bfloat16's range (float16 overflows in mlx-lm)."""

from __future__ import annotations

from . import llama_parameters
from .llama import GGUF_BLOCK as LLAMA_BLOCK

MODEL_TYPE = "gemma3_text"
HF_CLASS = "Gemma3ForCausalLM"
GGUF_ARCH = "gemma3"
NUMPY = "gemma3"
FLOAT_DTYPE = "bfloat16"
PERMUTED_QK = False
NORM_PLUS_ONE = True
TIE_DEFAULT = True
FUSED = False
ONNX = False  # no real export to check the norm convention against
DROP_TIED_HEAD = False
GGUF_BLOCK = {**LLAMA_BLOCK, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
              "post_attention_norm": "post_attention_layernorm",
              "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
PATTERN = 6  # llama.cpp hard-codes Gemma 3's 5 local : 1 global layer pattern


def gguf_config(config: dict, get, tensor_names: set[str]) -> None:
    n_layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    config.update(
        sliding_window=int(get("attention.sliding_window", 512)),
        sliding_window_pattern=PATTERN,
        layer_types=["full_attention" if (i + 1) % PATTERN == 0 else "sliding_attention" for i in range(n_layers)],
        rope_local_base_freq=10000.0,
        # llama.cpp scales queries by 1/sqrt(head_dim), except Gemma 3 27B (62 layers): hidden/heads.
        query_pre_attn_scalar=hidden // config["num_attention_heads"] if n_layers == 62 else config["head_dim"],
        hidden_activation="gelu_pytorch_tanh",
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
    )


def parameters(config: dict) -> dict[str, tuple]:
    return llama_parameters(config, norms=NORMS, qk_norm=True)
