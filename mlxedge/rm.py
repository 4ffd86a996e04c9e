"""`mlxedge rm NAME...`: remove names; blobs no other name uses go with them."""

from __future__ import annotations

import argparse

from . import store


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", help="model names")


def main(args: argparse.Namespace) -> int:
    for name in args.names:
        gone = store.rm(name)
        print(f"deleted {store.names.canonical(name)} ({len(gone)} blobs freed)")
    return 0
