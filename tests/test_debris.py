"""What faults leave behind (issue 10): SIGTERM unwinds like Ctrl-C, temp dirs of killed processes are
removed by the next run, the GGUF conversion cache (in the model store) is keyed by mlxedge's version,
and a cache entry that fails to load is not kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlxedge import api, modelcache, pipeline
from mlxedge.errors import MlxEdgeError
from mlxedge.formats.bundle import BundleWriter
from mlxedge.store import cache as store_cache

TINY_GGUF = Path(__file__).parent / "fixtures" / "gguf" / "llama-q4_0.gguf"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The model store, which holds the conversion cache."""
    root = tmp_path / "home"
    monkeypatch.setenv("MLXEDGE_HOME", str(root))
    return root


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / f".other.{dead}.abcd_123.partial"
    old = tmp_path / f".out.old{dead}"
    busy = tmp_path / f".out.{alive}.zyxw_987.partial"  # a live process' work: kept
    unrelated = tmp_path / ".out.partial"
    for d in (stale, old, busy, unrelated):
        d.mkdir()
        (d / "data").write_bytes(b"x" * 10)
    with BundleWriter(tmp_path / "out") as w:
        assert f".out.{os.getpid()}." in w.tmp.name  # our own pid in our temp dir's name
        w.write_json("config.json", {})
        w.commit()
    assert not stale.exists() and not old.exists()
    assert busy.exists() and unrelated.exists()


def test_stale_cache_temp_dirs_are_removed(tmp_path, cache):
    work = cache / "tmp"
    work.mkdir(parents=True)
    stale = work / f"{dead_pid()}-0123456789ab"  # a killed conversion's work dir; its lock held by nobody
    (stale / "bundle").mkdir(parents=True)
    (stale / "bundle" / "model.safetensors").write_bytes(b"x")
    Path(f"{stale}.lock").write_text("")
    modelcache.resolve(TINY_GGUF)
    assert not stale.exists()
    assert list(work.iterdir()) == []
    assert [p.name for p in (cache / "models").iterdir() if p.name.startswith(".")] == []


def test_cache_key_includes_the_version(cache, monkeypatch):
    first = modelcache.resolve(TINY_GGUF)
    assert modelcache.resolve(TINY_GGUF) == first
    monkeypatch.setattr(modelcache, "__version__", "99.0")  # the key's version...
    monkeypatch.setattr(pipeline, "__version__", "99.0")  # ...and the one the converter writes
    second = modelcache.resolve(TINY_GGUF)
    assert second != first and second.is_dir()
    assert store_cache.entry_of(TINY_GGUF)["mlxedge_version"] == "99.0"
    assert not first.exists()  # the older version's entry for the same file is dropped
    assert len(list((cache / "cache").glob("*.json"))) == 1


def test_cache_entry_that_fails_to_load_is_removed(cache, monkeypatch):
    convert = modelcache.convert_gguf

    def broken_once(src, out, show_progress=False):  # a converter bug: whole blobs that do not load
        bundle = convert(src, out, show_progress)
        monkeypatch.setattr(modelcache, "convert_gguf", convert)
        shard = bundle / "model.safetensors"
        data = shard.read_bytes()
        assert b'"dtype":"F32"' in data
        shard.write_bytes(data.replace(b'"dtype":"F32"', b'"dtype":"X32"', 1))
        return bundle

    monkeypatch.setattr(modelcache, "convert_gguf", broken_once)
    entry = modelcache.resolve(TINY_GGUF)
    assert modelcache.is_complete(entry)
    with pytest.raises(MlxEdgeError, match="failed to load and was removed") as e:
        api.load(TINY_GGUF, backend="numpy")
    assert "\n" not in str(e.value) and str(TINY_GGUF) in str(e.value)
    assert not entry.exists()
    assert api.load(TINY_GGUF, backend="numpy").generate("Hi", max_tokens=1) is not None  # converted again


def _wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("command", ["convert", "generate"])
def test_sigterm_cleans_up_like_ctrl_c(command, smollm2_gguf, tmp_path):
    """SIGTERM while the bundle is being written: exit 143, one line, no temp dir, no OUT, no store files."""
    home = tmp_path / "home"
    out = tmp_path / "out"
    args = (["convert", str(smollm2_gguf), "-o", str(out), "--quiet"] if command == "convert"
            else ["generate", "--model", str(smollm2_gguf), "--prompt", "Hi", "-m", "1", "--quiet"])
    p = subprocess.Popen([sys.executable, "-m", "mlxedge", *args], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "MLXEDGE_HOME": str(home)})

    def writing() -> bool:  # some tensor data is on disk in a temp dir
        return any(f.stat().st_size > 1 << 20 for f in tmp_path.rglob("*.data"))

    try:
        assert _wait_for(writing, 60), "the conversion never started writing"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines() == [f"mlxedge {command}: terminated"], err
    assert not out.exists()
    left = [str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*") if f.is_file()]
    assert left == [], left
