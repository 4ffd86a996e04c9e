"""`mlxedge generate` / `mlxedge chat` as a user runs them, and the GGUF -> bundle cache (in the store)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlxedge import modelcache
from mlxedge.store import cache as store_cache, layout
from mlxedge.errors import MlxEdgeError
from mlxedge.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxedge", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    pytest.importorskip("mlx_lm")
    from tiny_models import tiny_bundle

    return tiny_bundle("llama", tmp_path_factory.mktemp("cli") / "tiny")


def test_prompt_from_stdin(tiny):
    prompt = "first line from stdin\nsecond line — é\n"
    r = run_cli("generate", "--model", str(tiny), "--prompt", "-", "--json", "-m", "5", "--backend", "numpy",
                stdin=prompt)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    expected_ids = Tokenizer(tiny).encode_chat([{"role": "user", "content": prompt}])
    assert out["prompt_tokens"] == len(expected_ids)  # the whole of stdin, through the chat template
    assert out["backend"] == "numpy" and out["generation_tokens"] >= 1
    for key in ("prompt_tps", "generation_tps", "peak_memory_gb", "time_to_first_token_s"):
        assert key in out


def test_streamed_text_and_stats(tiny):
    args = ["generate", "--model", str(tiny), "--prompt", "hello", "-m", "12", "--backend", "numpy",
            "--no-chat-template"]
    as_json = json.loads(run_cli(*args, "--json").stdout)
    assert as_json["prompt_tokens"] == len(Tokenizer(tiny).encode("hello"))  # raw text, no template
    r = run_cli(*args)
    assert r.returncode == 0 and r.stdout == as_json["text"] + "\n"
    assert "tokens/s" in r.stderr and "peak memory" in r.stderr
    quiet = run_cli(*args, "--quiet")
    assert quiet.stdout == r.stdout and quiet.stderr == ""


@pytest.mark.parametrize("model", ["/no/such/model.gguf", "NOT_GGUF", "EMPTY_DIR"])
def test_bad_model_is_one_line_error(tmp_path, model):
    if model == "NOT_GGUF":
        model = str(tmp_path / "x.gguf")
        Path(model).write_bytes(b"PK\x03\x04 not a gguf")
    elif model == "EMPTY_DIR":
        model = str(tmp_path)
    r = run_cli("generate", "--model", model, "--prompt", "hi")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlxedge generate: error:"), r.stderr


def test_chat_cli_turns_and_reset(tiny):
    r = run_cli("chat", "--model", str(tiny), "--backend", "numpy", "-m", "4", "--quiet",
                stdin="hello\n/reset\nhi again\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 2  # two replies, nothing after /exit
    assert "[conversation reset]" in r.stderr


def test_chat_ctrl_c_stops_the_reply_not_the_chat(tiny):
    """SIGINT during a (very long) reply ends that reply; the chat then takes the next command."""
    import signal

    p = subprocess.Popen([sys.executable, "-m", "mlxedge", "chat", "--model", str(tiny), "--backend", "numpy",
                          "-m", "1000000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT, bufsize=0)
    try:
        p.stdin.write(b"hello\n")
        p.stdin.flush()
        assert p.stdout.read(1)  # the reply has started
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(b"/reset\n/exit\n", timeout=120)
    finally:
        p.kill()
    err = err.decode()
    assert p.returncode == 0, err
    assert "Traceback" not in err and "[conversation reset]" in err
    stats = [line for line in err.splitlines() if line.startswith("[prompt:")]
    assert len(stats) == 1
    assert "generation: 1000000 tokens" not in stats[0]


# -- the GGUF cache ----------------------------------------------------------------------------

@pytest.fixture
def fake_convert(tiny, tmp_path, monkeypatch):
    """A .gguf whose conversion is replaced by a copy of the tiny bundle, counting conversions."""
    monkeypatch.setenv("MLXEDGE_HOME", str(tmp_path / "home"))
    calls = []

    def convert(src, out, show_progress=False):
        calls.append(Path(src))
        shutil.copytree(tiny, out)
        meta = json.loads((Path(out) / "mlxedge.json").read_text())
        meta["source"]["sha256"] = hashlib.sha256(Path(src).read_bytes()).hexdigest()
        (Path(out) / "mlxedge.json").write_text(json.dumps(meta))
        return Path(out)

    monkeypatch.setattr(modelcache, "convert_gguf", convert)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    return gguf, calls


def test_cache_hit_on_second_load(fake_convert):
    gguf, calls = fake_convert
    first = modelcache.resolve(gguf)
    assert len(calls) == 1 and (first / "config.json").is_file()
    assert modelcache.resolve(gguf) == first
    assert len(calls) == 1  # no conversion the second time
    link = gguf.with_name("link.gguf")
    link.symlink_to(gguf)
    assert modelcache.resolve(link) == first and len(calls) == 1  # keyed by the real path
    assert modelcache.verify(gguf)  # the sha256 recorded at conversion, checked on demand
    st = gguf.stat()
    with open(gguf, "r+b") as f:  # same size and mtime, different bytes: only verify() sees it
        f.seek(50)
        f.write(b"x")
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert modelcache.resolve(gguf) == first and not modelcache.verify(gguf)


def test_changed_file_is_converted_again(fake_convert):
    gguf, calls = fake_convert
    first = modelcache.resolve(gguf)
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again, the same bytes
    assert modelcache.resolve(gguf) == first and len(calls) == 1
    gguf.write_bytes(b"GGUF" + bytes(99) + b"x")  # new bytes
    second = modelcache.resolve(gguf)
    assert second != first and len(calls) == 2
    assert not first.exists()  # the stale entry is gone


@pytest.mark.parametrize("damage", ["truncate", "no_manifest", "missing_blob"])
def test_damaged_entry_is_rebuilt(fake_convert, damage):
    gguf, calls = fake_convert
    entry = modelcache.resolve(gguf)
    if damage == "truncate":
        with open(entry / "model.safetensors", "r+b") as f:  # a hardlink to the blob
            f.truncate(100)
    elif damage == "no_manifest":
        store_cache.entry_path(os.path.realpath(gguf)).unlink()  # as if killed before the entry was complete
    else:
        digest = store_cache.entry_of(gguf)["files"]["tokenizer.json"]["digest"]
        layout.blob_path(digest).unlink()
    assert modelcache.resolve(gguf) == entry and len(calls) == 2
    assert modelcache.is_complete(entry)
    assert layout.check_blob(store_cache.entry_of(gguf)["files"]["model.safetensors"]["digest"], rehash=True) is None


def test_missing_link_is_relinked_without_converting(fake_convert):
    gguf, calls = fake_convert
    entry = modelcache.resolve(gguf)
    (entry / "tokenizer.json").unlink()  # the materialized dir only links blobs: nothing to convert
    assert modelcache.resolve(gguf) == entry and len(calls) == 1
    assert (entry / "tokenizer.json").is_file() and modelcache.is_complete(entry)


def test_failed_conversion_leaves_nothing(fake_convert, monkeypatch, tmp_path):
    gguf, _ = fake_convert

    def broken(src, out, show_progress=False):
        Path(out).mkdir()
        (Path(out) / "config.json").write_text("{}")
        raise MlxEdgeError("unsupported tensor type")

    monkeypatch.setattr(modelcache, "convert_gguf", broken)
    with pytest.raises(MlxEdgeError, match="unsupported"):
        modelcache.resolve(gguf)
    home = tmp_path / "home"
    assert [p for p in home.rglob("*") if p.is_file()] == []  # no entry, blob, work dir or lock file


def test_real_gguf_second_run_hits_cache(tmp_path):
    """The embedded SmolLM2 GGUF: converted on the first run, used as is on the second."""
    from mlxedge import assets

    try:
        gguf = assets.smollm2_gguf()
    except MlxEdgeError as e:
        pytest.skip(str(e))
    env = {"MLXEDGE_HOME": str(tmp_path / "home")}
    args = ["generate", "--model", str(gguf), "--prompt", "What is the capital of France?", "-m", "8",
            "--backend", "numpy", "--json"]
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "converting" in first.stderr
    second = run_cli(*args, env=env)
    assert second.returncode == 0, second.stderr
    assert "converting" not in second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["model"] == b["model"] and a["text"] == b["text"]
    assert "Paris" in a["text"]


def test_system_prompt(tiny):
    r = run_cli("generate", "--model", str(tiny), "--prompt", "hi", "--system", "be brief", "--json", "-m", "2",
                "--backend", "numpy")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert json.loads(r.stdout)["prompt_tokens"] == len(Tokenizer(tiny).encode_chat(messages))
    r = run_cli("generate", "--model", str(tiny), "--prompt", "hi", "--system", "x", "--no-chat-template")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_out_of_memory_keeps_the_cache_entry(fake_convert, monkeypatch):
    """A machine short of memory is not a broken conversion: the entry stays for the next run."""
    from mlxedge import api
    from mlxedge.errors import OutOfMemory

    gguf, calls = fake_convert
    entry = modelcache.resolve(gguf)

    def short(directory, backend="auto", matmul=None):
        raise OutOfMemory("the model does not fit in float32, float16 or lean")

    monkeypatch.setattr(api, "make_engine", short)
    with pytest.raises(OutOfMemory, match="does not fit"):
        api.load(gguf)
    assert modelcache.is_complete(entry) and len(calls) == 1
    monkeypatch.setattr(api, "make_engine", lambda d, b="auto", m=None: (_ for _ in ()).throw(MlxEdgeError("bad tensor")))
    with pytest.raises(MlxEdgeError, match="removed"):
        api.load(gguf)
    assert not entry.exists()
