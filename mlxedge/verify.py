"""`mlxedge verify [NAME]`: re-hash the blobs of one model or of all; exit 1 if any is damaged."""

from __future__ import annotations

import argparse

from . import store
from .errors import MlxEdgeError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None, help="a model name (default: every model)")


def main(args: argparse.Namespace) -> int:
    problems = store.verify(args.name)
    for p in problems:
        print(f"{p['model']}: {p['file']} ({p['blob'][:19]}) {p['problem']}")
    if problems:
        raise MlxEdgeError(f"{len(problems)} damaged file(s); remove the model(s) and pull again")
    print("ok: every blob matches its sha256")
    return 0
