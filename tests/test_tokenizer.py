"""The shared tokenizer against transformers (encode, decode, chat templates) and the streaming
detokenizer against Python's own UTF-8 decoding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlxedge.errors import MlxEdgeError
from mlxedge.tokenizer import Tokenizer

TINY_LLAMA = Path("/work/shared/fixtures/onnx/tiny-llama/hf")  # BPE with BOS from its post-processor
TEXTS = ["hello world", "  leading spaces and\ttabs\n\nnew lines", "héllo wörld — 日本語 🎉", "", "<s> not special?"]


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory) -> Path:
    """tiny_bundle's tokenizer: one token per byte, ChatML special tokens, a ChatML template."""
    pytest.importorskip("mlx_lm")
    from tiny_models import tiny_bundle

    return tiny_bundle("llama", tmp_path_factory.mktemp("tok") / "m")


def hf_tokenizer(directory: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def hf_chat_ids(tok, messages, add_generation_prompt=True) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.skipif(not TINY_LLAMA.is_dir(), reason="shared tiny-llama fixture missing")
@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(text):
    ours, theirs = Tokenizer(TINY_LLAMA), hf_tokenizer(TINY_LLAMA)
    ids = ours.encode(text)
    assert ids == theirs(text)["input_ids"]
    assert ids[0] == theirs.bos_token_id  # BOS from the post-processor
    assert ours.encode(text, add_special_tokens=False) == theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3 — é?"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(byte_dir, messages, add_generation_prompt):
    ours, theirs = Tokenizer(byte_dir), hf_tokenizer(byte_dir)
    text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert text == theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=False)
    assert ours.encode_chat(messages, add_generation_prompt) == hf_chat_ids(theirs, messages, add_generation_prompt)


@pytest.mark.skipif(not TINY_LLAMA.is_dir(), reason="shared tiny-llama fixture missing")
def test_chat_ids_have_no_post_processor_bos():
    """The template writes `<s>` itself; transformers encodes the rendering without adding another."""
    ours, theirs = Tokenizer(TINY_LLAMA), hf_tokenizer(TINY_LLAMA)
    ids = ours.encode_chat(CONVERSATIONS[1])
    assert ids == hf_chat_ids(theirs, CONVERSATIONS[1])
    assert ids[:2] != [1, 1]


# Exercises what transformers' template environment adds: trim_blocks/lstrip_blocks, bos_token,
# tojson without HTML escaping, loop controls, raise_exception, namespace.
FANCY_TEMPLATE = """{{ bos_token }}
{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + m['role']) }}
    {% endif %}
    {% if m['role'] == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
<{{ m['role'] }}>{{ m['content'] | tojson }}|{{ {'k': '<&>', 'n': ns.n} | tojson(indent=1) }}
{% endfor %}
{% if add_generation_prompt %}<assistant>{% endif %}"""


@pytest.fixture(scope="module")
def fancy_dir(byte_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fancy")
    for name in ("tokenizer.json", "special_tokens_map.json"):
        shutil.copy(byte_dir / name, d / name)
    cfg = json.loads((byte_dir / "tokenizer_config.json").read_text())
    cfg["chat_template"] = FANCY_TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_template_environment_matches_transformers(fancy_dir):
    ours, theirs = Tokenizer(fancy_dir), hf_tokenizer(fancy_dir)
    for messages in CONVERSATIONS:
        text = ours.apply_chat_template(messages)
        assert text == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert "<&>" in text and text.startswith("<|endoftext|>")


def test_raise_exception_becomes_user_error(fancy_dir):
    with pytest.raises(MlxEdgeError, match="unknown role tool"):
        Tokenizer(fancy_dir).apply_chat_template([{"role": "tool", "content": "x"}])


def test_eos_ids_from_generation_config_and_tokenizer(byte_dir):
    gen = json.loads((byte_dir / "generation_config.json").read_text())["eos_token_id"]  # a list
    tok = Tokenizer(byte_dir)
    assert set(gen) <= tok.eos_token_ids
    assert tok.token_to_id("<|im_end|>") in tok.eos_token_ids


def test_stream_never_breaks_utf8(byte_dir):
    """With one token per byte every multi-byte character is split; each piece must be whole
    characters, and each character must come out as soon as its last byte is in."""
    tok = Tokenizer(byte_dir)
    text = "aé—日本語🎉 x ü\n🎉🎉"
    ids = tok.encode(text, add_special_tokens=False)
    data = text.encode("utf-8")
    assert ids == list(data)  # the oracle below relies on token == byte
    detok = tok.detokenizer()
    shown = ""
    for i, t in enumerate(ids):
        piece = detok.add(t)
        assert "\ufffd" not in piece
        shown += piece
        complete = data[: i + 1].decode("utf-8", errors="ignore")  # whole characters so far
        assert shown == complete
    assert shown + detok.flush() == text


@pytest.mark.skipif(not TINY_LLAMA.is_dir(), reason="shared tiny-llama fixture missing")
def test_stream_equals_one_decode():
    """Concatenated pieces equal transformers' decode of all tokens, random tokens included."""
    ours, theirs = Tokenizer(TINY_LLAMA), hf_tokenizer(TINY_LLAMA)
    rng = np.random.default_rng(0)
    seqs = [ours.encode(t, add_special_tokens=False) for t in TEXTS] + \
           [[int(i) for i in rng.integers(3, ours.vocab_size, 40)] for _ in range(5)]
    for ids in seqs:
        detok = ours.detokenizer()
        out = "".join(detok.add(t) for t in ids) + detok.flush()
        assert out == theirs.decode(ids)


def test_missing_tokenizer_is_user_error(tmp_path):
    with pytest.raises(MlxEdgeError, match="no tokenizer.json"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(MlxEdgeError, match="not a valid tokenizer"):
        Tokenizer(tmp_path)
