"""The 7B-shaped GGUF (scripts/make_7b_gguf.py: DeepSeek-R1-Distill-Qwen-7B Q4_K_M's real header,
tiled weights) converts in bounded memory: a subprocess under an address-space cap, its peak RSS
read back from the kernel. The NumPy backend then runs the bundle in its lean weight mode under a
12 GB cap (a few tokens: the weights carry no meaning) and refuses it under 2 GB in one line.
Minutes on a CPU box, so it runs only when asked:

    MLXEDGE_7B=1 .venv/bin/python -m pytest tests/test_convert_7b.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from mlxedge import safetensors

ROOT = Path(__file__).resolve().parents[1]
GGUF = Path(os.environ.get("MLXEDGE_7B_GGUF", ROOT / "out" / "7b" / "deepseek-r1-distill-qwen-7b-q4_k_m-tiled.gguf"))
PEAK_RSS_MB = 1536  # the bound: the model is 4.7 GB, its largest tensor 2.2 GB in float32
# RLIMIT_AS counts mappings, not memory: the header parser maps the whole file while it reads
# the header, so the cap is the file plus the budget (a 10 GB conversion still fails it).
CAP = GGUF.stat().st_size + 3 * 2**30 if GGUF.exists() else 0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("MLXEDGE_7B"), reason="set MLXEDGE_7B=1 to convert the 7B file"),
    pytest.mark.skipif(not GGUF.exists(), reason=f"{GGUF} missing: run scripts/make_7b_gguf.py"),
]


def _capped(cap: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _convert(out: Path, flags: list[str]) -> float:
    """Convert under CAP; returns the child's peak RSS in MB."""
    log = out.with_suffix(".stderr.txt")
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mlxedge", "convert", str(GGUF), "-o", str(out), "--quiet",
                                 *flags], preexec_fn=_capped(CAP), stderr=err,
                                env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss of this child alone
    assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-2000:]
    return usage.ru_maxrss / 1024


@pytest.fixture(scope="module")
def keep_bundle(tmp_path_factory):
    """(the default conversion, its peak RSS in MB), shared by the tests below."""
    out = tmp_path_factory.mktemp("7b") / "keep"
    return out, _convert(out, [])


@pytest.mark.parametrize("flags", [[], ["--exact"]], ids=["keep", "exact"])
def test_7b_converts_within_the_memory_budget(tmp_path, keep_bundle, flags):
    out, peak_mb = keep_bundle if not flags else (tmp_path / "bundle", None)
    if peak_mb is None:
        peak_mb = _convert(out, flags)
    print(f"7B convert {' '.join(flags) or '(keep)'}: peak RSS {peak_mb:.0f} MB")
    assert peak_mb <= PEAK_RSS_MB, f"peak RSS {peak_mb:.0f} MB"

    info = json.loads((out / "mlxedge.json").read_text())
    assert info["parameters"] == 7_615_616_512
    headers = {k: t for f in sorted(out.glob("model*.safetensors")) for k, t in safetensors.scan(f).items()}
    assert headers["model.embed_tokens.weight"].shape[0] == 152064
    assert len(info["tensors"]) == 339


def _generate(bundle: Path, cap_gb: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxedge", "generate", "--model", str(bundle), "--backend", "numpy",
                           "--prompt", "Hello", "--max-tokens", "3", "--no-chat-template", "--json"],
                          preexec_fn=_capped(cap_gb << 30), capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def test_7b_runs_lean_under_12gb(keep_bundle):
    r = _generate(keep_bundle[0], 12)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    print(f"7B lean: {out['generation_tps']} tok/s, peak {out['peak_memory_gb']} GB")
    assert out["weights"] == "lean" and out["generation_tokens"] == 3


def test_7b_refused_under_2gb_in_one_line(keep_bundle):
    r = _generate(keep_bundle[0], 2)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line, = r.stderr.strip().splitlines()
    assert "does not fit in any weight mode" in line and "lean" in line
