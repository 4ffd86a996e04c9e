"""`mlxedge rm NAME... | --cache`: remove names (or the cached `.gguf` conversions); blobs nothing else uses go."""

from __future__ import annotations

import argparse

from . import store
from .errors import MlxEdgeError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="model names")
    p.add_argument("--cache", action="store_true",
                   help="also drop every cached conversion of a .gguf loaded by path (`mlxedge list --cache`)")


def main(args: argparse.Namespace) -> int:
    if not args.names and not args.cache:
        raise MlxEdgeError("name a model to remove (`mlxedge list`), or pass --cache")
    if args.cache:
        entries, blobs = store.cache.clear()
        print(f"deleted {entries} cached conversions ({blobs} blobs freed)")
    for name in args.names:
        gone = store.rm(name)
        print(f"deleted {store.names.canonical(name)} ({len(gone)} blobs freed)")
    return 0
