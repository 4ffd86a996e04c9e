"""The shared generation loop: backends agree with mlx-lm, stop strings, UTF-8 streaming, chat cache reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlxedge.chat import ChatSession, common_prefix
from mlxedge.engine import Generation, StopStrings
from mlxedge.sampling import SamplingParams
from mlxedge.tokenizer import Tokenizer

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import mlxedge  # noqa: E402
from tiny_models import tiny_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    return {
        "llama": tiny_bundle("llama", root / "llama"),
        "qwen3-q4": tiny_bundle("qwen3", root / "qwen3", quantize={"bits": 4, "group_size": 32}, seed=1),
        "gemma3": tiny_bundle("gemma3_text", root / "gemma3", seed=2),  # sliding-window layers
    }


def mlx_lm_greedy(directory: Path, ids: list[int], n: int, penalty: float | None) -> list[int]:
    """The oracle: mlx-lm's own loader, generate_step and repetition penalty, greedy."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_logits_processors
    from mlx_lm.utils import load_model

    model, _ = load_model(directory)
    processors = make_logits_processors(repetition_penalty=penalty, repetition_context_size=20)
    return [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=n, logits_processors=processors)]


@pytest.mark.parametrize("penalty", [None, 3.0])  # the penalty keeps random models from repeating one token
@pytest.mark.parametrize("name", ["llama", "qwen3-q4", "gemma3"])
def test_greedy_tokens_equal_mlx_lm_on_both_backends(bundles, name, penalty):
    prompt = "héllo wörld, a longer prompt so the sliding window is passed"
    n = 24
    expected = None
    for backend in ("numpy", "mlx"):
        m = mlxedge.load(bundles[name], backend=backend)
        assert m.backend == backend
        ids = m.encode_prompt(prompt)
        if expected is None:
            expected = mlx_lm_greedy(bundles[name], ids, n, penalty)
        gen = m.generation(ids, max_tokens=n, repetition_penalty=penalty)
        gen.run()
        # tiny_bundle's eos ids are 256/258; a random model may emit one, which ends the run early
        assert gen.tokens == expected[: len(gen.tokens)], backend
        assert len(gen.tokens) == n or gen.tokens[-1] in m.tokenizer.eos_token_ids
    if penalty:
        assert len(set(expected)) >= n // 2


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_seed_makes_sampling_reproducible(bundles, backend):
    m = mlxedge.load(bundles["llama"], backend=backend)
    runs = [m.generation(m.encode_prompt("hi"), max_tokens=16, temp=1.0, seed=s) for s in (7, 7, 8)]
    for g in runs:
        g.run()
    assert runs[0].tokens == runs[1].tokens
    assert runs[0].tokens != runs[2].tokens


# -- the loop itself, with a scripted engine: the oracle is the script -------------------------

class Scripted:
    """An engine that 'samples' a fixed token list; its cache is a token counter."""

    name = "scripted"

    def __init__(self, script: list[int]):
        self.script = script

    def make_cache(self):
        return {"n": 0}

    def cache_length(self, cache) -> int:
        return cache["n"]

    def trim_cache(self, cache, n: int) -> bool:
        cache["n"] -= n
        return True

    def token_stream(self, ids, cache, params, history):
        cache["n"] += len(ids)
        for t in self.script:
            yield t
            cache["n"] += 1

    def peak_memory(self) -> int:
        return 0


@pytest.fixture(scope="module")
def byte_tok(bundles) -> Tokenizer:
    return Tokenizer(bundles["llama"])  # one token per byte; 258 = <|im_end|> is EOS


def scripted(byte_tok, text: str, **kw) -> tuple[Generation, list[str]]:
    gen = Generation(Scripted(list(text.encode("utf-8"))), byte_tok, [1, 2, 3], SamplingParams(), **kw)
    return gen, list(gen)


def test_stream_pieces_are_whole_characters(byte_tok):
    text = "日本語 — naïve 🎉🎉 ok"
    gen, pieces = scripted(byte_tok, text, max_tokens=1000)
    assert "".join(pieces) == gen.text == text
    assert all("\ufffd" not in p for p in pieces)
    assert gen.stats.finish_reason == "length" and gen.stats.generation_tokens == len(text.encode())


@pytest.mark.parametrize("stop,expected", [
    ("</stop>", "answer: 42 "),  # 7 tokens, one per byte
    ("日本", "answer: 42 </stop> and "),  # a stop string made of split multi-byte characters
    (" 42", "answer:"),
])
def test_stop_string_spanning_tokens(byte_tok, stop, expected):
    text = "answer: 42 </stop> and 日本語 more"
    gen, pieces = scripted(byte_tok, text, stop=[stop, "never"], max_tokens=1000)
    assert gen.text == "".join(pieces) == expected
    assert not any(stop in p for p in pieces)
    assert gen.stats.finish_reason == "stop"
    # generation ended at the token completing the stop string
    assert gen.tokens == list(text.encode())[: len((expected + stop).encode())]


def test_held_back_text_is_released_when_it_is_not_a_stop(byte_tok):
    gen, pieces = scripted(byte_tok, "a </sto b </st", stop=["</stop>"], max_tokens=1000)
    assert gen.text == "a </sto b </st" and gen.stats.finish_reason == "length"


def test_held_back_text_is_released_at_eos(byte_tok):
    script = list("a </st".encode()) + [258]
    gen = Generation(Scripted(script), byte_tok, [1], SamplingParams(), stop=["</stop>"], max_tokens=100)
    assert gen.run() == "a </st" and gen.stats.finish_reason == "eos"


def test_stop_strings_unit():
    s = StopStrings(["</stop>", "END"])
    assert s.feed("foo</") == "foo"  # "</" may begin "</stop>"
    assert s.feed("st") == ""
    assert s.feed("x E") == "</stx "
    assert s.feed("NDING") == ""
    assert s.stopped


def test_eos_ends_without_text_and_max_tokens_counts(byte_tok):
    script = list("hi".encode()) + [258] + list("never shown".encode())
    gen = Generation(Scripted(script), byte_tok, [1], SamplingParams(), max_tokens=100)
    assert gen.run() == "hi" and gen.stats.finish_reason == "eos" and gen.tokens == script[:3]
    gen = Generation(Scripted(script), byte_tok, [1], SamplingParams(), max_tokens=2)
    assert gen.run() == "hi" and gen.stats.finish_reason == "length"


def test_should_stop_interrupts_between_tokens(byte_tok):
    calls = []
    gen = Generation(Scripted(list(b"abcdefgh")), byte_tok, [1, 2], SamplingParams(), max_tokens=100,
                     should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert gen.run() == "abc" and gen.stats.finish_reason == "interrupted"
    assert gen.cache_tokens == [1, 2, *b"abc"][: gen.engine.cache_length(gen.cache)]


# -- chat: the second turn feeds only the new tokens ------------------------------------------

@pytest.mark.parametrize("name", ["llama", "gemma3"])
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_chat_reuses_cache(bundles, name, backend):
    m = mlxedge.load(bundles[name], backend=backend)
    session = ChatSession(m, system="be brief", max_tokens=6)
    first_prompt = m.tokenizer.encode_chat(session.messages + [{"role": "user", "content": "hello"}])
    "".join(session.send("hello"))
    turn1 = session.last
    assert turn1.stats.prompt_tokens == len(first_prompt)  # the first turn feeds everything
    # what the cache holds, by the engine's own count (mlx-lm's holds the last token, ours does not)
    held = (first_prompt + turn1.tokens)[: m.engine.cache_length(session.cache)]

    messages = session.messages + [{"role": "user", "content": "and again?"}]
    full = m.tokenizer.encode_chat(messages)
    reused = common_prefix(held, full)
    assert reused >= len(first_prompt)
    new_ids = session.prepare(messages)
    if session.model.engine.cache_length(session.cache) == 0:
        # mlx-lm's rotating cache (gemma3 sliding layers) cannot be trimmed once past its window
        assert backend == "mlx" and name == "gemma3"
        reused = 0
    assert new_ids == full[reused:]
    # logits from the trimmed cache equal a fresh run over the whole conversation
    cached = m.engine.forward(new_ids, session.cache)
    fresh = m.logits(full)
    np.testing.assert_allclose(cached, fresh[reused:], atol=2e-4, rtol=1e-4)

    # the same through send(): the number of tokens fed is the new part only
    session2 = ChatSession(m, system="be brief", max_tokens=6)
    "".join(session2.send("hello"))
    "".join(session2.send("and again?"))
    assert session2.last.stats.prompt_tokens == len(full) - reused
    assert session2.messages[-1]["role"] == "assistant" and len(session2.messages) == 5


def test_chat_after_interrupt_and_reset(bundles):
    m = mlxedge.load(bundles["llama"], backend="numpy")
    session = ChatSession(m, max_tokens=20)
    for piece in session.send("hello"):
        break  # the reader stops early, between tokens: the cache stays usable
    assert len(session.cache_tokens) == m.engine.cache_length(session.cache) > 0
    messages = session.messages + [{"role": "user", "content": "more"}]
    new_ids = session.prepare(messages)
    full = m.tokenizer.encode_chat(messages)
    np.testing.assert_allclose(m.engine.forward(new_ids, session.cache), m.logits(full)[-len(new_ids):],
                               atol=2e-4, rtol=1e-4)
    session.reset()
    assert session.messages == [] and session.cache is None


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_penalty_context_spans_earlier_turns(bundles, backend):
    """With tokens already in the cache, the repetition penalty still sees them: the result equals
    one fresh run over the whole sequence (mlx-lm's generate_step alone would only see new tokens)."""
    m = mlxedge.load(bundles["llama"], backend=backend)
    ids = m.encode_prompt("a prompt split in two parts, the first of them cached")
    head, tail = ids[:-3], ids[-3:]
    fresh = m.generation(ids, max_tokens=12, repetition_penalty=3.0, repetition_context_size=30)
    fresh.run()
    cache = m.engine.make_cache()
    m.engine.forward(head, cache)
    split = Generation(m.engine, m.tokenizer, tail, SamplingParams(repetition_penalty=3.0,
                       repetition_context_size=30), max_tokens=12, cache=cache, history=head)
    split.run()
    assert split.tokens == fresh.tokens
    assert split.stats.prompt_tokens == 3


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_python_api(bundles, backend):
    from mlx_lm.utils import load_model

    m = mlxedge.load(str(bundles["qwen3-q4"]), backend=backend)
    ids = m.tokenizer.encode("some text")
    model, _ = load_model(bundles["qwen3-q4"])  # oracle: mlx-lm's forward pass
    expected = np.array(model(mx.array(ids)[None])[0].astype(mx.float32))
    logits = m.logits(ids)
    assert logits.shape == (len(ids), 320) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-4)
    pieces = list(m.stream("hi", max_tokens=10, repetition_penalty=3.0))
    assert "".join(pieces) == m.generate("hi", max_tokens=10, repetition_penalty=3.0)
    with pytest.raises(TypeError):
        m.generate("hi", temperature=0.5)  # a misspelt option is not silently ignored
