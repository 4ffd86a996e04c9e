"""`mlxedge ps` against a real server on a free loopback port: the models it has loaded (name, id, size,
backend, context, until), with and without its API key; no server -> one line, exit 1."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from mlxedge import cli, store
from mlxedge.ps import until
from serve_util import TINY, Server
from store_util import TINY as TINY_GGUF

KEY = "ps-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLXEDGE_HOME", str(tmp_path_factory.mktemp("home")))
    tiny = store.pull(str(TINY_GGUF), name="tiny:q4", quiet=True)
    with Server("--model", str(TINY), "--api-key", KEY, "--backend", "numpy") as s:
        for model in ("llama_f32", "tiny:q4"):  # load both: one configured (kept), one by name (keep-alive)
            r = httpx.post(f"{s.url}/api/generate", json={"model": model, "prompt": "hi", "stream": False,
                                                          "options": {"num_predict": 1}},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            assert r.status_code == 200, r.text
        yield s, tiny
    mp.undo()


def ps(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(["ps", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_ps_json_lists_the_loaded_models(server, capsys):
    s, tiny = server
    rc, out, err = ps(capsys, "--host", s.url, "--api-key", KEY, "--json")
    assert rc == 0, err
    models = {m["name"]: m for m in json.loads(out)["models"]}
    assert set(models) == {str(TINY), "tiny:q4"}
    assert models["tiny:q4"]["digest"] == tiny["id"] and models[str(TINY)]["digest"] == ""  # a plain bundle
    assert all(m["backend"] == "numpy" and m["size"] > 0 for m in models.values())


def test_ps_table(server, capsys, tmp_path):
    s, tiny = server
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    rc, out, err = ps(capsys, "--host", s.url.removeprefix("http://"), "--api-key-file", str(key_file))
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    by_name = {r.split()[0]: r for r in rows}
    assert set(by_name) == {str(TINY), "tiny:q4"}
    assert by_name[str(TINY)].endswith("Forever")  # --model: kept loaded
    assert by_name["tiny:q4"].split()[1] == tiny["id"][:12] and by_name["tiny:q4"].endswith("from now")
    assert "numpy" in by_name["tiny:q4"].split()


def test_ps_without_the_key_is_one_line(server, capsys):
    s, _ = server
    rc, out, err = ps(capsys, "--host", s.url)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1 and "--api-key" in err, err
    rc, out, err = ps(capsys, "--host", s.url, "--api-key", "wrong")
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_ps_with_no_server_is_one_line(capsys):
    with socket.socket() as sock:  # a free port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rc, out, err = ps(capsys, "--host", f"http://127.0.0.1:{port}", "--timeout", "5")
    assert rc == 1 and out == "" and err.splitlines() == [err.strip()] and "no server running" in err, err
    rc, _, err = ps(capsys, "--host", "ftp://example")
    assert rc == 1 and len(err.splitlines()) == 1 and "--host" in err, err


def test_until_reads_like_ollama():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert until((now + timedelta(minutes=4, seconds=50)).isoformat(), now) == "5 minutes from now"
    assert until((now + timedelta(seconds=1)).isoformat(), now) == "1 second from now"
    assert until((now + timedelta(hours=2)).isoformat().replace("+00:00", "Z"), now) == "2 hours from now"
    assert until((now - timedelta(seconds=3)).isoformat(), now) == "Stopping..."
    assert until("2100-01-01T00:00:00+00:00", now) == "Forever"
    assert until(None, now) == "-"
