"""`mlxedge pull SOURCE [--as NAME:TAG] [--quant RECIPE]`: add a model to the store (see docs/store.md)."""

from __future__ import annotations

import argparse

from . import store
from .quant import recipes


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a .gguf / ONNX export / HF checkpoint / bundle, a catalogue name "
                                  f"({', '.join(store.catalogue.CATALOGUE)}) or hf.co/OWNER/REPO:QUANT")
    p.add_argument("--as", dest="name", default=None, metavar="NAME:TAG", help="store it under this name")
    p.add_argument("--quant", default="keep", help=f"recipe: {', '.join(recipes.names())} (default keep)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress")


def main(args: argparse.Namespace) -> int:
    m = store.pull(args.source, name=args.name, quant=args.quant, quiet=args.quiet)
    if not args.quiet:
        size = sum(f["size"] for f in m["files"].values())
        print(f"{m['name']}  {m['id'][:12]}  {size / 1e6:.1f} MB")
    return 0
