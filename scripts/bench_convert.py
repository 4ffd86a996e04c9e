"""Side-by-side GGUF -> MLX conversion benchmark: mlxedge against the peers, in one run.

For each real model (SmolLM2-135M Q4_1, Gemma 3 270M Q4_K_M) it measures wall time and peak RSS
(each tool in its own process, `os.wait4`'s ru_maxrss) of:

- mlxedge:  `python -m mlxedge convert GGUF -o OUT --quiet --force` (recipe `keep`);
- MLX:      `mlx.core.load(GGUF)`, MLX's own GGUF loader (tensors only: GGUF names, no config);
- detour:   transformers' GGUF loader + `save_pretrained` (one row per transformers environment),
            then `mlx_lm.convert(hf, mlx, quantize=True)` (4-bit, group 64): summed time, max RSS;

(`--models 7b`: the 7B-shaped file of scripts/make_7b_gguf.py, time, peak RSS and size only, of
mlxedge and of gguf2mlx's `convert --quant-source preserve`, see `bench_7b`)

and scores each bundle's perplexity on held-out text (`mlxedge.texts.evaluation_text()`, tokenized
by the mlxedge bundle's tokenizer) with mlxedge's NumPy backend, against llama.cpp's perplexity of
the GGUF on the same ids. A peer that fails is recorded with its error, not raised.

    .venv/bin/python scripts/bench_convert.py --json out/bench_convert.json
    .venv/bin/python scripts/bench_convert.py --models smollm2 --hf-python /work/peerenv/bin/python

Environments (flags, with defaults): --hf-python (one or more Pythons with torch, transformers,
gguf, accelerate), --oracle-python (llama-cpp-python). This file imports only the standard library
at the top: the same file runs as a worker (`--worker NAME ...`) under those other Pythons.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2", "gemma3", "7b")
BIG = ROOT / "out" / "7b" / "deepseek-r1-distill-qwen-7b-q4_k_m-tiled.gguf"  # scripts/make_7b_gguf.py
DEFAULT_GGUF2MLX = "/tmp/g2m/bin/gguf2mlx"
RESULT = "@@bench-result "  # prefix of the one stdout line a worker reports on
DEFAULT_HF_PYTHONS = ["/work/peerenv/bin/python", "/work/peerenv4/bin/python"]
DEFAULT_ORACLE = "/work/oracle/bin/python"
WORKER = [sys.executable, str(Path(__file__).resolve()), "--worker"]  # this file as a worker, in this Python


# ---------------------------------------------------------------- measuring a process

def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 900, stdout_json: bool = False) -> dict:
    """Run `cmd`; wall seconds, peak RSS (MB), exit code, the worker's result, an error line.

    The result is the last stdout line that starts with RESULT, or with `stdout_json` the last line.
    The command runs under a small launcher (`--launch`): a child's ru_maxrss starts from its
    parent's at fork/exec, so measured straight from this (large) process it would report ours.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as usage:
        launcher = [sys.executable, "-S", str(Path(__file__).resolve()), "--launch", usage.name, "--", *cmd]
        proc = subprocess.Popen(launcher, stdout=out, stderr=err, env={**os.environ, **(env or {})},
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        measured = json.loads(usage.read() or "{}")
    res = {"wall_s": measured.get("wall_s"), "peak_rss_mb": measured.get("peak_rss_mb"),
           "rc": measured.get("rc", proc.returncode)}
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT)]
    if lines:
        res["result"] = json.loads(lines[-1][len(RESULT):])
    elif stdout_json and res["rc"] == 0 and stdout.strip():
        res["result"] = json.loads(stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        killed = f"killed after the {timeout:g} s timeout" if proc.returncode == -9 else ""
        res["error"] = killed or last_error_line(stderr) or f"exit code {res['rc']}"
    return res


def launch(usage_file: str, cmd: list[str]) -> None:
    """Fork + exec `cmd`, wait4 it, write its wall time, peak RSS and exit code to `usage_file`."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            print(f"cannot run {cmd[0]}: {e}", file=sys.stderr, flush=True)
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    rss_kb = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss  # bytes on macOS
    Path(usage_file).write_text(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(rss_kb / 1024, 1),
                                            "rc": os.waitstatus_to_exitcode(status)}))


def last_error_line(stderr: str) -> str:
    """The line of a traceback that says what went wrong (its last non-progress line)."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else ""


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def report(obj: dict) -> None:
    print(RESULT + json.dumps(obj), flush=True)


# ---------------------------------------------------------------- workers (run under other Pythons)

def worker_mlx_load(gguf: str) -> None:
    import mlx.core as mx

    weights = mx.load(gguf)
    mx.eval(list(weights.values()))
    report({"tensors": len(weights), "mlx": mx.__version__})


def worker_hf_export(gguf: str, out: str) -> None:
    """transformers' GGUF loader (dequantizes to float32) + save_pretrained of model and tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = Path(gguf)
    info: dict = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    try:
        model.save_pretrained(out)
    except ValueError as e:
        # transformers 5 keeps its GGUF quantizer on the model and refuses to save; dropping the
        # quantizer (the weights are already dense float32) is the workaround users post.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is None:
            raise
        info["save_error"] = str(e).split(" - ")[0]
        quantizer.remove_quantization_config(model)
        model.save_pretrained(out)
        info["workaround"] = "model.hf_quantizer.remove_quantization_config(model)"
    tok.save_pretrained(out)
    report(info)


def worker_mlx_lm_convert(hf_dir: str, out: str) -> None:
    import mlx_lm
    from mlx_lm import convert

    convert(hf_dir, out, quantize=True)  # mlx-lm's defaults: 4 bits, group 64
    report({"mlx_lm": mlx_lm.__version__})


def worker_llama_ppl(gguf: str, ids_file: str, threads: str) -> None:
    """llama.cpp's perplexity over the given chunks of ids (each chunk scored from its first token)."""
    import llama_cpp
    import numpy as np

    chunks = json.loads(Path(ids_file).read_text())
    llm = llama_cpp.Llama(gguf, n_ctx=max(map(len, chunks)) + 8, n_batch=512, n_ubatch=512, logits_all=True,
                          n_threads=int(threads), n_threads_batch=int(threads), verbose=False)
    nll, n = 0.0, 0
    for chunk in chunks:
        llm.reset()
        llm.eval(chunk)
        nll += summed_nll(np.asarray(llm.scores[: len(chunk)]), chunk)
        n += len(chunk) - 1
    report({"ppl": float(np.exp(nll / n)), "scored": n, "llama_cpp": llama_cpp.__version__})


def summed_nll(logits, ids: list[int]) -> float:
    """Sum over positions i of -log p(ids[i+1] | ids[..i]) from logits (T, vocab)."""
    import numpy as np

    x = np.asarray(logits[:-1], dtype=np.float64)  # (T-1, vocab)
    m = x.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))  # (T-1,)
    return float((lse - x[np.arange(len(x)), ids[1:]]).sum())


WORKERS = {"mlx-load": worker_mlx_load, "hf-export": worker_hf_export,
           "mlx-lm-convert": worker_mlx_lm_convert, "llama-ppl": worker_llama_ppl}


# ---------------------------------------------------------------- scoring (in this process)

def eval_chunks(bundle: Path, chunk: int) -> list[list[int]]:
    """The evaluation text as token ids of the mlxedge bundle, cut into chunks that each start with BOS."""
    from mlxedge.texts import evaluation_text
    from mlxedge.tokenizer import Tokenizer

    tok = Tokenizer(bundle)
    ids = tok.encode(evaluation_text())
    bos = ids[:1] if ids and tok.bos_token is not None and ids[0] == tok.token_to_id(tok.bos_token) else []
    body = ids[len(bos):]
    step = chunk - len(bos)
    return [bos + body[i:i + step] for i in range(0, len(body), step) if len(body[i:i + step]) > 1]


def numpy_ppl(bundle: Path, chunks: list[list[int]]) -> float:
    import gc
    import math

    from mlxedge.backends import numpy as np_backend

    model = np_backend.load(bundle)
    nll = sum(summed_nll(model.forward(c), c) for c in chunks)
    del model
    gc.collect()
    return math.exp(nll / sum(len(c) - 1 for c in chunks))


def mlx_lm_check(bundle: Path, ids: list[int]) -> dict:
    """Perplexity of `ids` under mlx-lm itself and under our NumPy backend (same bundle, float32)."""
    import math

    import mlx.core as mx
    import numpy as np
    from mlx_lm.utils import load_model

    model, _ = load_model(bundle)
    if not mx.metal.is_available():
        model.set_dtype(mx.float32)  # as mlxedge's MLX backend does on CPU: float16 matmuls crawl there
    logits = np.array(model(mx.array(ids)[None])[0].astype(mx.float32))  # (T, vocab)
    del model
    from mlxedge.backends import numpy as np_backend

    ours = np_backend.load(bundle).forward(ids)
    n = len(ids) - 1
    return {"tokens": len(ids), "mlx_lm_ppl": round(math.exp(summed_nll(logits, ids) / n), 4),
            "numpy_ppl": round(math.exp(summed_nll(ours, ids) / n), 4),
            "max_abs_logit_diff": float(np.abs(logits - ours).max())}


def rope_report(bundle: Path) -> dict:
    """What config.json says about RoPE's base, and what mlx-lm's ModelArgs will use."""
    import importlib

    cfg = json.loads((bundle / "config.json").read_text())
    out = {"rope_theta_in_config": "rope_theta" in cfg, "rope_parameters_in_config": "rope_parameters" in cfg}
    try:
        args = importlib.import_module(f"mlx_lm.models.{cfg['model_type']}").ModelArgs.from_dict(cfg)
        out["mlx_lm_rope_theta"] = getattr(args, "rope_theta", None)
    except Exception as e:  # an mlx-lm without this model, or a config it cannot read
        out["mlx_lm_rope_theta_error"] = str(e)[:200]
    return out


def gguf_rope_base(gguf: Path) -> float | None:
    from gguf import GGUFReader

    r = GGUFReader(str(gguf))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    f = r.fields.get(f"{arch}.rope.freq_base")
    return float(f.parts[-1][0]) if f is not None else None


# ---------------------------------------------------------------- the benchmark

def model_path(name: str) -> Path:
    sys.path.insert(0, str(ROOT))
    from mlxedge import assets

    return {"smollm2": assets.smollm2_gguf, "gemma3": assets.gemma3_gguf}[name]()


def bench_7b(args: argparse.Namespace, work: Path) -> dict:
    """The 7B-shaped file of scripts/make_7b_gguf.py (real DeepSeek-R1-Distill-Qwen-7B Q4_K_M
    header, tiled weights): wall time, peak RSS and size of mlxedge (`keep` by default and with
    --exact) and gguf2mlx (`convert --quant-source preserve`, its mode that keeps the GGUF's
    quantization as `keep` does), one after the other on the same file. No perplexity: the
    weights carry no meaning."""
    gguf = args.gguf_7b
    res: dict = {"model": "7b", "gguf": str(gguf), "load_average_start": os.getloadavg(), "rows": []}
    if not gguf.exists():
        res["error"] = f"{gguf} not found (scripts/make_7b_gguf.py writes it)"
        return res
    res["gguf_bytes"] = gguf.stat().st_size
    runs = [(f"mlxedge convert {'--exact' if mode == 'exact' else '(keep)'}",
             [sys.executable, "-m", "mlxedge", "convert", str(gguf), "-o", "{out}", "--quiet", "--force",
              *(["--exact"] if mode == "exact" else [])], {"PYTHONPATH": str(ROOT)}) for mode in args.mlxedge_7b]
    runs.append(("gguf2mlx convert --quant-source preserve",
                 [args.gguf2mlx, "convert", "--input", str(gguf), "--output", "{out}", "--quant-source", "preserve"],
                 {}))
    for tool, cmd, env in runs:
        out = work / "7b-out"
        shutil.rmtree(out, ignore_errors=True)
        if not Path(cmd[0]).exists():
            res["rows"].append({"tool": tool, "rc": None, "error": f"{cmd[0]} not found"})
            continue
        r = run_measured([c.replace("{out}", str(out)) for c in cmd], env=env, timeout=args.timeout_7b)
        row = {"tool": tool, **r}
        if r["rc"] == 0:
            row["out_bytes"] = dir_bytes(out)
            row["size_vs_gguf"] = round(row["out_bytes"] / res["gguf_bytes"], 3)
        res["rows"].append(row)
        shutil.rmtree(out, ignore_errors=True)
        print(f"[7b] {tool}: {row.get('wall_s')} s, {row.get('peak_rss_mb')} MB, {row.get('error', 'ok')}",
              file=sys.stderr)
    base = res["rows"][0]
    for row in res["rows"]:
        if base.get("rc") == 0 and row.get("rc") == 0:
            row["time_vs_mlxedge"] = round(row["wall_s"] / base["wall_s"], 2)
            row["rss_vs_mlxedge"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 2)
    res["load_average_end"] = os.getloadavg()
    return res


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    """All tools on one model: timings, sizes, then perplexity of every bundle against llama.cpp's."""
    if name == "7b":
        return bench_7b(args, work)
    gguf = model_path(name)
    rows: list[dict] = []
    res: dict = {"model": name, "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size,
                 "gguf_rope_freq_base": gguf_rope_base(gguf), "load_average_start": os.getloadavg(), "rows": rows}
    print(f"[{name}] load average {res['load_average_start']}", file=sys.stderr)

    ours = work / f"{name}-mlxedge"
    r = run_measured([sys.executable, "-m", "mlxedge", "convert", str(gguf), "-o", str(ours), "--quiet", "--force"],
                     env={"PYTHONPATH": str(ROOT)})
    rows.append({"tool": "mlxedge convert (keep)", "bundle": str(ours), **r})
    chunks = eval_chunks(ours, args.chunk) if r["rc"] == 0 else []
    rows.append({"tool": "mlx.core.load (tensors only)", **run_measured(WORKER + ["mlx-load", str(gguf)])})
    for py in args.hf_python:
        rows.append(bench_detour(name, gguf, py, work, chunks, args.keep))
    for row in rows:
        print(f"[{name}] {row['tool']}: {row.get('wall_s')} s, {row.get('error', 'ok')}", file=sys.stderr)

    if chunks:  # quality: the same ids through every bundle (NumPy backend) and through llama.cpp (the GGUF)
        ids_file = work / f"{name}-ids.json"
        ids_file.write_text(json.dumps(chunks))
        res["llama_cpp"] = run_measured([args.oracle_python, *WORKER[1:], "llama-ppl", str(gguf), str(ids_file),
                                         str(args.threads)])
        res["eval_tokens_scored"] = sum(len(c) - 1 for c in chunks)
        for row in rows:
            if row.get("rc") == 0 and "bundle" in row:
                score(row, Path(row["bundle"]), chunks, res, args.mlx_lm_check)
                print(f"[{name}] {row['tool']}: ppl {row.get('ppl')} {row.get('mlx_lm_check', '')}", file=sys.stderr)
    base = rows[0]
    for row in rows:
        if base.get("rc") == 0 and row.get("rc") == 0:
            row["time_vs_mlxedge"] = round(row["wall_s"] / base["wall_s"], 2)
            row["rss_vs_mlxedge"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 2)
    res["load_average_end"] = os.getloadavg()
    if not args.keep:
        for row in rows[1:]:
            if "bundle" in row:
                shutil.rmtree(row["bundle"], ignore_errors=True)
    return res


def bench_detour(name: str, gguf: Path, py: str, work: Path, chunks: list[list[int]], keep: bool) -> dict:
    """transformers (in Python `py`) exports float32 safetensors, then mlx_lm.convert quantizes them."""
    if not Path(py).exists():
        return {"tool": f"transformers ({py}) + mlx_lm.convert", "rc": None, "error": f"{py} not found"}
    tag = Path(py).parents[1].name
    hf_dir, mlx_dir = work / f"{name}-hf-{tag}", work / f"{name}-mlxlm-{tag}"
    for d in (hf_dir, mlx_dir):
        shutil.rmtree(d, ignore_errors=True)
    step1 = run_measured([py, *WORKER[1:], "hf-export", str(gguf), str(hf_dir)])
    version = step1.get("result", {}).get("transformers", "?")
    row = {"tool": f"transformers {version} + mlx_lm.convert", "env": py, "hf_export": step1, "rc": step1["rc"]}
    if step1["rc"] == 0:
        row["hf_bytes"] = dir_bytes(hf_dir)
        row["hf_rope"] = rope_report(hf_dir)
        step2 = run_measured(WORKER + ["mlx-lm-convert", str(hf_dir), str(mlx_dir)])
        row.update(mlx_lm_convert=step2, rc=step2["rc"], bundle=str(mlx_dir))
        if step2["rc"] != 0:
            row["error"] = "mlx_lm.convert: " + step2.get("error", "")
        if chunks:
            # the float32 export before mlx-lm re-quantizes it: tells the two steps' effects apart
            try:
                row["hf_ppl"] = round(numpy_ppl(hf_dir, chunks), 4)
            except Exception as e:
                row["hf_ppl_error"] = f"{type(e).__name__}: {e}"[:300]
    else:
        row["error"] = "transformers: " + step1.get("error", "")
    steps = [step1, row.get("mlx_lm_convert", {})]
    row["wall_s"] = round(sum(st.get("wall_s") or 0 for st in steps), 2)
    row["peak_rss_mb"] = max(st.get("peak_rss_mb") or 0 for st in steps)
    if not keep:
        shutil.rmtree(hf_dir, ignore_errors=True)
    return row


def score(row: dict, bundle: Path, chunks: list[list[int]], res: dict, mlx_check: int) -> None:
    """Size, RoPE base, tokenizer agreement and perplexity of one bundle, into `row`."""
    row["out_bytes"] = dir_bytes(bundle)
    row["size_vs_gguf"] = round(row["out_bytes"] / res["gguf_bytes"], 3)
    row["rope"] = rope_report(bundle)
    row["same_ids"] = same_ids(bundle, chunks)
    ref_ppl = res["llama_cpp"].get("result", {}).get("ppl")
    try:
        row["ppl"] = round(numpy_ppl(bundle, chunks), 4)
        if ref_ppl:
            row["ppl_vs_llama_cpp"] = round(row["ppl"] / ref_ppl, 4)
    except Exception as e:  # a bundle our backend cannot run is a result too
        row["ppl_error"] = f"{type(e).__name__}: {e}"[:300]
    if mlx_check:
        try:
            row["mlx_lm_check"] = mlx_lm_check(bundle, chunks[0][:mlx_check])
        except Exception as e:
            row["mlx_lm_check"] = {"error": f"{type(e).__name__}: {e}"[:300]}


def same_ids(bundle: Path, chunks: list[list[int]]) -> bool | str:
    """Does this bundle's tokenizer give the ids we score with (the mlxedge bundle's)?"""
    from mlxedge.texts import evaluation_text
    from mlxedge.tokenizer import Tokenizer

    try:
        ids = Tokenizer(bundle).encode(evaluation_text())
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:200]
    flat = [t for c in chunks for t in c[1:]]
    return ids[-len(flat):] == flat


# ---------------------------------------------------------------- output

def fmt(x, spec: str = "") -> str:
    return "—" if x is None else format(x, spec)


def table(results: list[dict]) -> str:
    head = ("| model | tool | result | wall s | ×mlxedge | peak RSS MB | output MB | size/GGUF "
            "| perplexity | ppl/llama.cpp | ppl of the float32 export | rope_theta mlx-lm uses |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        ref = res.get("llama_cpp", {})
        if "llama_cpp" in res or res["model"] != "7b":
            lines.append(f"| {res['model']} | llama.cpp (GGUF, reference) | {'ok' if ref.get('rc') == 0 else 'failed'} "
                         f"| | | | | | {fmt(ref.get('result', {}).get('ppl'), '.3f')} | 1.000 "
                         f"| | {fmt(res.get('gguf_rope_freq_base'), 'g')} (GGUF) |")
        for row in res["rows"]:
            status = "ok" if row.get("rc") == 0 else f"fails: {row.get('error', '')}"
            if row.get("hf_export", {}).get("result", {}).get("save_error"):
                status += " (save_pretrained refused; saved after dropping hf_quantizer)"
            out_mb = row["out_bytes"] / 1e6 if "out_bytes" in row else None
            theta = row.get("rope", {}).get("mlx_lm_rope_theta")
            lines.append(
                f"| {res['model']} | {row['tool']} | {status.replace('|', '/')} | {fmt(row.get('wall_s'), '.1f')} "
                f"| {fmt(row.get('time_vs_mlxedge'), '.2f')} | {fmt(row.get('peak_rss_mb'), '.0f')} "
                f"| {fmt(out_mb, '.1f')} | {fmt(row.get('size_vs_gguf'), '.3f')} | {fmt(row.get('ppl'), '.3f')} "
                f"| {fmt(row.get('ppl_vs_llama_cpp'), '.3f')} | {fmt(row.get('hf_ppl'), '.3f')} | {fmt(theta, 'g')} |")
    return "\n".join(lines)


def machine() -> dict:
    """CPU model, core count, load average and the versions in this Python."""
    import importlib.metadata as md
    import platform

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    versions = {}
    for dist in ("mlxedge", "mlx", "mlx-lm", "numpy", "transformers"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {"cpu": model, "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "python": platform.python_version(), "versions": versions}


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--launch":  # stdlib only: runs before anything is imported
        launch(sys.argv[2], sys.argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--hf-python", nargs="*", default=DEFAULT_HF_PYTHONS,
                   help="Pythons with torch + transformers + gguf + accelerate, one detour row each")
    p.add_argument("--oracle-python", default=DEFAULT_ORACLE, help="a Python with llama-cpp-python")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mlxedge-bench-convert")
    p.add_argument("--chunk", type=int, default=512, help="perplexity context, BOS included (default 512)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads for the reference perplexity")
    p.add_argument("--mlx-lm-check", type=int, default=0, metavar="N",
                   help="also score the first N tokens with mlx-lm itself, to check the NumPy backend's "
                        "numbers (slow on CPU: ~1 min per bundle for N=96)")
    p.add_argument("--keep", action="store_true", help="keep the converted outputs")
    p.add_argument("--gguf-7b", type=Path, default=BIG, help="the 7B-shaped GGUF (scripts/make_7b_gguf.py)")
    p.add_argument("--gguf2mlx", default=DEFAULT_GGUF2MLX, help="the gguf2mlx executable (pip install gguf2mlx)")
    p.add_argument("--mlxedge-7b", nargs="+", choices=("keep", "exact"), default=["keep", "exact"],
                   help="mlxedge rows on the 7B file: convert's default, and with --exact")
    p.add_argument("--timeout-7b", type=float, default=1800, help="seconds per 7B conversion")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--table-from", type=Path, nargs="+", metavar="JSON",
                   help="print the table of earlier --json runs")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        WORKERS[args.worker[0]](*args.worker[1:])
        return 0
    if args.table_from:
        print(table([r for f in args.table_from for r in json.loads(f.read_text())["results"]]))
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = [bench_model(m, args, args.work_dir) for m in args.models]
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
