"""`mlxedge convert SRC -o OUT [--quant RECIPE]`: any supported source -> an mlx-lm bundle.

This module resolves a recipe name (recipes.get, or the calibrated `bpwX` from planner) and runs
the pipeline (pipeline.py): read -> rename and fix conventions -> quantize or repack -> write.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from . import planner
from .formats import Source, open_source
from .formats.bundle import read_config
from .pipeline import convert_source
from .errors import MlxEdgeError
from .quant import lowbit, recipes
from .quant.recipes import Recipe
from .safetensors import stats

__all__ = ["convert", "open_source", "resolve_recipe"]


def resolve_recipe(quant: str | Recipe | Callable, source: Source, show_progress: bool = True,
                   **options) -> Recipe:
    """A finished Recipe for `quant`: a recipe name (bpwX calibrates `source`), a Recipe, or a bare
    rule function (name, shape, src_type) -> Target."""
    if isinstance(quant, Recipe):
        return quant
    if not isinstance(quant, str):
        return Recipe(getattr(quant, "__name__", "custom"), quant)
    target = recipes.bpw_target(quant)
    if target is not None:
        r = planner.target_bpw(source, target, show_progress=show_progress, **options)
        return Recipe(quant, r.rule, r.quantize, r.info)
    return recipes.get(quant, source=source, show_progress=show_progress, **options)


def convert(src: str | Path | Source, out: str | Path, quant: str | Recipe = "keep",
            force: bool = False, show_progress: bool = True, exact: bool = False, tau: float | None = None,
            **recipe_options) -> Path:
    """Convert `src` into the bundle directory `out`; returns `out`.

    `quant` is a recipe name (keep, f16, bf16, f32, q4, q8, mixed_3_6, q4_k_m, bpw3.5, ...) or a
    Recipe; `recipe_options` go to recipes built from the source (e.g. calib=, seed= for bpwX).
    `exact=True`: what `keep` carries over stays bit-exact (float32 K-quant scales, 8-bit for
    types MLX cannot express) instead of the compact forms (docs/gguf.md); `tau` replaces lowbit's
    criterion (the compact forms' error at most tau x the source's own rounding error).
    """
    source = src if isinstance(src, Source) else open_source(src)
    recipe = resolve_recipe(quant, source, show_progress, **recipe_options)
    return convert_source(source, out, recipe, force=force, show_progress=show_progress, exact=exact,
                          tau=lowbit.TAU if tau is None else tau)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a .gguf file (or first split), an ONNX export, an HF checkpoint or a bundle")
    p.add_argument("-o", "--out", required=True, help="output bundle directory")
    p.add_argument("--quant", default="keep", help=f"recipe: {', '.join(recipes.names())} (default keep)")
    p.add_argument("--target-bpw", type=float, default=None, metavar="X",
                   help="allocate bits per tensor from calibration to at most X bits per weight "
                        "(same as --quant bpwX)")
    p.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration text for --target-bpw (default: installed package documentation)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing calibration windows (default 0)")
    p.add_argument("--exact", action="store_true",
                   help="keep GGUF quantizations bit-exact: float32 K-quant scales, 8-bit for Q2_K/Q3_K/Q6_K/IQ4 "
                        "(default: float16 scales and the smallest MLX form within 0.1x the source's own "
                        "rounding error, docs/gguf.md)")
    p.add_argument("--tau", type=float, default=None, metavar="T",
                   help=f"the compact forms' error bound, as a fraction of the source's own rounding error "
                        f"(default {lowbit.TAU}; lower for a model that magnifies small errors, docs/gguf.md)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    quant, options = args.quant, {}
    if args.target_bpw is not None:
        quant, options = f"bpw{args.target_bpw:g}", {"calib": args.calib, "seed": args.seed}
    if args.tau is not None and not 0 < args.tau <= 1:
        raise MlxEdgeError(f"--tau must be in (0, 1], not {args.tau}")
    out = convert(args.src, args.out, quant=quant, force=args.force, show_progress=not args.quiet,
                  exact=args.exact, tau=args.tau, **options)
    meta = json.loads((out / "mlxedge.json").read_text())
    weights = stats(out, read_config(out).get("quantization") or {})  # the numbers inspect reports
    summary = {"out": str(out), "recipe": meta["recipe"], "parameters": weights["parameters"],
               "bits_per_weight": round(weights["bits_per_weight"], 4), "size_bytes": weights["size_bytes"],
               "bundle_bytes": sum(p.stat().st_size for p in out.iterdir())}
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(f"wrote {out}: {summary['parameters'] / 1e6:.1f}M parameters, "
              f"{summary['bits_per_weight']:.2f} bits/weight, weights {summary['size_bytes'] / 1e6:.1f} MB "
              f"(bundle {summary['bundle_bytes'] / 1e6:.1f} MB)")
    return 0
