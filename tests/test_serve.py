"""`mlxedge serve` through the real `openai` and `ollama` clients, on the tiny llama bundle.

Greedy replies through every route equal `mlxedge.load(...).generate(...)`; 8 concurrent requests
give the texts the same requests give one at a time. Every request loop is bounded (count, timeout).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest

import mlxedge
from serve_util import TINY, Server, slow_down, wait_for

PROMPTS = ["hi", "tell me a story", "abc", "1 2 3 4", "the quick brown fox", "x", "hello there", "why?"]
LENGTHS = [5, 17, 9, 30, 12, 3, 24, 40]


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLXEDGE_HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def server(home):
    with Server("--model", str(TINY), "--max-body-bytes", "65536") as s:
        yield s


@pytest.fixture(scope="module")
def local():
    return mlxedge.load(TINY, backend="numpy")


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", timeout=30, max_retries=0)


@pytest.fixture(scope="module")
def oll(server):
    return ollama.Client(host=server.url, timeout=30)


def test_chat_completion_equals_generate(oai, local):
    want = local.generate("hi", max_tokens=12)
    r = oai.chat.completions.create(model="llama_f32", messages=[{"role": "user", "content": "hi"}],
                                    max_tokens=12, temperature=0)
    assert r.choices[0].message.content == want
    assert r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(local.encode_prompt("hi")) and r.usage.completion_tokens == 12
    r2 = oai.chat.completions.create(model=str(TINY), messages=[{"role": "user", "content": "hi"}],
                                     max_completion_tokens=12, temperature=0)
    assert r2.choices[0].message.content == want


def reference(local, prompt: str, max_tokens: int, **kw) -> tuple[str, str, int]:
    """(text, OpenAI finish_reason, tokens) of the same generation through mlxedge.load()."""
    g = local.generation(local.encode_prompt(prompt), max_tokens=max_tokens, **kw)
    g.run()
    return g.text, {"eos": "stop"}.get(g.stats.finish_reason, g.stats.finish_reason), len(g.tokens)


def test_chat_stream_and_usage(oai, local):
    want, finish, n = reference(local, "tell me a story", 20)
    chunks = list(oai.chat.completions.create(model="llama_f32", stream=True, max_tokens=20,
                                              messages=[{"role": "user", "content": "tell me a story"}],
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n


def test_sse_ends_with_done(server):
    body = {"model": "llama_f32", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_completions_equal_generate_without_template(oai, local):
    want = local.generate("the quick brown fox", max_tokens=15, chat_template=False)
    r = oai.completions.create(model="llama_f32", prompt="the quick brown fox", max_tokens=15, temperature=0)
    assert r.choices[0].text == want and r.object == "text_completion"
    assert r.usage.total_tokens == r.usage.prompt_tokens + 15
    streamed = "".join(c.choices[0].text for c in oai.completions.create(
        model="llama_f32", prompt="the quick brown fox", max_tokens=15, stream=True))
    assert streamed == want


def test_stop_string_cuts_the_reply(oai, local):
    full = local.generate("hello there", max_tokens=30)
    stop = full[8:10]
    want = local.generate("hello there", max_tokens=30, stop=[stop])
    r = oai.chat.completions.create(model="llama_f32", messages=[{"role": "user", "content": "hello there"}],
                                    max_tokens=30, stop=[stop])
    assert r.choices[0].message.content == want == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_matches_generate(oai, local):
    kw = dict(model="llama_f32", messages=[{"role": "user", "content": "abc"}], max_tokens=25,
              temperature=0.9, top_p=0.95, seed=7)
    a, b = (oai.chat.completions.create(**kw).choices[0].message.content for _ in range(2))
    assert a == b == local.generate("abc", max_tokens=25, temp=0.9, top_p=0.95, seed=7)
    c = oai.chat.completions.create(**{**kw, "seed": 8}).choices[0].message.content
    assert c == local.generate("abc", max_tokens=25, temp=0.9, top_p=0.95, seed=8)


def test_models_list(oai):
    ids = [m.id for m in oai.models.list().data]
    assert str(TINY) in ids


def test_ollama_generate_and_chat_equal_generate(oll, local):
    want = local.generate("hi", max_tokens=10)
    r = oll.generate(model="llama_f32", prompt="hi", options={"num_predict": 10, "temperature": 0}, stream=False)
    assert r.response == want and r.done and r.done_reason == "length"
    assert r.eval_count == 10 and r.prompt_eval_count == len(local.encode_prompt("hi"))
    assert r.total_duration > 0 and r.eval_duration >= 0
    parts = list(oll.generate(model="llama_f32", prompt="hi", options={"num_predict": 10}, stream=True))
    assert "".join(p.response for p in parts) == want and parts[-1].done and not parts[0].done
    c = oll.chat(model="llama_f32", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 10},
                 stream=False)
    assert c.message.content == want and c.message.role == "assistant" and c.done_reason == "length"
    chunks = list(oll.chat(model="llama_f32", messages=[{"role": "user", "content": "hi"}],
                           options={"num_predict": 10}, stream=True))
    assert "".join(x.message.content for x in chunks) == want and chunks[-1].eval_count == 10


def test_ollama_raw_and_options(oll, local):
    want = local.generate("1 2 3 4", max_tokens=8, chat_template=False, temp=0.7, seed=3, top_k=20)
    r = oll.generate(model="llama_f32", prompt="1 2 3 4", raw=True,
                     options={"num_predict": 8, "temperature": 0.7, "seed": 3, "top_k": 20}, stream=True)
    assert "".join(p.response for p in r) == want


def test_ollama_info_routes(oll, server):
    assert httpx.get(f"{server.url}/api/version").json()["version"] == mlxedge.__version__
    ps = oll.ps()
    assert [m.model for m in ps.models] == [str(TINY)] and ps.models[0].details.family == "llama"
    show = oll.show("llama_f32")
    assert show.details.family == "llama" and show.modelinfo["context_length"] == 2048
    assert oll.list().models == []  # nothing in this test's store
    with pytest.raises(ollama.ResponseError) as e:
        oll.generate(model="nope:1b", prompt="hi")
    assert e.value.status_code == 404 and "not found" in e.value.error


def test_concurrent_requests_equal_sequential(oai, server):
    def ask(i: int) -> str:  # long enough (through EOS) that the 8 overlap in the scheduler
        return oai.chat.completions.create(model="llama_f32", messages=[{"role": "user", "content": PROMPTS[i]}],
                                           max_tokens=LENGTHS[i] * 4, temperature=0,
                                           extra_body={"ignore_eos": True}).choices[0].message.content

    sched = server.service.registry.get(str(TINY)).scheduler
    one_by_one = [ask(i) for i in range(8)]
    sched.peak_batch = 0
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert together == one_by_one
    assert sched.peak_batch >= 4  # they were decoded together


def test_errors_are_openai_objects(oai, server):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="'n' > 1"):
        oai.chat.completions.create(model="llama_f32", messages=[{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        oai.chat.completions.create(model="llama_f32", messages=[{"role": "user", "content": "hi"}],
                                    presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="'temperature' must be in"):
        oai.chat.completions.create(model="llama_f32", messages=[{"role": "user", "content": "hi"}], temperature=5)
    long = "a" * 2100  # byte-level tokens: one per character, over the context of 2048
    with pytest.raises(openai.BadRequestError, match=r"the prompt is 21\d\d tokens; the model's context is 2048"):
        oai.completions.create(model="llama_f32", prompt=long, max_tokens=2)


def test_malformed_requests_name_the_field(server):
    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b'{"model": "llama_f32", "messages": [', timeout=10)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "llama_f32", "messages": "hi"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url, json={"model": "llama_f32", "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": "10"}, timeout=10)
    assert r.status_code == 400 and "'max_tokens' must be an integer" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/api/generate", json={"model": "llama_f32", "prompt": "hi",
                                                       "options": {"temperature": "hot"}}, timeout=10)
    assert r.status_code == 400 and "'options.temperature'" in r.json()["error"]
    r = httpx.post(f"{server.url}/api/chat", content=b"[1, 2]", timeout=10)
    assert r.status_code == 400 and "must be an object" in r.json()["error"]
    r = httpx.post(url, content=b"x" * 70000, timeout=10)
    assert r.status_code == 413


@pytest.fixture
def slow(server):
    sched = server.service.registry.get(str(TINY)).scheduler
    decode = sched.stepper.decode
    slow_down(sched)
    yield sched
    sched.stepper.decode = decode


def test_disconnect_frees_the_slot(server, slow):
    sched = slow
    body = {"model": "llama_f32", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the stream
        for _ in range(3):
            next(lines)
        assert sched.busy == 1
    assert wait_for(lambda: sched.busy == 0, timeout=10)
    entries = [json.loads(line) for line in (mlxedge.store.audit.log_path()).read_text().splitlines()]
    assert any(e["event"] == "request" and e["outcome"] == "cancelled" and e["completion_tokens"] < 2000
               for e in entries)


def test_disconnect_cancels_a_non_streamed_request(server, slow):
    sched = slow
    body = {"model": "llama_f32", "messages": [{"role": "user", "content": "abc"}], "max_tokens": 2000,
            "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.05)  # the client gives up
    assert wait_for(lambda: sched.busy == 0, timeout=10)
    last = json.loads(mlxedge.store.audit.log_path().read_text().splitlines()[-1])
    assert last["outcome"] == "cancelled" and last["completion_tokens"] < 2000


def test_health_and_metrics(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("mlxedge_requests_total", "mlxedge_generated_tokens_total", "mlxedge_queue_depth",
                 "mlxedge_active_sequences", "mlxedge_time_to_first_token_seconds_bucket",
                 "mlxedge_time_per_output_token_seconds_bucket"):
        assert name in text
    assert 'route="/v1/chat/completions",status="200"' in text


def test_keep_alive_zero_unloads(oll, server):
    oll.generate(model="llama_f32", prompt="hi", options={"num_predict": 2}, keep_alive=0, stream=False)
    assert wait_for(lambda: not server.service.registry.loaded, timeout=5)
    assert oll.ps().models == []
    oll.generate(model="llama_f32", prompt="hi", options={"num_predict": 2}, stream=False)  # loads again
    assert [m.model for m in oll.ps().models] == [str(TINY)]
