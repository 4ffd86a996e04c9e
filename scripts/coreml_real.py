"""Export the real models to Core ML and check the saved package on Linux (issue 13).

    python scripts/coreml_real.py smollm2|gemma3 [--precision float16] [--context 512] [--tokens 256]

For the model converted with `keep` (mlxedge.modelcache): the export's wall time and peak RSS
(measured in a child process), the package size against the bundle's weights, the weight report's
worst relative error, then the saved package run by tests/mil_interp.py on `--tokens` tokens of
real text (mlxedge.texts.evaluation_text) against the NumPy backend: mean KL, top-1 agreement, max
|Δ logit|, and 16 greedy tokens decoded through the state vs the NumPy backend's.
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mlxedge import assets, modelcache, texts  # noqa: E402
from mlxedge.backends import numpy as numpy_backend  # noqa: E402
from mlxedge.tokenizer import load_tokenizer  # noqa: E402

GGUF = {"smollm2": assets.smollm2_gguf, "gemma3": assets.gemma3_gguf}


def export_child(bundle: Path, out: Path, precision: str, context: int) -> dict:
    code = ("import resource, sys, time; from mlxedge.export import export; t = time.time(); "
            f"export({str(bundle)!r}, {str(out)!r}, context={context}, compute_precision={precision!r}, quiet=True); "
            "print(time.time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    secs, rss = r.stdout.split()[-2:]
    return {"export_s": round(float(secs), 1), "peak_rss_mb": round(int(rss) / 1024)}


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(GGUF))
    ap.add_argument("--precision", default="float16")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    import mil_interp
    bundle = modelcache.resolve(GGUF[a.model](), quiet=True)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "model.mlpackage"
        res = {"model": a.model, "precision": a.precision, "context": a.context, **export_child(bundle, out, a.precision, a.context)}
        info = json.loads((out.parent / "mlxedge.json").read_text())
        res["package_mb"] = round(info["package_bytes"] / 1e6, 1)
        res["bundle_weights_mb"] = round(info["bundle_weight_bytes"] / 1e6, 1)
        worst = max(info["weights"], key=lambda r: r["max_abs_err"] / max(r["bound"], 1e-30))
        res["worst_weight"] = {k: worst[k] for k in ("name", "form", "offset_dtype", "max_abs_err", "bound")}
        res["offset_dtypes"] = sorted({str(r["offset_dtype"]) for r in info["weights"]})
        res["forms"] = dict(Counter(r["form"] for r in info["weights"]))
        tok = load_tokenizer(bundle)
        ids = np.array(tok.encode(texts.evaluation_text())[: a.tokens], np.int32)
        model = numpy_backend.load(bundle, mode="float32")
        t = time.time()
        ref = model.forward(ids)
        prog = mil_interp.Program(out)
        got = prog(input_ids=ids[None], position_offset=np.array([0], np.int32))["logits"][0]
        res["interp_prefill_s"] = round(time.time() - t, 1)
        lp, lq = log_softmax(ref), log_softmax(got)
        res["mean_kl"] = float(np.mean(np.sum(np.exp(lp) * (lp - lq), -1)))
        res["top1_agree"] = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
        res["max_abs_dlogit"] = float(np.abs(ref - got).max())
        res["finite"] = bool(np.isfinite(got).all())
        prompt = ids[:32]
        prog.reset()
        cache = model.make_cache()
        gaps = []  # the NumPy backend's top-1 minus top-2 logit at each step
        first = model.forward(prompt, cache)[-1]
        a_ids = [int(first.argmax())]
        gaps.append(float(np.diff(np.sort(first)[-2:])[0]))
        b_ids = [int(prog(input_ids=prompt[None], position_offset=np.array([0], np.int32))["logits"][0, -1].argmax())]
        for i in range(15):
            row = model.forward(np.array([a_ids[-1]]), cache)[-1]
            a_ids.append(int(row.argmax()))
            gaps.append(float(np.diff(np.sort(row)[-2:])[0]))
            step = prog(input_ids=np.array([[b_ids[-1]]], np.int32), position_offset=np.array([32 + i], np.int32))
            b_ids.append(int(step["logits"][0, -1].argmax()))
        res["greedy16_identical"] = a_ids == b_ids
        split = next((i for i, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), None)
        res["first_divergence"] = split
        res["numpy_top2_gap_there"] = None if split is None else gaps[split]
        res["greedy_numpy"], res["greedy_coreml"] = a_ids, b_ids
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
