"""`mlxedge inspect PATH`: what a GGUF file or a converted bundle holds."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from .errors import MlxEdgeError


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


def _inspect_gguf(path: Path) -> dict:
    from .formats.gguf import open_gguf, split_paths

    meta, tensors = open_gguf(path)
    arch = meta.get("general.architecture", "?")
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
    from .formats.bundle import read_config, read_weights

    config = read_config(path)
    weights = read_weights(path)
    q = config.get("quantization") or {}
    hist: Counter = Counter()
    counts: Counter = Counter()
    params = 0
    for name, arr in weights.items():
        if name.endswith((".scales", ".biases")):
            continue
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        if base and f"{base}.scales" in weights:
            spec = q.get(base) if isinstance(q.get(base), dict) else q
            n = arr.shape[-1] * 32 // spec["bits"] * (arr.size // arr.shape[-1])
            kind = f"affine{spec['bits']}g{spec['group_size']}"
        else:
            n, kind = arr.size, str(arr.dtype)
        hist[kind] += n
        counts[kind] += 1
        params += n
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    meta_path = path / "mlxedge.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    tok_kind = None
    tok_path = path / "tokenizer.json"
    if tok_path.exists():
        tok_kind = json.loads(tok_path.read_text()).get("model", {}).get("type")
    tcfg = path / "tokenizer_config.json"
    return {
        "path": str(path), "format": "mlx", "architecture": config.get("model_type"),
        "parameters": params, "tensor_count": len(weights),
        "tensor_types": {k: {"tensors": counts[k], "parameters": v} for k, v in hist.most_common()},
        "bits_per_weight": round(size * 8 / max(params, 1), 4),
        "size_bytes": size,
        "tokenizer": tok_kind,
        "vocab_size": config.get("vocab_size"),
        "context_length": config.get("max_position_embeddings"),
        "chat_template": tcfg.exists() and "chat_template" in json.loads(tcfg.read_text()),
        "source": meta.get("source", {}).get("path"), "recipe": meta.get("recipe"),
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
