"""`mlxedge serve`'s limits and safety: keys and roles (401/403), store routes, audit entries, the
non-loopback refusal, the queue bound (429 + Retry-After), the request timeout, /health while loading,
SIGTERM (in-flight request finished, exit 0). Every request loop is bounded in count and time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import mlxedge
import ollama
import openai
import pytest

from mlxedge.errors import MlxEdgeError
from mlxedge.serve.app import create_app
from mlxedge.serve.cli import build
from mlxedge.serve.limits import key_id
from mlxedge.serve.registry import Registry
from mlxedge.store import audit
from serve_util import ROOT, TINY, Server, parse, slow_down, wait_for, wait_healthy

GGUF = ROOT / "tests" / "fixtures" / "gguf" / "llama-q4_0.gguf"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXEDGE_HOME", str(tmp_path / "home"))


def client(url: str, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", timeout=30, max_retries=0)


def test_keys_roles_store_routes_and_audit(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# key role\nu-secret user\na-secret admin\n")
    with Server("--model", str(TINY), "--keys-file", str(keys)) as s:
        assert httpx.get(f"{s.url}/health").status_code == 200  # no key needed
        with pytest.raises(openai.AuthenticationError):
            client(s.url).chat.completions.create(model="llama_f32", messages=HI, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            client(s.url, "wrong").models.list()
        assert httpx.get(f"{s.url}/api/tags").status_code == 401
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        user = ollama.Client(host=s.url, headers={"Authorization": "Bearer u-secret"}, timeout=30)
        admin = ollama.Client(host=s.url, headers={"Authorization": "Bearer a-secret"}, timeout=30)
        reply = client(s.url, "u-secret").chat.completions.create(
            model="llama_f32", messages=[{"role": "user", "content": "a private prompt"}], max_tokens=4)
        assert reply.usage.completion_tokens >= 1
        for call in (lambda c: c.pull(str(GGUF)), lambda c: c.delete("tiny:q4"),
                     lambda c: c.copy("tiny:q4", "tiny:b"), lambda c: c.create("tiny:c", from_="tiny:q4")):
            with pytest.raises(ollama.ResponseError) as e:
                call(user)
            assert e.value.status_code == 403
        assert admin.pull(str(GGUF), stream=False).status == "success"
        progress = list(admin.pull(str(GGUF), stream=True))  # NDJSON progress; the second pull reuses
        assert progress[0].status.startswith("pulling") and progress[-1].status == "success"
        store_name = [m.model for m in admin.list().models][0]
        admin.copy(store_name, "tiny:copy")
        admin.create("tiny:terse", from_="tiny:copy", system="Be terse.", parameters={"temperature": 0})
        assert {m.model for m in user.list().models} >= {store_name, "tiny:copy", "tiny:terse"}
        shown = user.show("tiny:terse")
        assert "Be terse." in shown.modelfile and shown.details.format == "mlx"
        r = user.chat(model="tiny:terse", messages=HI, options={"num_predict": 3}, stream=False)
        assert r.done and r.eval_count >= 1
        admin.delete("tiny:copy")
        assert "tiny:copy" not in {m.model for m in user.list().models}
    log = audit.log_path().read_text()
    entries = [json.loads(line) for line in log.splitlines()]
    served = [e for e in entries if e["event"] == "request" and e["route"] == "/v1/chat/completions"]
    assert served and served[0]["key_id"] == key_id("u-secret") and served[0]["completion_tokens"] >= 1
    assert served[0]["prompt_tokens"] > 0 and "a private prompt" not in log and "u-secret" not in log
    assert any(e["event"] == "serve_delete" and e["key_id"] == key_id("a-secret") for e in entries)


def test_api_key_and_log_prompts(tmp_path):
    (tmp_path / "k").write_text("file-key\n")
    with Server("--model", str(TINY), "--api-key-file", str(tmp_path / "k"), "--log-prompts") as s:
        with pytest.raises(openai.AuthenticationError):
            client(s.url, "other").models.list()
        client(s.url, "file-key").chat.completions.create(
            model="llama_f32", messages=[{"role": "user", "content": "logged prompt"}], max_tokens=2)
    assert "logged prompt" in audit.log_path().read_text()


def test_non_loopback_needs_a_key_or_the_flag(tmp_path):
    with pytest.raises(MlxEdgeError, match="without an API key"):
        build(parse("--model", str(TINY), "--host", "0.0.0.0"))
    build(parse("--model", str(TINY), "--host", "0.0.0.0", "--api-key", "k"))
    build(parse("--model", str(TINY), "--host", "0.0.0.0", "--allow-unauthenticated"))
    with pytest.raises(MlxEdgeError, match="no such file"):
        build(parse("--model", str(tmp_path / "missing")))
    with pytest.raises(MlxEdgeError, match="mlxedge list"):
        build(parse("--model", "nosuch:model"))
    with pytest.raises(MlxEdgeError, match="--keys-file .* line 1"):
        bad = tmp_path / "bad-keys"
        bad.write_text("only-a-key\n")
        build(parse("--model", str(TINY), "--keys-file", str(bad)))


def test_threads_sets_the_blas_pool_and_is_checked():
    """`--threads N` sizes OpenBLAS's pool for the batched steps (default: every core)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(None):  # restores the pool's size when the test ends
        build(parse("--model", str(TINY), "--threads", "1"))
        assert blas_threads() == {1}
        if (os.cpu_count() or 1) > 1:
            build(parse("--model", str(TINY)))
            assert blas_threads() == {os.cpu_count()}
    with pytest.raises(MlxEdgeError, match="--threads must be >= 1"):
        build(parse("--model", str(TINY), "--threads", "0"))


@pytest.mark.parametrize("flag, kernels", [("numpy", "numpy"), ("onnxruntime", "onnxruntime"),
                                          ("onnxruntime-int8", "onnxruntime-int8"), (None, "onnxruntime")])
def test_matmul_flag_picks_the_numpy_backends_kernels(flag, kernels, monkeypatch):
    """`--matmul` (default: MLXEDGE_MATMUL, else auto = onnxruntime where installed) reaches the model."""
    monkeypatch.delenv("MLXEDGE_MATMUL", raising=False)
    q4 = TINY.parent / "llama_q4_bf16"
    with Server("--model", str(q4), "--backend", "numpy", *(["--matmul", flag] if flag else [])) as s:
        r = client(s.url).chat.completions.create(model=q4.name, messages=HI, max_tokens=3)
        assert r.usage.completion_tokens >= 1
        assert s.service.registry.loaded[str(q4)].model.engine.matmul == kernels
    with pytest.raises(SystemExit):
        parse("--model", str(q4), "--matmul", "blas")


def test_queue_full_is_429_with_retry_after():
    with Server("--model", str(TINY), "--max-batch", "1", "--max-queue", "1") as s:
        sched = s.service.registry.loaded[str(TINY)].scheduler
        slow_down(sched)  # 2000 tokens: >= 10 s
        long = {"model": "llama_f32", "messages": HI, "max_tokens": 2000, "stream": True, "ignore_eos": True}
        results = {}
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=long, timeout=30) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the stream (a disconnect)
            next(lines)
            waiter = threading.Thread(target=lambda: results.update(b=httpx.post(
                f"{s.url}/v1/chat/completions", json={**long, "stream": False, "max_tokens": 3}, timeout=30)))
            waiter.start()
            assert wait_for(lambda: sched.queue_depth == 1, timeout=10)
            r = httpx.post(f"{s.url}/v1/chat/completions", json={**long, "stream": False}, timeout=10)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
        waiter.join(30)  # the first stream closed: its slot went to the waiting request
        assert results["b"].status_code == 200


def test_request_timeout_ends_generation():
    with Server("--model", str(TINY), "--timeout", "0.3") as s:
        slow_down(s.service.registry.loaded[str(TINY)].scheduler)
        t0 = time.monotonic()
        r = client(s.url).chat.completions.create(model="llama_f32", messages=HI, max_tokens=2000,
                                                  extra_body={"ignore_eos": True})
        assert time.monotonic() - t0 < 10 and r.usage.completion_tokens < 2000
        assert r.choices[0].finish_reason == "length"


def test_health_is_503_while_loading():
    gate = threading.Event()

    class Slow(Registry):
        def _load(self, key):
            gate.wait(10)
            return super()._load(key)

    s = Server(app=create_app(Slow([str(TINY)])))
    s.thread.start()
    try:
        assert wait_for(lambda: _status(f"{s.url}/health") == 503, timeout=10)
        r = httpx.get(f"{s.url}/health")
        assert r.json()["status"] == "loading" and r.headers["retry-after"] == "1"
        gate.set()
        wait_healthy(s.url, timeout=10)
    finally:
        gate.set()
        s.__exit__()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mlxedge", "serve", "--model", str(TINY), "--port", str(port),
                             "--grace", "20"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=60)
        body = {"model": "llama_f32", "messages": HI, "max_tokens": 600, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_several_models_each_with_its_scheduler_lru_unloaded():
    other = ROOT / "tests" / "goldens" / "tiny" / "qwen3_bf16"
    with Server("--model", str(TINY), "--model", str(other), "--max-loaded-models", "1") as s:
        reg = s.service.registry
        assert wait_for(lambda: list(reg.loaded) == [str(other)], timeout=20)  # preloaded both, kept the last
        c = client(s.url)
        for name, path in (("llama_f32", TINY), ("qwen3_bf16", other), ("llama_f32", TINY)):
            want = mlxedge.load(path, backend="numpy").generate("hi", max_tokens=5)
            r = c.chat.completions.create(model=name, messages=HI, max_tokens=5)
            assert r.choices[0].message.content == want and r.model == str(path)
            assert list(reg.loaded) == [str(path)]


def test_sigterm_cancels_what_outlives_the_grace_period(tmp_path, smollm2_gguf):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MLXEDGE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "mlxedge", "serve", "--model", str(smollm2_gguf), "--port",
                             str(port), "--grace", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=120)
        body = {"model": smollm2_gguf.name, "prompt": "Once upon a time", "max_tokens": 1000, "stream": True,
                "ignore_eos": True}
        got = []
        with pytest.raises(httpx.HTTPError):  # the server closes the stream when the grace period ends
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    got.append(line)
                    if len(got) == 2:
                        proc.send_signal(signal.SIGTERM)
                        t0 = time.monotonic()
        assert "data: [DONE]" not in got and len(got) < 1000
        assert proc.wait(30) == 0, proc.stderr.read()
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    entries = [json.loads(line) for line in (tmp_path / "home" / "audit.jsonl").read_text().splitlines()]
    assert any(e["event"] == "request" and e["outcome"] == "cancelled" for e in entries)
