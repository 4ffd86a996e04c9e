"""`mlxedge sweep SRC --recipes ... [--target-bpw 3,3.5,4] -o DIR [--max-size SIZE]`: size vs quality.

Converts SRC once per recipe and budget into DIR/<variant>, evaluates every variant against SRC
itself (`mlxedge eval`'s metrics, one reference pass shared by all), and writes DIR/report.md,
DIR/report.json and DIR/pareto.png (size vs mean KL divergence, the Pareto front highlighted;
needs matplotlib, `pip install mlxedge[plot]`, else the plot is skipped with a note). With
--max-size it names the variant with the lowest mean KL that fits.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import modelcache, planner, texts
from .convert import convert, open_source
from .errors import MlxEdgeError
from .eval import Reference, context_length, evaluate, text_chunks, weight_stats
from .formats.bundle import read_config
from .quant.recipes import bpw_target

UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
         "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str) -> int:
    """"120MB" / "1.5G" / "64MiB" / "5000000" -> bytes (K, M, G are decimal; KiB, MiB, GiB binary)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise MlxEdgeError(f"cannot read size {text!r} (e.g. 120MB, 1.5GB, 64MiB)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (size, kl) not beaten by a smaller-or-equal one with lower KL."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return sorted(front)


def variant_names(recipes: list[str], budgets: list[float]) -> list[str]:
    return [*recipes, *(f"bpw{b:g}" for b in budgets)]


def sweep(src: str | Path, out: str | Path, recipes: list[str] = (), budgets: list[float] = (),
          max_size: int | None = None, calib: str | None = None, seed: int = 0, text: str | None = None,
          ctx: int | None = None, force: bool = False, show_progress: bool = False,
          text_name: str | None = None) -> dict:
    """Convert, evaluate and report; returns the report dict (also written to out/report.json)."""
    names = variant_names(list(recipes), list(budgets))
    if not names:
        raise MlxEdgeError("nothing to sweep: give --recipes and/or --target-bpw")
    if len(set(names)) != len(names):
        raise MlxEdgeError("the same variant is listed twice")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = open_source(src)
    reference_dir = _reference_dir(source, out)
    directory = modelcache.resolve(reference_dir, quiet=not show_progress)
    chunks = text_chunks(directory, text if text is not None else texts.evaluation_text(),
                         context_length(read_config(directory), ctx))
    reference = Reference.build(reference_dir, chunks, show_progress)

    rows = []
    analysis = None  # one calibration serves every budget
    for name in names:
        path = out / name
        if _reusable(path, name) and not force:
            print(f"{name}: reusing {path}", file=sys.stderr)
        else:
            quant = name
            if bpw_target(name) is not None:
                analysis = analysis or planner.analyze(source, calib, seed, show_progress=show_progress)
                quant = planner.recipe(analysis, bpw_target(name), show_progress)
            convert(source, path, quant=quant, force=True, show_progress=show_progress)
        result = evaluate(path, reference, show_progress=show_progress)
        rows.append({"name": name, "path": str(path), **{k: result[k] for k in (
            "size_bytes", "parameters", "bits_per_weight", "perplexity", "reference_perplexity",
            "kl_mean", "kl_p99", "top1")}})
    front = pareto_front([(r["size_bytes"], r["kl_mean"]) for r in rows])
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    src_stats = weight_stats(source.path) if Path(source.path).is_dir() or source.format == "gguf" else {}
    report = {"source": str(src), "source_size_bytes": src_stats.get("size_bytes"),
              "source_bits_per_weight": src_stats.get("bits_per_weight"),
              "text": text_name or ("your text" if text is not None
                                    else "numpy LICENSE.txt (mlxedge.texts.evaluation_text)"),
              "tokens": sum(len(c) - 1 for c in chunks), "variants": rows, "max_size_bytes": max_size,
              "best": None}
    if max_size is not None:
        fits = [r for r in rows if r["size_bytes"] <= max_size]
        report["best"] = min(fits, key=lambda r: (r["kl_mean"], r["size_bytes"]))["name"] if fits else None
    report["plot"] = _plot(rows, out / "pareto.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def _reference_dir(source, out: Path) -> Path:
    """What the variants are compared with: the source itself where the NumPy backend can run it."""
    path = Path(source.path)
    if source.format == "gguf" or (path.is_dir() and (path / "config.json").exists()):
        return path
    ref = out / "_reference"
    if not _reusable(ref, "keep"):
        convert(source, ref, quant="keep", force=True, show_progress=False)
    return ref


def _reusable(path: Path, recipe: str) -> bool:
    try:
        return json.loads((path / "mlxedge.json").read_text()).get("recipe") == recipe
    except (OSError, ValueError):
        return False


def _plot(rows: list[dict], path: Path) -> str:
    """Draw size vs mean KL; returns a note saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "pareto.png skipped: matplotlib is not installed (pip install mlxedge[plot])"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["size_bytes"] / 1e6 for r in rows]
    ys = [r["kl_mean"] for r in rows]
    ax.scatter(xs, ys, color="0.6", label="variant")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["size_bytes"])
    ax.plot([r["size_bytes"] / 1e6 for r in front], [r["kl_mean"] for r in front], "o-", color="C3",
            label="Pareto front")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("mean KL divergence vs source")
    if min(ys) > 0:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return "pareto.png written"


def markdown(report: dict) -> str:
    lines = [f"# Sweep of {report['source']}", "",
             f"Evaluated against the source on {report['tokens']} tokens of {report['text']}. "
             "bits/weight = stored bits of all tensors / parameters. * = on the Pareto front "
             "(no smaller variant has a lower mean KL).", "",
             "| variant | size (MB) | bits/weight | perplexity | KL mean | KL p99 | top-1 |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(report["variants"], key=lambda r: r["size_bytes"]):
        lines.append(f"| {r['name']}{' *' if r['pareto'] else ''} | {r['size_bytes'] / 1e6:.2f} | "
                     f"{r['bits_per_weight']:.3f} | {r['perplexity']:.3f} | {r['kl_mean']:.4f} | "
                     f"{r['kl_p99']:.4f} | {100 * r['top1']:.1f}% |")
    if report["variants"]:
        lines += ["", f"Source perplexity: {report['variants'][0]['reference_perplexity']:.3f}."]
    if report["max_size_bytes"] is not None:
        best = report["best"]
        limit = f"{report['max_size_bytes'] / 1e6:.2f} MB"
        lines += ["", f"Best within {limit}: **{best}**." if best else f"No variant fits in {limit}."]
    lines += ["", report["plot"], ""]
    return "\n".join(lines)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="the source model: .gguf, ONNX export, HF checkpoint or bundle")
    p.add_argument("-o", "--out", required=True, help="folder for the variants and the reports")
    p.add_argument("--recipes", default="", help="comma-separated recipes, e.g. q4,mixed_3_6,q4_k_m")
    p.add_argument("--target-bpw", default="", metavar="X,Y,...", help="comma-separated bit budgets, e.g. 3,3.5,4")
    p.add_argument("--max-size", default=None, metavar="SIZE", help="name the best variant within SIZE (e.g. 80MB)")
    p.add_argument("--calib", default=None, metavar="FILE", help="calibration text for the budgets")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing calibration windows (default 0)")
    p.add_argument("--text", default=None, metavar="FILE", help="evaluation text (default: NumPy's license)")
    p.add_argument("--ctx", type=int, default=None, help="tokens per evaluation chunk (default 512)")
    p.add_argument("--force", action="store_true", help="reconvert variants that already exist in OUT")


def main(args: argparse.Namespace) -> int:
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    try:
        budgets = [float(b) for b in args.target_bpw.split(",") if b.strip()]
    except ValueError:
        raise MlxEdgeError(f"--target-bpw takes numbers, e.g. 3,3.5,4 (got {args.target_bpw!r})") from None
    text = None
    if args.text:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MlxEdgeError(f"cannot read --text {args.text}: {e}") from None
    max_size = parse_size(args.max_size) if args.max_size else None
    report = sweep(args.src, args.out, recipes, budgets, max_size, args.calib, args.seed, text, args.ctx,
                   args.force, show_progress=sys.stderr.isatty(), text_name=args.text)
    print(markdown(report))
    return 0
