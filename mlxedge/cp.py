"""`mlxedge cp SRC DST`: a second name for a model (no copy of its blobs)."""

from __future__ import annotations

import argparse

from . import store


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="an existing model name")
    p.add_argument("dst", help="the new name")


def main(args: argparse.Namespace) -> int:
    m = store.cp(args.src, args.dst)
    print(f"copied {store.names.canonical(args.src)} to {m['name']}")
    return 0
