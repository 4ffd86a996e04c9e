"""Every damaged input of tests/damage.py through the CLI (issue 10): `inspect`, `convert` and
`generate` each exit 1 with exactly one `mlxedge CMD: error:` line, no traceback, and leave nothing
behind (no OUT, no `.OUT.*.partial`, no cache files, nothing new beside the input).

The damaged copies are built here from the tiny fixtures (a Q4_0 llama GGUF and the tiny bundle
converted from one); the runaway case (block_count 2**40, which once grew to 14 GB) also runs on
the real SmolLM2 under a small address-space cap and a deadline. Each command is a subprocess under
RLIMIT_AS; the three commands of a case run at once.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

import damage

HERE = Path(__file__).parent
TINY_GGUF = HERE / "fixtures" / "gguf" / "llama-q4_0.gguf"
TINY_BUNDLE = HERE / "goldens" / "tiny" / "llama_q4_bf16"
MEMORY_CAP = 2 * 2**30  # bytes of address space per command: far below what a runaway allocation takes
TIMEOUT = 60


def _cap(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def run_all(path: Path, work: Path, commands=("inspect", "convert", "generate"), cap: int = MEMORY_CAP,
            timeout: float = TIMEOUT) -> dict[str, tuple[int, str, float, list[str]]]:
    """command -> (exit status, stderr, seconds, what it left behind), the commands run concurrently."""
    before = _files(path.parent)
    procs = {}
    for cmd in commands:
        out_parent, cache = work / f"{cmd}-out", work / f"{cmd}-cache"
        out_parent.mkdir()
        cache.mkdir()
        args = {"inspect": ["inspect", str(path)],
                "convert": ["convert", str(path), "-o", str(out_parent / "out"), "--quiet"],
                "generate": ["generate", "--model", str(path), "--prompt", "Hi", "-m", "2", "--quiet"]}[cmd]
        env = {**os.environ, "MLXEDGE_HOME": str(cache), "OPENBLAS_NUM_THREADS": "1"}
        procs[cmd] = (subprocess.Popen([sys.executable, "-m", "mlxedge", *args], cwd=out_parent, env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True, errors="replace", preexec_fn=_cap(cap)),
                      time.monotonic(), out_parent, cache)
    results = {}
    for cmd, (p, t0, out_parent, cache) in procs.items():
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        left = [f"{cmd}-out/{n}" for n in os.listdir(out_parent)] + [f"cache/{f}" for f in _files(cache)]
        results[cmd] = (p.returncode, err, time.monotonic() - t0, left)
    left_beside = [f for f, size in _files(path.parent).items() if before.get(f) != size]
    for cmd in results:
        results[cmd][3].extend(left_beside)
    return results


def assert_refused(results) -> None:
    for cmd, (rc, err, secs, left) in results.items():
        lines = err.splitlines()
        assert "Traceback" not in err, f"{cmd}:\n{err}"
        assert rc == 1, f"{cmd}: exit {rc}\n{err}"
        assert len(lines) == 1 and lines[0].startswith(f"mlxedge {cmd}: error: "), f"{cmd}: {err!r}"
        assert not left, f"{cmd} left {left}"


@pytest.fixture(scope="module")
def tiny_gguf() -> Path:
    assert damage.read_gguf(TINY_GGUF).tensors, "the fixture is a GGUF"
    return TINY_GGUF


@pytest.mark.parametrize("name", list(damage.GGUF_CASES))
def test_damaged_gguf_is_refused(name, tiny_gguf, tmp_path):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    path = damage.GGUF_CASES[name](tiny_gguf, case_dir)
    assert_refused(run_all(path, tmp_path))


@pytest.mark.parametrize("name", list(damage.BUNDLE_CASES))
def test_damaged_bundle_is_refused(name, tmp_path):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    path = damage.BUNDLE_CASES[name](TINY_BUNDLE, case_dir)
    assert_refused(run_all(path, tmp_path))


def test_intact_copies_are_accepted(tiny_gguf, tmp_path):
    """The controls: the rewriter's unchanged copy and the bundle copy run (exit 0): the checks
    refuse the damage, not the files."""
    for d in ("g", "b", "gcase", "bcase"):
        (tmp_path / d).mkdir()
    gguf_copy = damage.intact_gguf(tiny_gguf, tmp_path / "gcase")
    assert gguf_copy.read_bytes() == tiny_gguf.read_bytes()
    bundle_copy = damage.intact_bundle(TINY_BUNDLE, tmp_path / "bcase")
    for work, path in ((tmp_path / "g", gguf_copy), (tmp_path / "b", bundle_copy)):
        for cmd, (rc, err, _, _) in run_all(path, work).items():
            assert rc == 0, f"{path.name} {cmd}: {err}"


def test_runaway_block_count_fails_fast_on_the_real_model(smollm2_gguf, tmp_path):
    """block_count 2**40 on SmolLM2: refused within seconds under a 1 GiB address-space cap."""
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    path = damage.GGUF_CASES["block_count_huge"](smollm2_gguf, case_dir)
    results = run_all(path, tmp_path, commands=("convert", "generate"), cap=2**30, timeout=30)
    assert_refused(results)
    assert all(secs < 15 for _, _, secs, _ in results.values()), {c: r[2] for c, r in results.items()}
    assert "block_count" in results["convert"][1]
