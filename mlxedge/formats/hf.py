"""Read a Hugging Face safetensors checkpoint, or an already converted MLX bundle, as a Source.

Two kinds of directory hold `config.json` + `*.safetensors`:
- a Hugging Face checkpoint (bf16/f16/f32, transformers names, which mlx-lm keeps): tensors pass
  through under their own names after mlx-lm's `sanitize` rules (precomputed rotary `inv_freq`
  dropped; a tied `lm_head` dropped, as mlx-lm does for tied llama/qwen models and where it merely
  duplicates the embedding);
- an mlx-lm / mlxedge bundle (`config.json` has `"quantization"`): affine-quantized modules
  (`weight` uint32 + `scales` + `biases`) come back as their exact `Affine`, so `--quant keep`
  copies them bit for bit and any other recipe re-quantizes their float values.

Tensors stay memory-mapped until the pipeline asks for one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .. import archs
from ..errors import MlxEdgeError
from ..files import read_json
from ..quant import affine
from ..safetensors import FLOAT_NAMES, Tensor, quant_spec, scan_all, weight_files
from .source import Source, SourceTensor
from .tokenizer_files import check_tokenizer_files

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _sanitize(raw: dict[str, Tensor], config: dict, arch, check_only: bool = False
              ) -> tuple[dict[str, Tensor], list[str]]:
    """mlx-lm's checkpoint quirks: drop rotary inv_freq and a tied lm_head. -> (tensors, dropped)."""
    dropped = [k for k in raw if "rotary_emb.inv_freq" in k]
    if "lm_head.weight" in raw and "model.embed_tokens.weight" in raw and "lm_head.scales" not in raw:
        head, embed = raw["lm_head.weight"], raw["model.embed_tokens.weight"]
        tied = config.get("tie_word_embeddings", False)
        duplicate = not check_only and head.shape == embed.shape and np.array_equal(head.load(), embed.load())
        if (tied and arch.DROP_TIED_HEAD) or duplicate:
            dropped.append("lm_head.weight")
            if duplicate:
                config["tie_word_embeddings"] = True
    return {k: v for k, v in raw.items() if k not in dropped}, dropped


def _float_dtype(config: dict, raw: dict[str, Tensor], arch) -> str:
    """The checkpoint's own 16-bit float type; float32 checkpoints get bfloat16 for Gemma (whose
    activations need its range) and float16 otherwise, as our GGUF reader does."""
    declared = config.get("torch_dtype") or config.get("dtype")
    if declared in ("float16", "bfloat16"):
        return declared
    stored = {FLOAT_NAMES[r.dtype] for k, r in raw.items() if r.dtype in FLOAT_NAMES and k.endswith(".weight")}
    if len(stored) == 1 and stored != {"float32"}:
        return stored.pop()
    return arch.FLOAT_DTYPE


def read_hf(path: str | Path, check_only: bool = False) -> Source:
    """Read a Hugging Face checkpoint or an MLX bundle directory into a conversion Source.

    `check_only=True` is for callers that only want the checks (inspect, the backends before
    loading): it skips reading lm_head and the embedding to see whether the head merely duplicates
    it, and checks tokenizer.json from its file without keeping it in the Source."""
    root = Path(path)
    config = read_json(root / "config.json")
    if "model_type" not in config:
        raise MlxEdgeError(f"{root / 'config.json'} has no model_type")
    arch = archs.get(config["model_type"])
    raw = scan_all(root)
    archs.check_config(config, str(root))
    qcfg = config.pop("quantization", None)
    config.pop("quantization_config", None)
    if qcfg is not None and not isinstance(qcfg, dict):
        raise MlxEdgeError(f"{root / 'config.json'}: \"quantization\" is {qcfg!r}, expected an object")
    written_by_us = read_json(root / "mlxedge.json", missing_ok=True)  # checked even when not needed
    is_bundle = qcfg is not None or bool(written_by_us)
    raw, dropped = _sanitize(raw, config, arch, check_only)

    quantized = {k[: -len(".scales")] for k in raw if k.endswith(".scales")}
    if quantized and not qcfg:
        raise MlxEdgeError(f"{root}: tensors have scales but config.json has no \"quantization\"")
    members = {f"{p}.{s}" for p in quantized for s in ("scales", "biases")}
    names = sorted((k for k in raw if k not in members), key=archs.sort_key)
    _check_stored(root, raw, names, quantized, qcfg)

    def make(name: str) -> SourceTensor:
        r = raw[name]
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix in quantized:
            bits, group = quant_spec(qcfg, prefix)
            s, b = raw[f"{prefix}.scales"], raw[f"{prefix}.biases"]
            shape = (r.shape[0], r.shape[1] * 32 // bits)

            def exact() -> affine.Affine:
                # scales/biases keep their stored type (BF16 as uint16 bits): `keep` copies them as is
                return affine.Affine(affine.unpack(r.load(), bits), np.array(s.load()), np.array(b.load()),
                                     bits, group)

            def dense() -> np.ndarray:
                return affine.dequantize(r.load(), s.float32(), b.float32(), bits, group)

            return SourceTensor(name, shape, f"affine{bits}g{group}", dense, exact,
                                r.nbytes + s.nbytes + b.nbytes)
        return SourceTensor(name, r.shape, r.dtype, r.float32, None, r.nbytes)

    archs.check(config, {n: _logical_shape(n, raw, qcfg) for n in names}, str(root))

    def tensors() -> Iterator[SourceTensor]:
        for name in names:
            yield make(name)

    tokenizer_files = {n: read_json(root / n) for n in TOKENIZER_FILES
                       if (root / n).exists() and not (check_only and n == "tokenizer.json")}
    template = root / "chat_template.jinja"
    if template.exists() and "tokenizer_config.json" in tokenizer_files:
        tokenizer_files["tokenizer_config.json"].setdefault("chat_template", template.read_text(encoding="utf-8"))
    if not (root / "tokenizer.json").is_file():
        raise MlxEdgeError(f"{root} has no tokenizer.json (needed to run the converted model)")
    check_tokenizer_files(tokenizer_files, root, config["vocab_size"])
    generation = read_json(root / "generation_config.json", missing_ok=True)
    archs.check_token_ids(generation, config["vocab_size"], f"{root / 'generation_config.json'}:")
    info = {"model_type": config["model_type"], "dropped": dropped,
            "files": [f.name for f in weight_files(root)]}
    if qcfg:
        info["quantization"] = {k: v for k, v in qcfg.items() if not isinstance(v, (dict, bool))}
    return Source(path=root, format="bundle" if is_bundle else "hf", config=config, tensors=tensors,
                  tokenizer_files=tokenizer_files, generation_config=generation, info=info,
                  float_dtype=_float_dtype(config, raw, arch))


def _check_stored(root: Path, raw: dict[str, Tensor], names: list[str], quantized: set[str], qcfg) -> None:
    """Before anything is read: float tensors are float, and each affine-quantized module is a 2-D
    uint32 weight with float scales and biases of shape (rows, columns / group_size)."""
    for name in names:
        r, prefix = raw[name], name[: -len(".weight")]
        if name.endswith(".weight") and prefix in quantized:
            s, b = raw[f"{prefix}.scales"], raw.get(f"{prefix}.biases")
            if b is None:
                raise MlxEdgeError(f"{root}: {prefix} has scales but no biases (only affine quantization is supported)")
            bits, group = quant_spec(qcfg, prefix)
            cols = r.shape[1] * 32 // bits if len(r.shape) == 2 else 0
            want = (r.shape[0], cols // group) if cols and cols % group == 0 else None
            if r.dtype != "U32" or want is None or r.shape[1] * 32 % bits:
                raise MlxEdgeError(f"{root}: {name} is {r.dtype} {list(r.shape)}, expected a 2-D U32 weight "
                                   f"packing {bits}-bit values in groups of {group}")
            for t, part in ((s, "scales"), (b, "biases")):
                if t.dtype not in FLOAT_NAMES or tuple(t.shape) != want:
                    raise MlxEdgeError(f"{root}: {prefix}.{part} is {t.dtype} {list(t.shape)}, expected a float "
                                       f"tensor of shape {list(want)} for weight {list(r.shape)} at {bits} bits, "
                                       f"group size {group}")
        elif r.dtype not in FLOAT_NAMES:
            raise MlxEdgeError(f"{root}: {name} is an unexpected {r.dtype} tensor (float tensors or affine-quantized "
                               f"weights only)")


def _logical_shape(name: str, raw: dict[str, Tensor], qcfg: dict | None) -> tuple:
    """A tensor's shape as the model sees it: a packed weight's columns unpacked."""
    r = raw[name]
    prefix = name[: -len(".weight")]
    if name.endswith(".weight") and f"{prefix}.scales" in raw and len(r.shape) == 2:
        return (r.shape[0], r.shape[1] * 32 // quant_spec(qcfg or {}, prefix)[0])
    return r.shape
