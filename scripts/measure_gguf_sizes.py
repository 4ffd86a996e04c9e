#!/usr/bin/env python3
"""The docs/gguf.md size/KL table: bundle weights / GGUF size and mean KL vs the exact dequantization.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/measure_gguf_sizes.py [--only gemma3-q2_k,...]

Models: SmolLM2 Q4_1 and Gemma 3 Q4_K_M (mlxedge.assets), and the requantizations that
scripts/make_requantized.py writes into out/requant/ (skipped when absent). Per model, every form
is evaluated with `mlxedge.eval.evaluate` on the default evaluation text against one reference:
the `--exact` bundle (every GGUF tensor bit-exact, or 8-bit where MLX cannot express it exactly),
which for a file with only exactly-repackable types *is* the exact dequantization; forms:

  default  `mlxedge convert` (float16 K-quant scales, lowbit's smallest forms)
  exact    `mlxedge convert --exact` (the reference itself: KL 0 by construction)
  f16      `--quant f16`: the exact values rounded to float16, the noise floor (docs/gguf.md)

Prints one JSON line per (model, form) and the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def models() -> dict[str, Path]:
    from mlxedge import assets

    out = {"smollm2-q4_1": Path(assets.smollm2_gguf()), "gemma3-q4_k_m": Path(assets.gemma3_gguf())}
    for p in sorted((ROOT / "out" / "requant").glob("*.gguf")):
        out[p.stem] = p
    return out


def main() -> None:
    from mlxedge import texts
    from mlxedge.convert import convert
    from mlxedge.eval import Reference, context_length, evaluate, text_chunks
    from mlxedge.formats.bundle import read_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--forms", default="default,f16")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, gguf in models().items():
            if args.only and name not in args.only.split(","):
                continue
            gguf_size = gguf.stat().st_size
            exact = convert(gguf, Path(tmp) / f"{name}-exact", exact=True, show_progress=False)
            chunks = text_chunks(exact, texts.evaluation_text(), context_length(read_config(exact), None))
            ref = Reference.build(exact, chunks)
            for form in args.forms.split(","):
                t0 = time.time()
                if form == "exact":
                    out = exact
                else:
                    quant = "f16" if form == "f16" else "keep"
                    out = convert(gguf, Path(tmp) / f"{name}-{form}", quant=quant, show_progress=False)
                r = evaluate(out, ref)
                meta = json.loads((out / "mlxedge.json").read_text())
                chosen: dict[str, int] = {}
                for rec in meta["tensors"].values():
                    if "err_ratio" in rec:
                        key = f"{rec['source']}->{rec['target']}"
                        chosen[key] = chosen.get(key, 0) + 1
                row = {"model": name, "form": form, "gguf_bytes": gguf_size, "weights_bytes": r["size_bytes"],
                       "ratio": round(r["size_bytes"] / gguf_size, 4), "bits_per_weight": round(r["bits_per_weight"], 4),
                       "kl_mean": r["kl_mean"], "kl_p99": r["kl_p99"], "top1": r["top1"], "tokens": r["tokens"],
                       "chosen": chosen, "seconds": round(time.time() - t0, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("\n| model | form | GGUF MB | weights MB | ratio | mean KL | KL p99 | top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['form']} | {r['gguf_bytes'] / 1e6:.1f} | {r['weights_bytes'] / 1e6:.1f} | "
              f"{r['ratio']:.3f} | {r['kl_mean']:.2e} | {r['kl_p99']:.2e} | {100 * r['top1']:.1f}% |")


if __name__ == "__main__":
    main()
