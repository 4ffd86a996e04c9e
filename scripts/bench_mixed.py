"""Mixed precision against mlx-lm's recipes on the real models: results for docs/mixed-precision.md.

    .venv/bin/python scripts/bench_mixed.py [--models smollm2,gemma3] [--out out/bench_mixed]

For each model:
1. the float32 source: `mlxedge convert GGUF --quant f32` (the GGUF dequantized; no full-precision
   original is at hand);
2. `mlx_lm.convert` on that source, as a user runs it: mixed_2_6, mixed_3_4, mixed_3_6 and
   uniform 3- and 4-bit, group 64, in the model's 16-bit dtype (--dtype);
3. mlxedge on the same source: our mixed_*/q3/q4 (same rules), and `--target-bpw B` with B the
   bits per weight each mlx-lm variant reached (so ours is the same size or smaller);
4. every variant evaluated against the source with `mlxedge eval`'s metrics on the held-out
   evaluation text (NumPy's license), through the NumPy backend.
Writes OUT/<model>/results.json and prints a markdown table. Conversions already in OUT are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlxedge import assets, texts  # noqa: E402
from mlxedge.convert import convert, open_source  # noqa: E402
from mlxedge.eval import Reference, evaluate, text_chunks  # noqa: E402

MODELS = {"smollm2": (assets.smollm2_gguf, "float16"), "gemma3": (assets.gemma3_gguf, "bfloat16")}
# name -> mlx_lm.convert arguments
MLX_LM = {
    "mixed_2_6": ["--q-group-size", "64", "--quant-predicate", "mixed_2_6"],
    "mixed_3_4": ["--q-group-size", "64", "--quant-predicate", "mixed_3_4"],
    "mixed_3_6": ["--q-group-size", "64", "--quant-predicate", "mixed_3_6"],
    "q3": ["--q-bits", "3", "--q-group-size", "64"],
    "q4": ["--q-bits", "4", "--q-group-size", "64"],
}


def mlx_lm_convert(src: Path, out: Path, args: list[str], dtype: str) -> None:
    if (out / "config.json").exists():
        return
    cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(src), "--mlx-path", str(out), "-q",
           "--dtype", dtype, *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def ours(src, out: Path, quant: str) -> float:
    """Convert unless done; returns seconds spent."""
    if (out / "mlxedge.json").exists():
        return 0.0
    t = time.time()
    convert(src, out, quant=quant, show_progress=False)
    return time.time() - t


def bench(model: str, root: Path) -> list[dict]:
    locate, dtype = MODELS[model]
    gguf = locate()
    base = root / model
    base.mkdir(parents=True, exist_ok=True)
    src_dir = base / "f32"
    if not (src_dir / "mlxedge.json").exists():
        convert(gguf, src_dir, quant="f32", show_progress=False)
    source = open_source(src_dir)
    t0 = time.time()
    chunks = text_chunks(src_dir, texts.evaluation_text(), 512)
    reference = Reference.build(src_dir, chunks)
    print(f"[{model}] reference: {sum(len(c) - 1 for c in chunks)} tokens, {time.time() - t0:.0f}s", file=sys.stderr)

    rows = []

    def add(name: str, path: Path, group: str, seconds: float = 0.0) -> dict:
        t = time.time()
        r = evaluate(path, reference)
        row = {"model": model, "variant": name, "group": group, "path": str(path), "convert_s": round(seconds, 1),
               "eval_s": round(time.time() - t, 1), **{k: r[k] for k in (
                   "size_bytes", "parameters", "bits_per_weight", "perplexity", "reference_perplexity",
                   "kl_mean", "kl_p99", "top1")}}
        rows.append(row)
        print(f"[{model}] {name}: {row['bits_per_weight']:.3f} bpw, KL {row['kl_mean']:.4f}, "
              f"ppl {row['perplexity']:.3f}", file=sys.stderr)
        return row

    for name, args in MLX_LM.items():
        out = base / f"mlx_lm-{name}"
        t = time.time()
        mlx_lm_convert(src_dir, out, args, dtype)
        theirs = add(f"mlx_lm {name}", out, name, time.time() - t)
        add(f"mlxedge {name}", base / f"mlxedge-{name}", name, ours(source, base / f"mlxedge-{name}", name))
        budget = math.floor(theirs["bits_per_weight"] * 1000) / 1000  # same size or smaller
        out = base / f"mlxedge-bpw{budget:g}"
        add(f"mlxedge --target-bpw {budget:g}", out, name, ours(source, out, f"bpw{budget:g}"))
    out = base / "mlxedge-q4_k_m"
    add("mlxedge q4_k_m", out, "q4_k_m", ours(source, out, "q4_k_m"))
    (base / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | bits/weight | size (MB) | perplexity | KL mean | KL p99 | top-1 | KL vs mlx-lm |",
             "|---|---|---|---|---|---|---|---|---|"]
    theirs = {(r["model"], r["group"]): r["kl_mean"] for r in rows if r["variant"].startswith("mlx_lm")}
    for r in rows:
        ref = theirs.get((r["model"], r["group"]))
        ratio = f"{r['kl_mean'] / ref:.2f}x" if ref and not r["variant"].startswith("mlx_lm") else ""
        lines.append(f"| {r['model']} | {r['variant']} | {r['bits_per_weight']:.3f} | {r['size_bytes'] / 1e6:.1f} | "
                     f"{r['perplexity']:.3f} | {r['kl_mean']:.4f} | {r['kl_p99']:.3f} | {100 * r['top1']:.1f}% | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,gemma3")
    p.add_argument("--out", default=str(ROOT / "out" / "bench_mixed"))
    args = p.parse_args()
    rows = []
    for model in args.models.split(","):
        rows += bench(model.strip(), Path(args.out))
    print(table(rows))
    ref = {r["model"]: r["reference_perplexity"] for r in rows}
    print("\nsource (float32) perplexity: " + ", ".join(f"{m} {v:.3f}" for m, v in ref.items()))


if __name__ == "__main__":
    main()
