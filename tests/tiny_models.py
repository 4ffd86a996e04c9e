"""Tiny random models in mlx-lm's bundle layout, for tests.

`tiny_bundle("llama", tmp_path / "m")` builds a seeded ~100k-parameter model with mlx-lm's own
model class, optionally quantizes it the way `mlx_lm.convert` does, and saves it with a byte-level
tokenizer so that `mlx_lm.load(dir)` works on it. mlx is imported only when a bundle is built.
Test-only (not shipped in the package): tests import it as `tiny_models`; scripts put tests/ on
sys.path first.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import io
import json
from pathlib import Path

from mlxedge.formats.gguf_pretok import byte_chars

ARCHS = ("llama", "qwen2", "qwen3", "gemma3_text", "phi3")

# Shared by every tiny model: 4 query heads over 2 kv heads (GQA), head_dim 16.
_COMMON = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 320,
    "max_position_embeddings": 2048,
    "bos_token_id": 256,
    "eos_token_id": 258,
    "pad_token_id": 256,
}

CONFIGS: dict[str, dict] = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2,
              "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 2,
              "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": True},
    # Layers 0, 1 and 3 slide over 8 positions; layer 2 is global (pattern 3).
    "gemma3_text": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
                    "num_hidden_layers": 4, "head_dim": 16, "query_pre_attn_scalar": 16,
                    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                    "sliding_window": 8, "sliding_window_pattern": 3, "tie_word_embeddings": True},
    "phi3": {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "num_hidden_layers": 2,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False},
}

# A mixed-precision recipe in mlx-lm's style: per-module overrides by glob over module paths.
# `False` keeps a module in float; a dict is written into config["quantization"][path].
MIXED = {
    "bits": 4,
    "group_size": 32,
    "overrides": {
        "*.v_proj": {"bits": 8, "group_size": 64},
        "*.qkv_proj": {"bits": 8, "group_size": 64},
        "*.down_proj": {"bits": 6, "group_size": 32},
        "model.layers.0.self_attn.o_proj": False,
        "lm_head": {"bits": 8, "group_size": 32},
    },
}

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 256, 257, 258


def model_classes(config: dict):
    """-> (Model, ModelArgs) of mlx-lm for config["model_type"], found the way mlx-lm does:
    the module mlx_lm.models.<model_type> (our archs need none of its name remappings)."""
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    return module.Model, module.ModelArgs


def tiny_bundle(arch: str, out_dir: str | Path, *, quantize: dict | None = None, seed: int = 0,
                dtype: str = "float32", **overrides) -> Path:
    """Build and save a tiny random `arch` model; returns `out_dir`.

    quantize: None (float weights), `{"bits": 4, "group_size": 32}`, or with an `"overrides"` dict
    mapping module-path globs to `False` (keep float) or `{"bits", "group_size"}` (see `MIXED`).
    dtype: the float dtype of the saved weights ("float32", "float16", "bfloat16").
    overrides: config.json keys to change (e.g. `tie_word_embeddings=True`,
    `rope_scaling={"rope_type": "llama3", ...}`).
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import quantize_model, save_config

    if arch not in CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    config = {**_COMMON, **CONFIGS[arch], **overrides}
    model_class, args_class = model_classes(config)
    model = model_class(args_class.from_dict(config))
    _randomize(model, mx, seed, gemma=arch.startswith("gemma"))
    model.set_dtype(getattr(mx, dtype))

    weights_tied = config.get("tie_word_embeddings", arch.startswith("gemma"))
    if arch.startswith("gemma") and weights_tied:
        model.pop("lm_head")  # mlx-lm's gemma3 ties when the checkpoint has no lm_head
        model.tie_word_embeddings = True

    if quantize is not None:
        overrides_q = quantize.get("overrides", {})

        def predicate(path: str, module) -> bool | dict:
            for pattern, spec in overrides_q.items():
                if fnmatch.fnmatchcase(path, pattern):
                    return False if spec is False else {"mode": "affine", **spec}
            return True

        with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints a summary line
            model, config = quantize_model(model, config, quantize["group_size"], quantize["bits"],
                                           quant_predicate=predicate)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    save_config(dict(config), out / "config.json")
    _write_tokenizer(out)
    _write_json(out / "generation_config.json", {"bos_token_id": 256, "eos_token_id": [258, 256]})
    n_params = sum(v.size for k, v in weights.items() if not k.endswith((".scales", ".biases")))
    _write_json(out / "mlxedge.json", {
        "source": {"path": "", "format": "synthetic", "arch": arch, "seed": seed},
        "recipe": "custom" if quantize else dtype,
        "parameters": int(n_params),
    })
    return out


def _randomize(model, mx, seed: int, gemma: bool) -> None:
    """Make every parameter random: norms too, so a wrong norm convention shows up in tests."""
    from mlx.utils import tree_flatten, tree_unflatten

    import numpy as np

    rng = np.random.default_rng(seed)
    new = []
    for name, p in tree_flatten(model.parameters()):
        noise = mx.array(rng.standard_normal(p.shape, dtype=np.float32))
        if "norm" in name:
            # gemma stores w with the model applying (1 + w); others apply w directly.
            new.append((name, 0.3 * noise if gemma else 1.0 + 0.3 * noise))
        elif name.endswith("embed_tokens.weight"):
            new.append((name, 0.5 * noise))
        elif name.endswith(".bias"):
            new.append((name, 0.1 * noise))
        else:
            fan_in = p.shape[-1]
            new.append((name, noise / fan_in**0.5))
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())


def _write_tokenizer(out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in enumerate(byte_chars())}  # token id == byte value
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": CHATML_TEMPLATE,
    })
    _write_json(out / "special_tokens_map.json", {
        "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    })


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
