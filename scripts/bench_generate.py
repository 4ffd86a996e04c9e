"""Side-by-side generation benchmark: mlxedge (NumPy and MLX backends) against llama.cpp, in one run.

Same prompt (raw text, no chat template, the same token ids everywhere), greedy, 64 new tokens, the
same thread count. Each runtime runs in its own process, `--reps` times, interleaved (rep 1 of every
runtime, then rep 2, ...) so that load from other work on the machine falls on all of them alike;
the table shows medians and the load average seen. Prefill tokens/s is prompt tokens over the time to
the first token; decode tokens/s counts the tokens after the first over the time after it (as
`mlxedge generate` reports). Peak RSS is the process's ru_maxrss (`os.wait4`).

    .venv/bin/python scripts/bench_generate.py --json out/bench_generate.json
    .venv/bin/python scripts/bench_generate.py --models smollm2 --runtimes numpy llama.cpp --reps 5

mlxedge runs as `python -m mlxedge generate --model BUNDLE --backend numpy|mlx --json
--no-chat-template -m 64 -p PROMPT` on a bundle converted once (`mlxedge convert`, recipe keep);
llama.cpp runs in --oracle-python (llama-cpp-python) on the GGUF: `Llama.generate` at temperature 0
on the same token ids; where that Python lacks llama_cpp, llama.cpp's server from the `xllamacpp`
wheel runs in a worker of this Python (one slot, loopback, one /completion request on the token
ids, temperature 0), its own `timings` giving prefill and decode tokens/s. `numpy_blas` is the
NumPy backend with MLXEDGE_MATMUL=numpy (NumPy's BLAS for every product, the kernels before MLAS);
`numpy_int8` with MLXEDGE_MATMUL=onnxruntime-int8 (activations rounded to int8, as llama.cpp's).
Reuses the measuring helpers of bench_convert.py (same folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_convert import DEFAULT_ORACLE, ROOT, machine, model_path, report, run_measured

MODELS = ("smollm2", "gemma3")
RUNTIMES = ("numpy", "numpy_int8", "numpy_blas", "mlx", "llama.cpp")
MATMUL = {"numpy_blas": "numpy", "numpy_int8": "onnxruntime-int8"}  # the NumPy variants' MLXEDGE_MATMUL
PROMPT = ("The old lighthouse keeper climbed the stairs every evening at dusk. He had done it for forty "
          "years, and tonight, as the storm rolled in from the west, he noticed something strange")


def worker_llama_generate(gguf: str, ids_json: str, max_tokens: str, threads: str) -> None:
    """Greedy decoding with llama-cpp-python's own loop (`Llama.generate`, temperature 0)."""
    import llama_cpp

    ids, n_max, n_threads = json.loads(ids_json), int(max_tokens), int(threads)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(gguf, n_ctx=len(ids) + n_max + 8, n_batch=512, n_ubatch=512, n_threads=n_threads,
                          n_threads_batch=n_threads, verbose=False)
    load_s = time.perf_counter() - t0
    tokens: list[int] = []
    start = first = last = time.perf_counter()
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        last = time.perf_counter()
        if not tokens:
            first = last
        tokens.append(tok)
        if tok == llm.token_eos() or len(tokens) >= n_max:
            break
    report({"text": llm.detokenize(tokens).decode("utf-8", "replace"), "load_seconds": round(load_s, 4),
            "prompt_tokens": len(ids), "prompt_tps": len(ids) / (first - start),
            "generation_tokens": len(tokens),
            "generation_tps": (len(tokens) - 1) / (last - first) if len(tokens) > 1 else 0.0,
            "llama_cpp": llama_cpp.__version__})


def worker_xllamacpp(gguf: str, ids_json: str, max_tokens: str, threads: str) -> None:
    """Greedy decoding by llama.cpp's server (xllamacpp) in this process: one /completion request."""
    import socket
    import urllib.request

    import xllamacpp as x

    ids, n_max, n_threads = json.loads(ids_json), int(max_tokens), int(threads)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = x.CommonParams()
    p.model.path, p.n_parallel, p.n_ctx = gguf, 1, len(ids) + n_max + 8
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = n_threads
    p.hostnames, p.port = ["127.0.0.1"], port
    t0 = time.perf_counter()
    server = x.Server(p)  # noqa: F841 — serves until this process exits
    load_s = time.perf_counter() - t0
    body = json.dumps({"prompt": ids, "n_predict": n_max, "temperature": 0, "top_k": 1, "top_p": 1.0,
                       "min_p": 0.0, "repeat_penalty": 1.0, "cache_prompt": False, "stream": False}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    t = out["timings"]
    report({"text": out["content"], "load_seconds": round(load_s, 4), "prompt_tokens": len(ids),
            "prompt_tps": t["prompt_per_second"], "generation_tokens": t["predicted_n"],
            "generation_tps": t["predicted_per_second"], "llama_cpp": f"xllamacpp {x.__version__}"})
    os._exit(0)  # the server's threads keep no state worth a clean shutdown


def ensure_bundle(name: str, gguf: Path, work: Path) -> Path:
    out = work / f"{name}-mlxedge"
    if not (out / "mlxedge.json").exists():
        r = run_measured([sys.executable, "-m", "mlxedge", "convert", str(gguf), "-o", str(out), "--quiet",
                          "--force"], env={"PYTHONPATH": str(ROOT)})
        if r["rc"] != 0:
            raise SystemExit(f"mlxedge convert {gguf} failed: {r.get('error')}")
    return out


def one_run(runtime: str, gguf: Path, bundle: Path, ids: list[int], args: argparse.Namespace) -> dict:
    threads = str(args.threads)
    env = {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    if runtime == "llama.cpp":
        oracle = args.oracle_python if Path(args.oracle_python).exists() else None
        cmd = [oracle or sys.executable, str(Path(__file__).resolve()), "--worker" if oracle else "--xworker",
               str(gguf), json.dumps(ids), str(args.max_tokens), threads]
        return run_measured(cmd, env=env, timeout=args.timeout)
    if runtime in MATMUL:
        env["MLXEDGE_MATMUL"] = MATMUL[runtime]
    cmd = [sys.executable, "-m", "mlxedge", "generate", "--model", str(bundle), "--backend", runtime.split("_")[0],
           "--json",
           "--no-chat-template", "--max-tokens", str(args.max_tokens), "--prompt", PROMPT, "--quiet"]
    return run_measured(cmd, env=env, timeout=args.timeout, stdout_json=True)


def median(runs: list[dict], key: str, in_result: bool = True) -> float | None:
    vals = [(r.get("result", {}) if in_result else r).get(key) for r in runs if r.get("rc") == 0]
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def bench_model(name: str, args: argparse.Namespace) -> dict:
    from mlxedge.tokenizer import Tokenizer

    gguf = model_path(name)
    bundle = ensure_bundle(name, gguf, args.work_dir)
    ids = Tokenizer(bundle).encode(PROMPT)
    runs: dict[str, list[dict]] = {rt: [] for rt in args.runtimes}
    loads = []
    for rep in range(args.reps):
        loads.append(os.getloadavg()[0])
        for rt in args.runtimes:
            r = one_run(rt, gguf, bundle, ids, args)
            runs[rt].append(r)
            res = r.get("result", {})
            print(f"[{name} rep {rep + 1}] {rt}: prefill {res.get('prompt_tps')} decode {res.get('generation_tps')} "
                  f"tok/s, rss {r['peak_rss_mb']} MB {r.get('error', '')}", file=sys.stderr)
    loads.append(os.getloadavg()[0])
    summary = {}
    for rt, rs in runs.items():
        ok = [r for r in rs if r.get("rc") == 0]
        summary[rt] = {"ok_runs": len(ok), "errors": sorted({r["error"] for r in rs if "error" in r}),
                       "prompt_tokens": median(rs, "prompt_tokens"),
                       "generation_tokens": median(rs, "generation_tokens"),
                       "prefill_tps": median(rs, "prompt_tps"), "decode_tps": median(rs, "generation_tps"),
                       "load_s": median(rs, "load_seconds"), "peak_rss_mb": median(rs, "peak_rss_mb", False),
                       "wall_s": median(rs, "wall_s", False),
                       "text": ok[0]["result"].get("text") if ok else None}
    ref = summary.get("llama.cpp", {})
    for rt, s in summary.items():
        for key in ("prefill_tps", "decode_tps", "peak_rss_mb"):
            if s.get(key) and ref.get(key):
                s[f"{key}_vs_llama_cpp"] = round(s[key] / ref[key], 3)
        if s.get("text") is not None and ref.get("text") is not None:
            s["chars_same_as_llama_cpp"] = len(os.path.commonprefix([s["text"], ref["text"]]))
    return {"model": name, "gguf": str(gguf), "bundle": str(bundle), "prompt_tokens": len(ids),
            "load_average_1min": loads, "summary": summary, "runs": runs}


def fmt(x, spec: str = "") -> str:
    return "—" if x is None else format(x, spec)


def table(results: list[dict]) -> str:
    head = ("| model | runtime | prefill tok/s | ×llama.cpp | decode tok/s | ×llama.cpp | peak RSS MB | ×llama.cpp "
            "| load s | tokens out | chars same as llama.cpp | load avg (1 min) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    names = {"numpy": "mlxedge NumPy (MLAS)", "numpy_int8": "mlxedge NumPy (MLAS, int8 activations)",
             "numpy_blas": "mlxedge NumPy (BLAS only)", "mlx": "mlxedge MLX (CPU)",
             "llama.cpp": "llama.cpp"}
    for res in results:
        loads = res["load_average_1min"]
        for rt, s in res["summary"].items():
            status = "" if s["ok_runs"] else f" (fails: {'; '.join(s['errors'])})"
            same = s.get("chars_same_as_llama_cpp")
            lines.append(
                f"| {res['model']} | {names.get(rt, rt)}{status} | {fmt(s['prefill_tps'], '.1f')} "
                f"| {fmt(s.get('prefill_tps_vs_llama_cpp'), '.2f')} | {fmt(s['decode_tps'], '.1f')} "
                f"| {fmt(s.get('decode_tps_vs_llama_cpp'), '.2f')} | {fmt(s['peak_rss_mb'], '.0f')} "
                f"| {fmt(s.get('peak_rss_mb_vs_llama_cpp'), '.2f')} | {fmt(s['load_s'], '.1f')} "
                f"| {fmt(s['generation_tokens'], '.0f')} | {fmt(same)} / {len(s['text'] or '')} "
                f"| {min(loads):.1f}–{max(loads):.1f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_llama_generate(*sys.argv[2:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--xworker":
        worker_xllamacpp(*sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    p.add_argument("--reps", type=int, default=3, help="runs per runtime; the table shows medians (default 3)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads for NumPy, llama.cpp threads (default 1: mlxedge's BLAS default)")
    p.add_argument("--oracle-python", default=DEFAULT_ORACLE, help="a Python with llama-cpp-python")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mlxedge-bench-generate")
    p.add_argument("--timeout", type=float, default=600, help="seconds before one run is killed")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--table-from", type=Path, nargs="+", metavar="JSON",
                   help="print the table of earlier --json runs")
    args = p.parse_args()
    if args.table_from:
        print(table([r for f in args.table_from for r in json.loads(f.read_text())["results"]]))
        return 0
    sys.path.insert(0, str(ROOT))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    results = [bench_model(m, args) for m in args.models]
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "threads": args.threads, "max_tokens": args.max_tokens,
                                         "prompt": PROMPT, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
