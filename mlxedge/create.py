"""`mlxedge create NAME -f Modelfile`: a model from FROM + PARAMETER / SYSTEM / TEMPLATE (docs/store.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import store
from .errors import MlxEdgeError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the new model's name")
    p.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (`-` reads stdin; default ./Modelfile)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress")


def main(args: argparse.Namespace) -> int:
    if args.file == "-":
        text, base = sys.stdin.read(), Path.cwd()
    else:
        path = Path(args.file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MlxEdgeError(f"cannot read the Modelfile {path}: {getattr(e, 'strerror', None) or e}") from None
        base = path.resolve().parent
    m = store.create(args.name, text, base_dir=base, quiet=args.quiet)
    print(f"created {m['name']} ({m['id'][:12]})")
    return 0
