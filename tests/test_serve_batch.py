"""Continuous batching changes no result: jobs decoded together give the texts they give alone
(`Generation`, i.e. `mlxedge.load(...).generate`), greedy and seeded, on the tiny bundles and SmolLM2."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

import mlxedge
from mlxedge.backends import mlx as mlx_backend
from mlxedge.backends.numpy import batch
from mlxedge.sampling import SamplingParams
from mlxedge.serve.batch import MlxBatchStepper, stepper_for
from mlxedge.serve.scheduler import Job, Scheduler
from serve_util import ROOT, TINY, Server

PROMPTS = ["hi", "tell me a story", "abc", "1 2 3 4", "the quick brown fox", "x", "hello there", "why?"]


def ids(model, prompt: str) -> list[int]:
    # SmolLM2's template adds a 30-token system prompt: its test feeds raw text to keep prefill short
    return model.encode_prompt(prompt) if model.path == TINY else model.tokenizer.encode(prompt)


def alone(model, prompt: str, max_tokens: int, **sampling) -> tuple[str, list[int]]:
    g = model.generation(ids(model, prompt), max_tokens=max_tokens, **sampling)
    g.run()
    return g.text, g.tokens


def together(model, jobs_spec, max_batch: int = 16) -> tuple[list[Job], Scheduler]:
    """Run jobs submitted at once (so that they are admitted and decoded as one batch)."""
    done = threading.Semaphore(0)
    sched = Scheduler(stepper_for(model.engine), model.tokenizer, max_batch=max_batch)
    jobs = [Job(ids(model, p), SamplingParams(**s), n,
                on_event=lambda e: done.release() if e[0] in ("done", "error") else None)
            for p, n, s in jobs_spec]
    try:
        sched.submit(*jobs)
        for _ in jobs:
            assert done.acquire(timeout=120)
    finally:
        sched.close()
    return jobs, sched


def check_batch_equals_alone(model, n_tokens: list[int], sampling: list[dict]):
    spec = list(zip(PROMPTS, n_tokens, sampling))
    jobs, sched = together(model, spec)
    # all were prefilled before the first step, which then decoded every one not done at its first token
    assert sched.peak_batch == sum(len(j.tokens) > 1 for j in jobs) >= len(spec) - 2
    for job, (p, n, s) in zip(jobs, spec):
        text, tokens = alone(model, p, n, **s)
        assert (job.text, job.tokens) == (text, tokens), p


def test_tiny_batch_of_8_equals_one_at_a_time():
    model = mlxedge.load(TINY, backend="numpy")
    sampling = [{}] * 4 + [{"temp": 0.8, "seed": i, "top_k": 30} for i in range(4)]
    check_batch_equals_alone(model, [5, 17, 9, 30, 12, 3, 24, 40], sampling)


def test_decode_step_b1_is_forward_exactly():
    m = mlxedge.load(TINY, backend="numpy").engine.model
    assert batch.supports(m)
    rng = np.random.default_rng(0)
    caches, refs = [], []
    for n in (3, 9, 14):
        ids = rng.integers(0, 250, n)
        c, c2 = m.make_cache(), m.make_cache()
        m.forward(ids, c, last_only=True)
        m.forward(ids, c2, last_only=True)
        refs.append(m.forward([7], c2, last_only=True)[0])
        caches.append(c)
    one = batch.decode_step(m, [7], [caches[0].copy()])[0]
    assert np.array_equal(one, refs[0])
    many = batch.decode_step(m, [7, 7, 7], caches)
    np.testing.assert_allclose(many, np.stack(refs), atol=1e-4)
    assert [c.offset for c in caches] == [4, 10, 15]
    # prompts (several tokens per sequence): one segment is forward exactly, several are close
    prompt = list(range(5, 40))
    whole = m.forward(prompt, m.make_cache(), last_only=True)[0]
    assert np.array_equal(batch.extend_step(m, [prompt], [m.make_cache()])[0], whole)
    c = m.make_cache()
    m.forward(prompt[:20], c)
    rows = batch.extend_step(m, [prompt[20:], prompt[:7]], [c, m.make_cache()])
    np.testing.assert_allclose(rows, np.stack([whole, m.forward(prompt[:7], m.make_cache(), last_only=True)[0]]),
                               atol=1e-4)
    assert c.offset == len(prompt)


def test_unbatched_family_is_served_sequence_by_sequence():
    model = mlxedge.load(ROOT / "tests" / "goldens" / "tiny" / "gemma3_f16", backend="numpy")
    assert not stepper_for(model.engine).batched
    jobs, _ = together(model, [(p, 6, {}) for p in PROMPTS[:4]])
    assert [j.text for j in jobs] == [alone(model, p, 6)[0] for p in PROMPTS[:4]]


@pytest.mark.skipif(not mlx_backend.is_available(), reason="mlx not installed")
def test_mlx_backend_batches_with_mlx_lm_and_equals_generate(tmp_path, monkeypatch):
    model = mlxedge.load(TINY, backend="mlx")
    lengths = (4, 9, 6, 12, 5, 3, 7, 8)
    want = [model.generate(p, max_tokens=n) for p, n in zip(PROMPTS, lengths)]
    jobs, sched = together(model, [(p, n, {}) for p, n in zip(PROMPTS, lengths)])
    assert isinstance(sched.stepper, MlxBatchStepper) and not sched.stepper.seqs  # all released
    assert [j.text for j in jobs] == want
    monkeypatch.setenv("MLXEDGE_HOME", str(tmp_path))
    with Server("--model", str(TINY), "--backend", "mlx") as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", timeout=60, max_retries=0)
        ask = lambda i: client.chat.completions.create(  # noqa: E731
            model="llama_f32", messages=[{"role": "user", "content": PROMPTS[i]}],
            max_tokens=lengths[i]).choices[0].message.content
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(ask, range(8))) == want


def test_smollm2_batch_of_8_equals_one_at_a_time(smollm2_gguf):
    model = mlxedge.load(smollm2_gguf, backend="numpy")
    check_batch_equals_alone(model, [6, 4, 6, 5, 3, 6, 4, 6], [{}] * 6 + [{"temp": 0.7, "seed": 1}] * 2)


def test_prompt_cache_reuses_a_shared_prefix_and_changes_no_reply():
    model = mlxedge.load(TINY, backend="numpy")
    first = [{"role": "user", "content": "tell me a story"}]
    reply = model.generate("tell me a story", max_tokens=10)
    second = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "and then?"}]
    jobs_spec = [("tell me a story", 10, {})]
    jobs, sched = together(model, jobs_spec)
    pc = sched.stepper.prompt_cache
    assert pc.entries and pc.hits == 0
    done = threading.Semaphore(0)
    sched = Scheduler(sched.stepper, model.tokenizer)
    ids2 = model.tokenizer.encode_chat(second)
    job = Job(ids2, SamplingParams(), 12, on_event=lambda e: done.release() if e[0] == "done" else None)
    sched.submit(job)
    assert done.acquire(timeout=60)
    sched.close()
    assert pc.hits == 1 and pc.reused_tokens >= len(model.encode_prompt("tell me a story"))
    g = model.generation(ids2, max_tokens=12)
    g.run()
    assert job.text == g.text


def test_prompt_cache_is_bounded_in_bytes():
    from mlxedge.serve.prompt_cache import PromptCache

    m = mlxedge.load(TINY, backend="numpy").engine.model
    caches = []
    for n in (20, 30, 40):
        c = m.make_cache()
        m.forward(list(range(1, n + 1)), c)
        caches.append((list(range(1, n + 1)), c))
    one = caches[0][1].copy().nbytes
    pc = PromptCache(max_bytes=int(one * 2.6), min_tokens=4)
    for tokens, c in caches:
        pc.store([t + 100 * len(tokens) for t in tokens], c)  # three unrelated prompts
    assert pc.nbytes <= pc.max_bytes and len(pc.entries) == 1  # the oldest two dropped
    pc.store(caches[0][0], caches[0][1])
    hit = pc.lookup(caches[0][0][:10] + [250, 251])
    assert hit is not None and hit[1] == 10 and hit[0].offset == 10
    assert pc.lookup([9, 9, 9, 9, 9, 9]) is None


def test_smollm2_int8_batch_of_8_equals_one_at_a_time(smollm2_gguf):
    """int8 activations: each row is rounded and multiplied alone (test_gemm.py), so batching
    changes no token here either."""
    model = mlxedge.load(smollm2_gguf, backend="numpy", matmul="onnxruntime-int8")
    assert model.engine.matmul == "onnxruntime-int8"
    check_batch_equals_alone(model, [6, 4, 6, 5, 3, 6, 4, 6], [{}] * 6 + [{"temp": 0.7, "seed": 1}] * 2)
