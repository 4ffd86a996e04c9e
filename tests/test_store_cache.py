"""The conversion cache inside the store: a `.gguf` loaded by path shares its blobs with the same bytes
pulled under a name (either way round), is not listed as a name, is collected when its file is gone
or by `rm --cache`, converts once when two processes load it together, and survives kill -9."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import mlxedge
from mlxedge import modelcache, store
from mlxedge.errors import MlxEdgeError
from mlxedge.store import cache, importer, layout
from store_util import ROOT, TINY, assert_consistent, one_line_error, run_cli
from test_store_faults import kill_at


@pytest.fixture
def gguf(tmp_path):
    """A private copy of the tiny GGUF (its own path: an entry of its own)."""
    path = tmp_path / "model.gguf"
    shutil.copy(TINY, path)
    return path


def blobs(home) -> set[str]:
    return {p.name for p in (home / "blobs").iterdir()}


def no_conversion(*args, **kwargs):
    raise AssertionError("converted again")


def test_path_load_reuses_a_pulled_conversion(home, monkeypatch):
    tiny = store.pull(str(TINY), name="tiny:q4", quiet=True)
    before = blobs(home)
    monkeypatch.setattr(modelcache, "convert_gguf", no_conversion)
    directory = modelcache.resolve(TINY, quiet=True)
    assert blobs(home) == before  # no copy: the name's blobs
    entry = cache.entry_of(TINY)
    assert entry["files"] == tiny["files"] and directory.name == tiny["id"]
    assert entry["source"]["sha256"] == tiny["source"]["sha256"] and entry["recipe"] == "keep"
    assert mlxedge.load(str(TINY), backend="numpy").generate("hi", max_tokens=2) is not None
    assert [r["name"] for r in json.loads(run_cli(home, "list", "--json").stdout)] == ["tiny:q4"]  # names only
    rows = json.loads(run_cli(home, "list", "--cache", "--json").stdout)
    assert [(r["source"], r["id"]) for r in rows] == [(os.path.realpath(TINY), tiny["id"][:12])]
    assert os.path.realpath(TINY) in run_cli(home, "list", "--cache").stdout
    store.rm("tiny:q4")  # the source blob goes; the bundle blobs the cache entry uses stay
    assert blobs(home) == before - {f"sha256-{tiny['source']['blob']}"}
    assert modelcache.resolve(TINY, quiet=True).is_dir()
    assert_consistent(home)
    r = run_cli(home, "rm", "--cache")
    assert r.returncode == 0 and r.stdout.strip() == f"deleted 1 cached conversions ({len(tiny['files'])} blobs freed)"
    assert blobs(home) == set() and cache.entries() == []
    assert_consistent(home)


def test_pull_reuses_a_path_loads_conversion(home, gguf, monkeypatch):
    modelcache.resolve(gguf, quiet=True)
    converted = blobs(home)
    monkeypatch.setattr(importer.converter, "convert", no_conversion)
    m = store.pull(str(gguf), name="tiny:q4", quiet=True)
    assert m["files"] == cache.entry_of(gguf)["files"]
    assert m["source"]["kind"] == "path" and m["source"]["blob"] == m["source"]["sha256"]
    assert blobs(home) == converted | {f"sha256-{m['source']['sha256']}"}  # only the source copy is new
    assert store.verify() == []
    assert_consistent(home)


def test_entry_of_a_deleted_file_is_collected(home, gguf):
    directory = modelcache.resolve(gguf, quiet=True)
    assert blobs(home) and directory.is_dir()
    gguf.unlink()
    assert layout.collect()["blobs"] > 0  # what every store writer runs first
    assert cache.entries() == [] and blobs(home) == set() and not directory.exists()
    assert_consistent(home)


def test_damaged_shared_blob_is_refused_by_name_and_repaired_by_path(home, capsys):
    tiny = store.pull(str(TINY), name="tiny:q4", quiet=True)
    modelcache.resolve(TINY, quiet=True)
    blob = layout.blob_path(tiny["files"]["model.safetensors"]["digest"])
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert {(row["model"], row["problem"]) for row in store.verify()} == {("tiny:q4", "changed"),
                                                                         (os.path.realpath(TINY), "changed")}
    with pytest.raises(MlxEdgeError, match="is changed") as e:
        mlxedge.load("tiny:q4")
    assert "\n" not in str(e.value)
    modelcache.resolve(TINY, quiet=False)  # the source is at hand: converted again, the blob rewritten
    assert "converting it again" in capsys.readouterr().err
    assert store.verify() == []
    assert mlxedge.load("tiny:q4", backend="numpy").generate("hi", max_tokens=2) is not None


def test_two_loads_at_once_convert_once(home, gguf):
    env = {**os.environ, "MLXEDGE_HOME": str(home), "OPENBLAS_NUM_THREADS": "1",
           "MLXEDGE_STORE_PAUSE": "cache:blobs=0.3"}  # the converting process holds the lock a while
    args = [sys.executable, "-m", "mlxedge", "generate", "--model", str(gguf), "-p", "hi", "-m", "2",
            "--backend", "numpy"]
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        try:
            results.append(p.communicate(timeout=300))
        finally:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], results
    assert sum("converting" in err for _, err in results) == 1, results
    assert len(cache.entries()) == 1
    assert_consistent(home)


def test_kill_during_cache_conversion(home, gguf):
    kill_at(home, "cache:blobs", "generate", "--model", str(gguf), "-p", "hi", "-m", "1", "--backend", "numpy")
    assert cache.entries() == []  # no half entry
    r = run_cli(home, "generate", "--model", str(gguf), "-p", "hi", "-m", "1", "--backend", "numpy")
    assert r.returncode == 0 and "converting" in r.stderr, r.stderr
    assert len(cache.entries()) == 1
    assert_consistent(home)  # the dead work dir and its blobs swept


def test_rm_needs_a_name_or_cache(home):
    assert "--cache" in one_line_error(run_cli(home, "rm"), "rm")
