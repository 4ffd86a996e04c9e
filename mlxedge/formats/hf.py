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

import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import MlxEdgeError
from ..quant import affine
from .bundle import from_bf16_bits, read_safetensors_header
from .source import Source, SourceTensor

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U32": np.uint32,
             "U8": np.uint8, "I32": np.int32, "I64": np.int64, "F64": np.float64}
FLOAT_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# model types whose mlx-lm sanitize drops lm_head whenever the config says tied
DROP_TIED_HEAD = ("llama", "mistral", "qwen2", "qwen3")


class _Raw:
    """One stored tensor: its safetensors dtype name and a lazy view of the bytes."""

    def __init__(self, dtype: str, shape: tuple[int, ...], load: Callable[[], np.ndarray]):
        self.dtype, self.shape, self.load = dtype, shape, load

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(ST_DTYPES[self.dtype]).itemsize

    def float32(self) -> np.ndarray:
        x = self.load()
        return from_bf16_bits(x) if self.dtype == "BF16" else np.asarray(x, dtype=np.float32)


def scan(path: Path) -> dict[str, _Raw]:
    """The safetensors header of `path`, tensors memory-mapped lazily (BF16 as uint16 bits)."""
    n, header = read_safetensors_header(path)
    out = {}
    mm = None

    def view(start: int, end: int, dt, shape):
        def load() -> np.ndarray:
            nonlocal mm
            if mm is None:
                mm = np.memmap(path, dtype=np.uint8, mode="r")
            return mm[8 + n + start: 8 + n + end].view(dt).reshape(shape)
        return load

    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in ST_DTYPES:
            raise MlxEdgeError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
        out[name] = _Raw(info["dtype"], shape, view(start, end, ST_DTYPES[info["dtype"]], shape))
    return out


def weight_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise MlxEdgeError(f"{index} is unreadable: {e}") from None
        files = [root / n for n in names]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise MlxEdgeError(f"{root}: shards listed in the index are missing: {', '.join(missing)}")
        return files
    files = sorted(root.glob("model*.safetensors")) or sorted(root.glob("*.safetensors"))
    if not files:
        raise MlxEdgeError(f"{root} has no .safetensors files")
    return files


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MlxEdgeError(f"{path} is unreadable: {e}") from None


def _quant_spec(qcfg: dict, prefix: str) -> tuple[int, int]:
    spec = qcfg.get(prefix)
    if not isinstance(spec, dict):
        spec = qcfg
    if spec.get("mode", "affine") != "affine":
        raise MlxEdgeError(f"{prefix}: quantization mode {spec.get('mode')!r} is not supported (affine only)")
    if spec.get("bits") is None or spec.get("group_size") is None:
        raise MlxEdgeError(f"{prefix} is quantized but config.json gives no bits/group_size for it")
    return int(spec["bits"]), int(spec["group_size"])


def _sanitize(raw: dict[str, _Raw], config: dict) -> tuple[dict[str, _Raw], list[str]]:
    """mlx-lm's checkpoint quirks: drop rotary inv_freq and a tied lm_head. -> (tensors, dropped)."""
    dropped = [k for k in raw if "rotary_emb.inv_freq" in k]
    model_type = config.get("model_type", "")
    if "lm_head.weight" in raw and "model.embed_tokens.weight" in raw and "lm_head.scales" not in raw:
        head, embed = raw["lm_head.weight"], raw["model.embed_tokens.weight"]
        tied = config.get("tie_word_embeddings", False)
        duplicate = head.shape == embed.shape and np.array_equal(head.load(), embed.load())
        if (tied and model_type in DROP_TIED_HEAD) or duplicate:
            dropped.append("lm_head.weight")
            if duplicate:
                config["tie_word_embeddings"] = True
    return {k: v for k, v in raw.items() if k not in dropped}, dropped


def _float_dtype(config: dict, raw: dict[str, _Raw]) -> str:
    """The checkpoint's own 16-bit float type; float32 checkpoints get bfloat16 for Gemma (whose
    activations need its range) and float16 otherwise, as our GGUF reader does."""
    declared = config.get("torch_dtype") or config.get("dtype")
    if declared in ("float16", "bfloat16"):
        return declared
    stored = {FLOAT_NAMES[r.dtype] for k, r in raw.items() if r.dtype in FLOAT_NAMES and k.endswith(".weight")}
    if len(stored) == 1 and stored != {"float32"}:
        return stored.pop()
    return "bfloat16" if str(config.get("model_type", "")).startswith("gemma") else "float16"


def _sort_key(name: str):
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
        return (1, int(parts[2]), ".".join(parts[3:]))
    return (0 if "embed" in name else 2, 0, name)


def read_hf(path: str | Path) -> Source:
    """Read a Hugging Face checkpoint or an MLX bundle directory into a conversion Source."""
    root = Path(path)
    config = _read_json(root / "config.json")
    if "model_type" not in config:
        raise MlxEdgeError(f"{root / 'config.json'} has no model_type")
    raw: dict[str, _Raw] = {}
    for f in weight_files(root):
        raw.update(scan(f))
    qcfg = config.pop("quantization", None)
    config.pop("quantization_config", None)
    is_bundle = qcfg is not None or (root / "mlxedge.json").exists()
    raw, dropped = _sanitize(raw, config)

    quantized = {k[: -len(".scales")] for k in raw if k.endswith(".scales")}
    if quantized and not qcfg:
        raise MlxEdgeError(f"{root}: tensors have scales but config.json has no \"quantization\"")
    members = {f"{p}.{s}" for p in quantized for s in ("scales", "biases")}
    names = sorted((k for k in raw if k not in members), key=_sort_key)

    def make(name: str) -> SourceTensor:
        r = raw[name]
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix in quantized:
            if f"{prefix}.biases" not in raw:
                raise MlxEdgeError(f"{prefix} has scales but no biases (only affine quantization is supported)")
            bits, group = _quant_spec(qcfg, prefix)
            s, b = raw[f"{prefix}.scales"], raw[f"{prefix}.biases"]
            shape = (r.shape[0], r.shape[1] * 32 // bits)
            if shape[1] != s.shape[1] * group:
                raise MlxEdgeError(f"{prefix}: weight {r.shape} and scales {s.shape} do not match "
                                   f"{bits}-bit quantization with group size {group}")

            def exact() -> affine.Affine:
                # scales/biases keep their stored type (BF16 as uint16 bits): `keep` copies them as is
                return affine.Affine(affine.unpack(r.load(), bits), np.array(s.load()), np.array(b.load()),
                                     bits, group)

            def dense() -> np.ndarray:
                return affine.dequantize(r.load(), s.float32(), b.float32(), bits, group)

            return SourceTensor(name, shape, f"affine{bits}g{group}", dense, exact,
                                r.nbytes + s.nbytes + b.nbytes)
        if r.dtype not in FLOAT_NAMES:
            raise MlxEdgeError(f"{name}: unexpected {r.dtype} tensor in a float checkpoint")
        return SourceTensor(name, r.shape, r.dtype, r.float32, None, r.nbytes)

    def tensors() -> Iterator[SourceTensor]:
        for name in names:
            yield make(name)

    tokenizer_files = {n: _read_json(root / n) for n in TOKENIZER_FILES if (root / n).exists()}
    template = root / "chat_template.jinja"
    if template.exists() and "tokenizer_config.json" in tokenizer_files:
        tokenizer_files["tokenizer_config.json"].setdefault("chat_template", template.read_text(encoding="utf-8"))
    if "tokenizer.json" not in tokenizer_files:
        raise MlxEdgeError(f"{root} has no tokenizer.json (needed to run the converted model)")
    generation = _read_json(root / "generation_config.json") if (root / "generation_config.json").exists() else {}
    info = {"model_type": config["model_type"], "dropped": dropped,
            "files": [f.name for f in weight_files(root)]}
    if qcfg:
        info["quantization"] = {k: v for k, v in qcfg.items() if not isinstance(v, (dict, bool))}
    return Source(path=root, format="bundle" if is_bundle else "hf", config=config, tensors=tensors,
                  tokenizer_files=tokenizer_files, generation_config=generation, info=info,
                  float_dtype=_float_dtype(config, raw))
