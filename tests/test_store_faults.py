"""The store under faults: kill -9 mid pull / create / rm, two pulls at once, a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from store_util import GGUF, ROOT, TINY, assert_consistent, one_line_error, run_cli


def start(home, *args, pause: str):
    env = {**os.environ, "MLXEDGE_HOME": str(home), "OPENBLAS_NUM_THREADS": "1", "MLXEDGE_STORE_PAUSE": pause}
    return subprocess.Popen([sys.executable, "-m", "mlxedge", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_at(home, step: str, *args) -> None:
    """Run `mlxedge ARGS` until it reaches the hook `step`, then SIGKILL it."""
    p = start(home, *args, pause=step)
    marker = home / "tmp" / f"paused-{step}"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "never reached the hook"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    marker.unlink()


def names_listed(home) -> list[str]:
    r = run_cli(home, "list", "--json")
    assert r.returncode == 0, r.stderr
    return [row["name"] for row in json.loads(r.stdout)]


def verify_clean(home) -> None:
    r = run_cli(home, "verify")
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


@pytest.mark.parametrize("step", ["pull:fetched", "pull:blobs"])
def test_kill_during_pull(tmp_path, step):
    home = tmp_path / "store"
    kill_at(home, step, "pull", str(TINY), "--as", "tiny:q4")
    assert names_listed(home) == []  # no half entry
    verify_clean(home)
    if step == "pull:blobs":
        assert any((home / "blobs").iterdir())  # debris, until the next writer runs
    r = run_cli(home, "pull", str(TINY), "--as", "tiny:q4")  # restarts cleanly
    assert r.returncode == 0, r.stderr
    assert names_listed(home) == ["tiny:q4"]
    verify_clean(home)
    assert_consistent(home)  # the dead pull's blobs and work dir are gone


def test_kill_during_create_and_rm(tmp_path):
    home = tmp_path / "store"
    assert run_cli(home, "pull", str(TINY), "--as", "tiny:q4").returncode == 0
    mf = tmp_path / "Modelfile"
    mf.write_text('FROM tiny:q4\nTEMPLATE """{{ messages[0].content }}"""\nPARAMETER seed 1\n')
    kill_at(home, "create:manifest", "create", "tiny:tpl", "-f", str(mf))
    assert names_listed(home) == ["tiny:q4"]
    verify_clean(home)
    assert run_cli(home, "create", "tiny:tpl", "-f", str(mf)).returncode == 0
    assert names_listed(home) == ["tiny:q4", "tiny:tpl"]
    assert_consistent(home)

    kill_at(home, "rm:unlinked", "rm", "tiny:q4")  # the manifest is gone, its blobs not yet
    assert names_listed(home) == ["tiny:tpl"]
    verify_clean(home)
    r = run_cli(home, "generate", "--model", "tiny:tpl", "-p", "hi", "-m", "2", "--backend", "numpy")
    assert r.returncode == 0, r.stderr  # the shared blobs survived
    assert run_cli(home, "cp", "tiny:tpl", "tiny:again").returncode == 0  # the next writer sweeps
    assert_consistent(home)


def test_two_concurrent_pulls_do_the_work_once(tmp_path):
    home = tmp_path / "store"
    # the first pull sleeps 2 s after fetching, holding the lock: the second waits, then reuses
    procs = [start(home, "pull", str(TINY), "--as", name, pause="pull:fetched=2") for name in ("a:x", "b:x")]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sum("converting" in err for _, err in results) == 1
    rows = json.loads(run_cli(home, "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["a:x", "b:x"] and rows[0]["id"] == rows[1]["id"]
    procs = [start(home, "pull", str(GGUF / "qwen2-q5_0.gguf"), "--as", "same:name", pause="pull:fetched=1")
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    verify_clean(home)
    assert_consistent(home)


def _limit_file_size(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: EFBIG
    return preexec


@pytest.mark.parametrize("limit, quant", [(64 * 1024, "keep"),  # the 84 KB source copy fails
                                          (200 * 1024, "f32")])  # the copy fits, the 380 KB f32 bundle not
def test_disk_full_during_pull(tmp_path, limit, quant):
    home = tmp_path / "store"
    r = run_cli(home, "pull", str(TINY), "--as", "tiny:q4", "--quant", quant, "--quiet",
                preexec_fn=_limit_file_size(limit))
    line = one_line_error(r, "pull")
    assert "File too large" in line
    assert names_listed(home) == []
    verify_clean(home)
    assert not list((home / "tmp").glob("*"))  # the failed pull removed its work dir itself
    log = [json.loads(x) for x in (home / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["outcome"]) for e in log] == [("pull", "error"), ("verify", "ok")]
    assert run_cli(home, "pull", str(TINY), "--as", "tiny:q4", "--quant", quant).returncode == 0
    assert_consistent(home)


def test_ctrl_c_during_pull_cleans_up_at_once(tmp_path):
    home = tmp_path / "store"
    p = start(home, "pull", str(TINY), "--as", "tiny:q4", pause="pull:blobs")
    marker = home / "tmp" / "paused-pull:blobs"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    marker.unlink()
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130
    assert names_listed(home) == [] and not list((home / "tmp").glob("*"))  # its work dir went with it
    verify_clean(home)
    log = [json.loads(x) for x in (home / "audit.jsonl").read_text().splitlines()]
    assert (log[0]["event"], log[0]["outcome"]) == ("pull", "error")
