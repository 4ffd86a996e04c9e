"""Run `mlxedge inspect`, `convert` and `generate` on every damaged input of tests/damage.py.

    .venv/bin/python scripts/fuzz_inputs.py [--only NAME ...] [--json] [-j N] [--gguf PATH]

Each case is a damaged copy of the SmolLM2 GGUF (or of a bundle converted from it), built in a temp
dir just before its runs and removed after. Every command runs in a subprocess under a memory cap
(RLIMIT_AS) and a timeout, with MLXEDGE_HOME (the store) at a fresh dir, and is classified:

    OK         exit 1, one `mlxedge CMD: error: ...` line on stderr, nothing left behind
               (intact_* controls: exit 0)
    ACCEPTED   exit 0 on a broken input
    TRACEBACK  a Python traceback on stderr
    MEMORY     MemoryError (hit the --mem-gb cap), or killed by SIGKILL (the OOM killer)
    CRASH      killed by another signal
    TIMEOUT    still running after --timeout seconds
    DEBRIS     a failed run left files: an output dir, `.partial` dirs, cache files, or new files
               beside the input
    MESSY      anything else (another exit status, stderr not exactly one error line)
    REJECTED   a control failed (the harness, not the input, is wrong)
    SKIPPED    not run: the --budget ran out

Commands run from an empty dir with this interpreter (`python -m mlxedge`), so they use the
installed mlxedge; set PYTHONPATH to test another tree (e.g. a `git archive HEAD mlxedge` export).
Exit status 0 when every run is OK.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import damage  # noqa: E402

COMMANDS = ("inspect", "convert", "generate")
CONTROLS = ("intact_gguf", "intact_bundle")
CASES = {"intact_gguf": ("gguf", damage.intact_gguf), **{n: ("gguf", f) for n, f in damage.GGUF_CASES.items()},
         "intact_bundle": ("bundle", damage.intact_bundle),
         **{n: ("bundle", f) for n, f in damage.BUNDLE_CASES.items()}}


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _debris(out_parent: Path, cache: Path, case_dir: Path, before: dict[str, int]) -> list[str]:
    """What a run left: anything in OUT's parent (also its cwd), cache files, changes beside the input."""
    left = [p.name + "/" * p.is_dir() for p in sorted(out_parent.iterdir())]
    dirs: dict[str, int] = {}
    for f in _files(cache):
        dirs[str(Path(f).parent)] = dirs.get(str(Path(f).parent), 0) + 1
    left += [f"cache/{d}/ ({n} files)" for d, n in dirs.items()]
    return left + [f"case/{p}" for p, size in _files(case_dir).items() if before.get(p) != size]


def _mlxedge(args: list[str], env: dict, timeout: float, mem: int, cwd: Path) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, stderr, seconds); the whole process group dies on timeout."""
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "mlxedge", *args], stdin=subprocess.DEVNULL, cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
                         errors="replace", start_new_session=True, preexec_fn=lambda: _limit_memory(mem))
    try:
        _, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        rc = None
    return rc, err, time.monotonic() - t0


def classify(cmd: str, rc: int | None, err: str, control: bool, debris: list[str]) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc is None:
        return "TIMEOUT"
    if "MemoryError" in err or "bad_alloc" in err or rc == -signal.SIGKILL:
        return "MEMORY"
    if rc < 0:
        return "CRASH"
    if "Traceback (most recent call last)" in err:
        return "TRACEBACK"
    if control:
        return "OK" if rc == 0 else "REJECTED"
    if rc == 0:
        return "ACCEPTED"
    if debris:
        return "DEBRIS"
    if rc == 1 and len(lines) == 1 and lines[0].startswith(f"mlxedge {cmd}: error: "):
        return "OK"
    return "MESSY"


def last_line(err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def detail(kind: str, rc: int | None, err: str, debris: list[str]) -> str:
    """One line for the failure table: the error, and for a traceback the innermost mlxedge frame."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = last_line(err) or f"(no stderr, exit {rc})"
    frames = re.findall(r'File "([^"]*mlxedge/[^"]*)", line (\d+), in (\S+)', err)
    if frames:
        path, line, fn = frames[-1]
        last += f"  [{path[path.rindex('mlxedge/'):]}:{line} {fn}]"
    if kind == "MESSY":
        last = f"exit {rc}, {len(lines)} stderr lines; last: {last}"
    elif kind == "TIMEOUT":
        last = "(killed at the timeout)"
    elif kind in ("MEMORY", "CRASH") and rc is not None and rc < 0:
        last = f"{signal.Signals(-rc).name}; {last}"
    if debris and kind != "ACCEPTED":
        last = f"left {', '.join(debris)}; {last}"
    return last[:300]


def run_case(name: str, sources: dict[str, str], work: str, timeout: float, mem: int,
             deadline: float) -> list[dict]:
    """Build case `name`, run the three commands on it, clean up; one result dict per command."""
    kind, make = CASES[name]
    root = Path(work) / name
    case_dir = root / "case"
    case_dir.mkdir(parents=True)
    results = []
    try:
        path = make(sources[kind], case_dir)
        before = _files(case_dir)
        for cmd in COMMANDS:
            res = {"case": name, "command": cmd}
            results.append(res)
            if time.monotonic() > deadline:
                res.update(result="SKIPPED", rc=None, seconds=0.0, detail="budget spent")
                continue
            out_parent, cache = root / f"{cmd}-out", root / f"{cmd}-cache"
            out_parent.mkdir()
            cache.mkdir()
            args = {"inspect": ["inspect", str(path)],
                    "convert": ["convert", str(path), "-o", str(out_parent / "out"), "--quiet"],
                    "generate": ["generate", "--model", str(path), "--prompt", "Hi", "--max-tokens", "2",
                                 "--quiet"]}[cmd]
            env = {**os.environ, "MLXEDGE_HOME": str(cache), "OPENBLAS_NUM_THREADS": "1"}
            rc, err, secs = _mlxedge(args, env, timeout, mem, cwd=out_parent)
            debris = _debris(out_parent, cache, case_dir, before)
            result = classify(cmd, rc, err, name in CONTROLS, debris)
            res.update(result=result, rc=rc, seconds=round(secs, 1), stderr=last_line(err)[:300],
                       detail=detail(result, rc, err, debris) if result != "OK" else "")
            shutil.rmtree(out_parent, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
    except Exception as e:  # building the case failed: report it rather than stop the whole run
        for cmd in COMMANDS[len(results):]:
            results.append({"case": name, "command": cmd})
        for res in results:
            res.setdefault("result", "BUILD-FAILED")
            res.setdefault("rc", None)
            res.setdefault("seconds", 0.0)
            res.setdefault("detail", f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def print_table(results: list[dict], elapsed: float) -> None:
    by_case: dict[str, dict[str, str]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["command"]] = r["result"]
    width = max(len(c) for c in by_case)
    print(f"{'case':<{width}}  " + "  ".join(f"{c:<10}" for c in COMMANDS))
    for case in (c for c in CASES if c in by_case):
        print(f"{case:<{width}}  " + "  ".join(f"{by_case[case][c]:<10}" for c in COMMANDS))
    bad = [r for r in results if r["result"] != "OK"]
    print(f"\n{len(results) - len(bad)} of {len(results)} runs OK in {elapsed:.0f} s")
    if bad:
        print("\nfailures:")
        for r in bad:
            print(f"  {r['case']:<{width}}  {r['command']:<8}  {r['result']:<10}  {r['detail']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], metavar="NAME", choices=list(CASES),
                    help="run only this case (repeatable)")
    ap.add_argument("--gguf", default=None, help="the GGUF to damage (default: the embedded SmolLM2)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    ap.add_argument("-j", "--jobs", type=int, default=min(4, os.cpu_count() or 1), help="cases at once")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per command (default 60)")
    ap.add_argument("--mem-gb", type=float, default=3, help="address-space cap per command (default 3)")
    ap.add_argument("--budget", type=float, default=1800,
                    help="start no command after this many seconds (default 1800)")
    args = ap.parse_args()
    names = args.only or list(CASES)
    mem = int(args.mem_gb * 2**30)
    t0 = time.monotonic()

    if args.gguf is None:
        from mlxedge import assets

        args.gguf = str(assets.smollm2_gguf())
    work = tempfile.mkdtemp(prefix="mlxedge-fuzz-")
    try:
        sources = {"gguf": args.gguf, "bundle": str(Path(work) / "bundle")}
        code = subprocess.run([sys.executable, "-c", "import mlxedge; print(mlxedge.__file__)"], cwd=work,
                              capture_output=True, text=True).stdout.strip()
        print(f"fuzz_inputs: {len(names)} cases from {args.gguf}, mlxedge from {code}", file=sys.stderr)
        if any(CASES[n][0] == "bundle" for n in names):
            env = {**os.environ, "MLXEDGE_HOME": str(Path(work) / "cache"), "OPENBLAS_NUM_THREADS": "1"}
            rc, err, _ = _mlxedge(["convert", args.gguf, "-o", sources["bundle"], "--quiet"], env, 600, mem,
                                  cwd=Path(work))
            if rc != 0:
                sys.exit(f"fuzz_inputs: converting {args.gguf} failed:\n{err}")
        results = []
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_case, n, sources, work, args.timeout, mem, t0 + args.budget)
                       for n in names]
            for i, fut in enumerate(as_completed(futures), 1):
                rs = fut.result()
                results += rs
                print(f"[{i}/{len(names)}] {rs[0]['case']}: " + " ".join(r["result"] for r in rs),
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    order = {n: i for i, n in enumerate(CASES)}
    results.sort(key=lambda r: (order[r["case"]], COMMANDS.index(r["command"])))
    elapsed = time.monotonic() - t0
    if args.json:
        counts: dict[str, int] = {}
        for r in results:
            counts[r["result"]] = counts.get(r["result"], 0) + 1
        print(json.dumps({"source": args.gguf, "mlxedge": code, "seconds": round(elapsed, 1), "counts": counts,
                          "runs": results}, indent=1))
    else:
        print_table(results, elapsed)
    return 0 if all(r["result"] == "OK" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
