"""Decode speed of the NumPy backend's weight modes against the memory-bandwidth bound.

    OPENBLAS_NUM_THREADS=1 MLXEDGE_HOME=/tmp/mlxedge-home python scripts/bench_numpy_modes.py [--tokens 16]

For SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M (mlxedge.assets), each mode loads in a fresh process
and greedily decodes --tokens tokens after a short prompt. Bytes read per token are the weights
every decode step streams (all matrices plus the output head, as each mode holds them: float32
4 B, float16 2 B, lean the packed words + scales + biases); the bound is those bytes divided by
the measured memcpy bandwidth (bytes read + written per CPU second, 256 MB arrays). Decode speed
is given per wall second and per CPU second of the process (near what one uncontended core does,
on a shared box); "of bound" compares the CPU-second figures. Prints a Markdown table (docs/benchmarks.md) and one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mlxedge import assets, modelcache, safetensors
from mlxedge.backends.numpy import load
from mlxedge.backends.numpy.weights import MODES, bundle_files
from mlxedge.tokenizer import Tokenizer

PROMPT = "The capital of France is"
MODELS = {"SmolLM2-135M Q4_1": assets.smollm2_gguf, "Gemma 3 270M Q4_K_M": assets.gemma3_gguf}


def memcpy_bandwidth(nbytes: int = 256 << 20) -> tuple[float, float]:
    """Bytes read + written per wall second and per CPU second by np.copyto over `nbytes` arrays
    (best of 5 each)."""
    a, b = np.ones(nbytes // 4, np.float32), np.empty(nbytes // 4, np.float32)
    wall = cpu = float("inf")
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        np.copyto(b, a)
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return 2 * nbytes / wall, 2 * nbytes / cpu


def bytes_per_token(directory: Path, config: dict) -> dict[str, int]:
    """Weight bytes one decode step reads, per mode: every matrix but an untied embedding table."""
    tensors = {k: t for f in bundle_files(directory) for k, t in safetensors.scan(f).items()}
    tied = "lm_head.weight" not in tensors
    params, packed = 0, 0
    for name, t in tensors.items():
        prefix = name[: -len(".weight")]
        if not name.endswith(".weight") or len(t.shape) != 2 or ("embed_tokens" in prefix and not tied):
            continue
        parts = [name] + [f"{prefix}.{p}" for p in ("scales", "biases") if f"{prefix}.{p}" in tensors]
        packed += sum(tensors[p].nbytes for p in parts)
        bits = _bits(config, prefix) if len(parts) > 1 else None
        params += t.shape[0] * (t.shape[1] * 32 // bits if bits else t.shape[1])
    return {"float32": 4 * params, "float16": 2 * params, "lean": packed}


def _bits(config: dict, prefix: str) -> int:
    return safetensors.quant_spec(config.get("quantization") or {}, prefix)[0]


def peak_rss() -> int:
    """VmHWM: unlike ru_maxrss it starts afresh at exec, so it is this run's alone."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_one(directory: Path, mode: str, tokens: int) -> dict:
    """Load in `mode`, prefill PROMPT, decode `tokens` greedily: speeds, peak RSS, the tokens."""
    t0 = time.perf_counter()
    m = load(directory, mode=mode)
    load_s = time.perf_counter() - t0
    ids = Tokenizer(directory).encode(PROMPT)
    cache = m.make_cache()
    t0 = time.perf_counter()
    logits = m.forward(np.array(ids), cache, last_only=True)
    prefill_s = time.perf_counter() - t0
    out = [int(logits[-1].argmax())]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(tokens - 1):
        out.append(int(m.forward(np.array(out[-1:]), cache, last_only=True)[-1].argmax()))
    decode_s, decode_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": m.weight_mode, "load_s": round(load_s, 2), "prefill_tps": round(len(ids) / prefill_s, 1),
            "decode_tps": round((tokens - 1) / decode_s, 2),
            "decode_tps_cpu": round((tokens - 1) / decode_cpu, 2), "peak_rss_gb": round(peak_rss() / 1e9, 3),
            "tokens": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--one", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), args.one[1], args.tokens)))
        return 0
    bw_wall, bw = memcpy_bandwidth()
    print(f"memcpy bandwidth: {bw / 1e9:.1f} GB/s per CPU second, {bw_wall / 1e9:.1f} per wall second "
          f"(read + write); OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; load average {os.getloadavg()[0]:.1f}")
    rows = []
    for label, gguf in MODELS.items():
        directory = modelcache.resolve(gguf(), quiet=True)
        config = json.loads((directory / "config.json").read_text())
        need = bytes_per_token(directory, config)
        ref = None
        for mode in MODES:
            proc = subprocess.run([sys.executable, __file__, "--tokens", str(args.tokens), "--one",
                                   str(directory), mode], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = r["tokens"] if ref is None else ref
            bound = bw / need[mode]
            print(json.dumps({"model": label, **r, "bytes_per_token": need[mode], "bound_tps": round(bound, 1)}))
            rows.append(f"| {label} | {mode} | {need[mode] / 1e6:.0f} | {bound:.0f} | {r['decode_tps']:.1f} | "
                        f"{r['decode_tps_cpu']:.1f} | {100 * r['decode_tps_cpu'] / bound:.0f}% | {r['prefill_tps']:.0f} | "
                        f"{r['peak_rss_gb']:.2f} | "
                        f"{'yes' if r['tokens'] == ref else 'NO'} |")
    print("\n| model | mode | MB read/token | bound tok/s | decode tok/s | per CPU s | of bound | prefill tok/s "
          "| peak RSS GB | same tokens as float32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
