"""`mlxedge show NAME [--modelfile] [--json]`: what a stored model is and how it was made."""

from __future__ import annotations

import argparse
import json

from . import store


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a model name (see `mlxedge list`)")
    p.add_argument("--modelfile", action="store_true", help="print it as a Modelfile")
    p.add_argument("--json", action="store_true", help="one JSON object")


def main(args: argparse.Namespace) -> int:
    if args.modelfile:
        print(store.show_modelfile(args.name), end="")
        return 0
    info = store.show(args.name)
    if args.json:
        print(json.dumps(info))
        return 0
    src = info["source"] or {}
    lines = [("name", info["name"]), ("id", info["id"][:12]), ("architecture", info.get("architecture")),
             ("parameters", f"{info['parameter_count'] / 1e6:.2f}M" if info.get("parameter_count") else None),
             ("context length", info.get("context_length")), ("quantization", info.get("quantization")),
             ("bits/weight", info.get("bits_per_weight")), ("chat template", "yes" if info.get("chat_template")
                                                            or info.get("template") else "no"),
             ("source", f"{src.get('kind')} {src.get('ref')}"), ("source sha256", src.get("sha256")),
             ("converted by", f"mlxedge {info.get('mlxedge_version')}")]
    if info.get("from"):
        lines.append(("from", info["from"]))
    lines += [(f"parameter {k}", v) for k, v in info["parameters"].items()]
    if info.get("system"):
        lines.append(("system", info["system"]))
    if info.get("template"):
        lines.append(("template", info["template"][:80] + ("..." if len(info["template"]) > 80 else "")))
    for key, value in lines:
        print(f"  {key:<18} {value}")
    return 0
