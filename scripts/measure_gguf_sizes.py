#!/usr/bin/env python3
"""The docs/gguf.md size/KL table: bundle weights / GGUF size and mean KL vs the exact dequantization.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/measure_gguf_sizes.py [--only gemma3-q2_k,...]

Models: SmolLM2 Q4_1 and Gemma 3 Q4_K_M (mlxedge.assets), and the requantizations that
scripts/make_requantized.py writes into out/requant/ (skipped when absent). Per model, every form
is evaluated with `mlxedge.eval.evaluate` on the default evaluation text against one reference,
the exact dequantization: `--quant f32` (gguf-py's float32 values of every tensor); forms:

  default  `mlxedge convert` (float16 K-quant scales, lowbit's smallest forms)
  exact    `mlxedge convert --exact` (bit-exact where MLX can, 8-bit group 32 elsewhere)
  tauX     the default with lowbit's criterion at TAU = X instead of lowbit.TAU
  scales   the default's float16 K-quant scales alone (8-bit for the other types, as --exact)
  lowbit   the default's lowbit forms alone (float32 K-quant scales, as --exact)
  f16      `--quant f16`: the exact values rounded to float16
  mlx      KL(NumPy backend || mlx-lm) on the same `--exact` bundle: the evaluation's noise floor,
           one model on two backends (mlx-lm computes in the model's float16/bfloat16)

Prints one JSON line per (model, form) and the markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
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


@contextlib.contextmanager
def _only(form: str):
    """`scales` / `lowbit`: the default conversion with the other of its two changes switched off."""
    from mlxedge import pipeline

    saved = pipeline._narrow_scales, pipeline.lowbit.supported
    if form == "scales":
        pipeline.lowbit.supported = lambda src_type: False
    elif form == "lowbit":
        pipeline._narrow_scales = lambda *args: None
    try:
        yield
    finally:
        pipeline._narrow_scales, pipeline.lowbit.supported = saved


def _mlx_row(name: str, gguf_size: int, bundle: Path, ref, t0: float) -> dict:
    """KL(NumPy backend || mlx-lm) on the exact bundle, scored as mlxedge.eval.score does."""
    import mlx.core as mx
    import mlx_lm
    import numpy as np

    from mlxedge.metrics import kl_rows, log_softmax

    model, _ = mlx_lm.load(str(bundle))
    kl, agree = [], []
    for ids, want in zip(ref.chunks, ref.logprobs):
        logits = np.array(model(mx.array(np.asarray(ids))[None])[0].astype(mx.float32))[:-1]
        got = log_softmax(logits)
        kl.append(kl_rows(want, got))
        agree.append(want.argmax(-1) == got.argmax(-1))
    kl = np.maximum(np.concatenate(kl), 0.0)
    return {"model": name, "form": "mlx", "gguf_bytes": gguf_size, "weights_bytes": 0, "ratio": 0.0,
            "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "top1": float(np.concatenate(agree).mean()), "tokens": int(kl.size), "chosen": {},
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    from mlxedge import texts
    from mlxedge.convert import convert
    from mlxedge.eval import Reference, context_length, evaluate, text_chunks
    from mlxedge.formats.bundle import read_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--forms", default="exact,default,scales,lowbit,f16,mlx")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, gguf in models().items():
            if args.only and name not in args.only.split(","):
                continue
            gguf_size = gguf.stat().st_size
            exact = convert(gguf, Path(tmp) / f"{name}-exact", exact=True, show_progress=False)
            dense = convert(gguf, Path(tmp) / f"{name}-f32", quant="f32", show_progress=False)
            chunks = text_chunks(exact, texts.evaluation_text(), context_length(read_config(exact), None))
            ref = Reference.build(dense, chunks)
            for form in args.forms.split(","):
                t0 = time.time()
                if form == "mlx":  # against the NumPy backend on the same bundle, not against `ref`
                    rows.append(_mlx_row(name, gguf_size, exact, Reference.build(exact, chunks), t0))
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                if form == "exact":
                    out = exact
                else:
                    quant = "f16" if form == "f16" else "keep"
                    with _only(form):
                        tau = float(form[3:]) if form.startswith("tau") else None  # convert --tau
                        out = convert(gguf, Path(tmp) / f"{name}-{form}", quant=quant, show_progress=False, tau=tau)
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
