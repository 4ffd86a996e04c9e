"""Shared by tests/test_store*.py: a tmp MLXEDGE_HOME, the CLI in a subprocess, store consistency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / "tests" / "fixtures" / "gguf"
TINY = GGUF / "llama-q4_0.gguf"


def run_cli(home: Path, *args: str, env: dict | None = None, stdin: str | None = None, timeout: int = 300,
            preexec_fn=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MLXEDGE_HOME": str(home), "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mlxedge", *args], capture_output=True, text=True, cwd=ROOT,
                          env=full_env, input=stdin, timeout=timeout, preexec_fn=preexec_fn)


def one_line_error(r: subprocess.CompletedProcess, command: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlxedge {command}: error:"), r.stderr
    return lines[0]


def assert_consistent(home: Path) -> None:
    """Every manifest's (and conversion cache entry's) blobs are there and whole; no blob, model dir or
    work dir that nothing needs."""
    manifests = [json.loads(p.read_text()) for p in (home / "manifests").rglob("*.json")
                 if not p.name.startswith(".")] if (home / "manifests").is_dir() else []
    manifests += [json.loads(p.read_text()) for p in (home / "cache").glob("*.json")]
    refs = set()
    for m in manifests:
        refs |= {f["digest"] for f in m["files"].values()}
        if m["source"].get("blob"):
            refs.add(m["source"]["blob"])
    blobs = {p.name.removeprefix("sha256-") for p in (home / "blobs").glob("*")}
    assert refs <= blobs, f"missing blobs: {refs - blobs}"
    assert blobs <= refs, f"unreferenced blobs left: {blobs - refs}"
    ids = {m["id"] for m in manifests}
    assert {p.name for p in (home / "models").glob("*")} <= ids
    assert not list((home / "tmp").glob("*")), list((home / "tmp").glob("*"))
    assert not list((home / "manifests").rglob(".*")) if (home / "manifests").is_dir() else True
    assert not list((home / "cache").glob(".*"))
