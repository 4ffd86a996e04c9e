"""`mlxedge inspect PATH`: what a GGUF file or a converted bundle holds."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from . import archs
from .errors import MlxEdgeError
from .files import read_json
from .formats.bundle import read_config
from .formats.gguf import open_gguf, read_gguf, split_paths
from .formats.hf import read_hf
from .safetensors import scan_all, stats, tensor_kinds


def inspect(path: str | Path) -> dict:
    """Architecture, parameters, tensor types, bits per weight, size, tokenizer, context length."""
    path = Path(path)
    if not path.exists():
        raise MlxEdgeError(f"{path} does not exist")
    if path.is_dir():
        return _inspect_bundle(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise MlxEdgeError(f"{path} is neither a GGUF file nor a bundle directory")
    return _inspect_gguf(path)


def _convertible(gguf_arch) -> bool:
    try:
        archs.from_gguf(gguf_arch)
        return True
    except MlxEdgeError:
        return False


def _inspect_gguf(path: Path) -> dict:
    meta, tensors = open_gguf(path)
    arch = meta.get("general.architecture", "?")
    if _convertible(arch):  # the checks convert makes: config derived from metadata vs tensor shapes
        read_gguf(path)
    params = sum(t.n_elements for t in tensors)
    nbytes = sum(t.n_bytes for t in tensors)
    hist: Counter = Counter()
    counts: Counter = Counter()
    for t in tensors:
        hist[t.type] += t.n_elements
        counts[t.type] += 1
    return {
        "path": str(path), "format": "gguf", "architecture": arch, "name": meta.get("general.name"),
        "parameters": params, "tensor_count": len(tensors),
        "tensor_types": {k: {"tensors": counts[k], "parameters": v} for k, v in hist.most_common()},
        "bits_per_weight": round(nbytes * 8 / max(params, 1), 4),
        "size_bytes": sum(p.stat().st_size for p in split_paths(path)),
        "tokenizer": meta.get("tokenizer.ggml.model"),
        "vocab_size": len(meta.get("tokenizer.ggml.tokens") or []),
        "context_length": meta.get(f"{arch}.context_length"),
        "chat_template": "tokenizer.chat_template" in meta,
    }


def _inspect_bundle(path: Path) -> dict:
    config = read_config(path)
    read_hf(path, check_only=True)  # the checks a backend makes before loading: headers vs files, shapes, tokenizer
    q = config.get("quantization") or {}
    tensors = scan_all(path)
    hist: Counter = Counter()
    counts: Counter = Counter()
    for kind, n in tensor_kinds(tensors, q).values():
        hist[kind] += n
        counts[kind] += 1
    sizes = stats(path, q)
    meta = read_json(path / "mlxedge.json", missing_ok=True)
    tok = read_json(path / "tokenizer.json", missing_ok=True)
    tcfg = read_json(path / "tokenizer_config.json", missing_ok=True)
    return {
        "path": str(path), "format": "mlx", "architecture": config.get("model_type"),
        "parameters": sizes["parameters"], "tensor_count": len(tensors),
        "tensor_types": {k: {"tensors": counts[k], "parameters": v} for k, v in hist.most_common()},
        "bits_per_weight": round(sizes["bits_per_weight"], 4),
        "size_bytes": sizes["size_bytes"],
        "tokenizer": (tok.get("model") or {}).get("type") if tok else None,
        "vocab_size": config.get("vocab_size"),
        "context_length": config.get("max_position_embeddings"),
        "chat_template": "chat_template" in tcfg,
        "source": (meta.get("source") or {}).get("path"), "recipe": meta.get("recipe"),
    }


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a .gguf file or a converted bundle directory")
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    info = inspect(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}  ({info['format']})")
    print(f"  architecture    {info['architecture']}")
    print(f"  parameters      {info['parameters'] / 1e6:.1f}M in {info['tensor_count']} tensors")
    print(f"  size            {info['size_bytes'] / 1e6:.1f} MB, {info['bits_per_weight']:.2f} bits/weight")
    print(f"  tokenizer       {info['tokenizer']} ({info['vocab_size']} tokens), "
          f"chat template: {'yes' if info['chat_template'] else 'no'}")
    print(f"  context length  {info['context_length']}")
    print("  tensor types")
    for k, v in info["tensor_types"].items():
        print(f"    {k:<10} {v['tensors']:>5} tensors  {v['parameters'] / 1e6:8.2f}M params")
    return 0
