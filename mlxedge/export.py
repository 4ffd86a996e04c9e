"""`mlxedge export SRC --to coreml -o OUT.mlpackage`: the model as a stateful Core ML package.

The work is in mlxedge/coreml/ (it needs coremltools: `pip install mlxedge[coreml]`); this module
only parses the options. docs/coreml.md describes the package and how to run it from Swift.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os

from .errors import MlxEdgeError

TARGETS = ("coreml",)


def export(src, out, to: str = "coreml", **options):
    """Export `src` (bundle, .gguf, store name) to `out` in format `to`; options as coreml.export.export."""
    if to not in TARGETS:
        raise MlxEdgeError(f"--to {to!r}: choose from {', '.join(TARGETS)}")
    # coremltools warns on import that Core ML's runtime is missing (it is, off Apple platforms)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import coremltools  # noqa: F401  (heavy, optional)
    except ImportError:
        raise MlxEdgeError("exporting to Core ML needs coremltools: pip install 'mlxedge[coreml]'") from None
    quiet = options.get("quiet", False)
    before = os.environ.get("TQDM_DISABLE")
    if quiet:  # coremltools' pass-pipeline progress bars
        os.environ["TQDM_DISABLE"] = "1"
    try:
        return importlib.import_module("mlxedge.coreml.export").export(src, out, **options)
    finally:
        if quiet:
            os.environ.pop("TQDM_DISABLE") if before is None else os.environ.update(TQDM_DISABLE=before)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a converted bundle, a .gguf file, a store name, or an ONNX/HF export (converted with keep)")
    p.add_argument("--to", default="coreml", choices=TARGETS, help="output format (default coreml)")
    p.add_argument("-o", "--out", required=True, help="OUT.mlpackage (tokenizer files and mlxedge.json go beside it)")
    p.add_argument("--context", type=int, default=None,
                   help="maximum context (KV state length); default min(the model's, 4096)")
    p.add_argument("--compute-precision", default="float16", choices=("float16", "float32"),
                   help="what Core ML computes in (default float16; norms stay float32)")
    p.add_argument("--last-only", action="store_true", help="output only the last position's logits")
    p.add_argument("--force", action="store_true", help="replace OUT and the files beside it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    out = export(args.src, args.out, to=args.to, context=args.context,
                 compute_precision=args.compute_precision, last_only=args.last_only,
                 force=args.force, quiet=args.quiet)
    print(out)
    return 0
