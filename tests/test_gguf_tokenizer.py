"""Tokenizer files rebuilt from a GGUF tokenize exactly like llama.cpp (goldens in tests/goldens/)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path

import pytest

from mlxedge import assets
from mlxedge.errors import MlxEdgeError
from mlxedge.formats.gguf_tokenizer import (
    GEMMA_CHAT_TEMPLATE,
    chat_template,
    generation_config,
    gguf_metadata,
    tokenizer_files,
)

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")

GOLDENS = Path(__file__).parent / "goldens"
MODELS = {"smollm2": assets.smollm2_gguf, "gemma3": assets.gemma3_gguf}


@functools.lru_cache(maxsize=None)
def _metadata(name: str) -> dict:
    try:
        path = MODELS[name]()
    except MlxEdgeError as e:
        pytest.skip(f"real model {name} not installed: {e}")
    return gguf_metadata(path)


def _golden(filename: str) -> dict:
    path = GOLDENS / filename
    if not path.is_file():
        pytest.skip(f"no llama.cpp golden {filename}; run scripts/record_llamacpp_goldens.py")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=list(MODELS))
def model(request, tmp_path_factory):
    """(name, GGUF metadata, tokenizer files written to a directory, llama.cpp golden)."""
    name = request.param
    meta = _metadata(name)
    golden = _golden(f"{name}.json")
    files = tokenizer_files(meta)
    out = tmp_path_factory.mktemp(name)
    for fname, obj in files.items():
        (out / fname).write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return name, meta, out, golden


@pytest.fixture(scope="module")
def tok(model):
    return tokenizers.Tokenizer.from_file(str(model[2] / "tokenizer.json"))


@pytest.fixture(scope="module")
def auto(model):
    """transformers' tokenizer for the directory, as mlx-lm loads it (config + tokenizer.json)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(model[2]))


def _mismatches(tok, entries, key):
    bad = []
    for e in entries:
        got = tok.encode(e["text"], add_special_tokens=False).ids
        if got != e[key]:
            bad.append((e["text"], got, e[key]))
    return bad


def test_ids_equal_llamacpp_parse_special(model, tok):
    entries = model[3]["tokenization"]
    bad = _mismatches(tok, entries, "ids")
    assert not bad, f"{len(bad)}/{len(entries)} differ, first: {bad[:3]}"


def test_ids_equal_llamacpp_without_special(model, tok):
    # llama.cpp's parse_special=False: control tokens are plain text, user-defined ones still match.
    tok.encode_special_tokens = True
    try:
        entries = model[3]["tokenization"]
        bad = _mismatches(tok, entries, "ids_no_special")
    finally:
        tok.encode_special_tokens = False
    assert not bad, f"{len(bad)}/{len(entries)} differ, first: {bad[:3]}"


def test_bos_follows_gguf(model, tok):
    name, meta, out, golden = model
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] == golden["vocab"]["add_bos"]
    assert config["add_eos_token"] == golden["vocab"]["add_eos"]
    for e in golden["add_special"]:
        assert tok.encode(e["text"], add_special_tokens=True).ids == e["ids"], e["text"]


def test_decode_equals_llamacpp(model, tok):
    # Mostly the text itself; not where llama.cpp is lossy too (bytes SmolLM2 lacks, Gemma's U+2581).
    entries = model[3]["tokenization"]
    bad = [e["text"] for e in entries if tok.decode(e["ids"], skip_special_tokens=False) != e["detokenized"]]
    assert not bad, f"{len(bad)}/{len(entries)} decode differently, first: {bad[:3]}"
    assert sum(e["detokenized"] == e["text"] for e in entries) > 0.75 * len(entries)


def test_evaluation_text_ids(model, tok):
    """The first 256 tokens of the recorded text (the NumPy license head), BOS included if added."""
    source = model[3]["eval"]["text_source"]
    try:
        dist = importlib.metadata.distribution(source["distribution"])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{source['distribution']} not installed")
    files = [f for f in dist.files or [] if str(f).endswith("licenses/LICENSE.txt")]
    if not files:
        pytest.skip(f"{source['distribution']} {dist.version} ships no licenses/LICENSE.txt")
    full = Path(dist.locate_file(files[0])).read_text(encoding="utf-8")
    text = full[: full.index("\n----")].rstrip("\n") + "\n"
    if hashlib.sha256(text.encode()).hexdigest() != source["text_sha256"]:
        pytest.skip(f"numpy {dist.version}'s license text differs from the recorded one ({source['version']})")
    ids = model[3]["eval"]["ids"]
    assert tok.encode(text, add_special_tokens=True).ids[: len(ids)] == ids


def test_generation_config_stops_where_llamacpp_does(model):
    name, meta, out, golden = model
    gen = generation_config(meta)
    facts = golden["vocab"]
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert eos[0] == facts["eos"]
    assert set(eos) <= set(facts["eog"])
    if facts["eot"] >= 0:
        assert facts["eot"] in eos
    assert gen["bos_token_id"] == facts["bos"]
    assert gen.get("pad_token_id", -1) == facts["pad"]


def test_transformers_tokenizer_file_alone(model):
    # Without tokenizer_config.json, BOS comes from tokenizer.json's post-processor alone.
    transformers = pytest.importorskip("transformers")
    name, meta, out, golden = model
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    for e in golden["tokenization"][:40]:
        assert hf.encode(e["text"], add_special_tokens=False) == e["ids"], e["text"]
    for e in golden["add_special"]:
        assert hf.encode(e["text"]) == e["ids"], e["text"]


def test_transformers_directory(model, auto):
    name, meta, out, golden = model
    for e in golden["add_special"]:
        assert auto.encode(e["text"]) == e["ids"], e["text"]
    for e in golden["tokenization"][:40]:
        assert auto.encode(e["text"], add_special_tokens=False) == e["ids"], e["text"]
    assert auto.bos_token == meta["tokenizer.ggml.tokens"][golden["vocab"]["bos"]]
    assert auto.eos_token == meta["tokenizer.ggml.tokens"][golden["vocab"]["eos"]]


def test_chat_template_renders_turns(model, auto):
    name, meta, out, golden = model
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    if name == "gemma3":
        # The packaged Gemma 3 270M is the base model and ships no template: none is invented...
        assert meta.get("tokenizer.chat_template") is None and chat_template(meta) is None
        # ...but an instruction-tuned Gemma GGUF without one gets ours.
        it = {**meta, "general.finetune": "it"}
        auto.chat_template = chat_template(it)
        text = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == (
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        )
    else:
        text = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        )
    # Gemma's rendered prompt carries its BOS, so mlx-lm encodes it without adding another.
    ids = auto.encode(text, add_special_tokens=False)
    first = "<bos>" if name == "gemma3" else "<|im_start|>"
    assert ids[:2] == [auto.convert_tokens_to_ids(first), auto.convert_tokens_to_ids("<start_of_turn>" if name == "gemma3" else "system")]


def test_gemma_template_list_content_and_no_system():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(GEMMA_CHAT_TEMPLATE)
    messages = [{"role": "user", "content": [{"type": "text", "text": " Hi "}]}]
    assert template.render(messages=messages, bos_token="<bos>", add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    )


def test_mlx_lm_loads_the_files(model):
    tokenizer_utils = pytest.importorskip("mlx_lm.tokenizer_utils")
    name, meta, out, golden = model
    wrapper = tokenizer_utils.load(out)
    expected = "SPMStreamingDetokenizer" if name == "gemma3" else "BPEStreamingDetokenizer"
    detok = wrapper.detokenizer
    assert type(detok).__name__ == expected
    text = "Hello  world, café 日本語 👨\u200d👩\u200d👧!\n\nNext line"
    ids = wrapper.encode(text, add_special_tokens=False)
    detok.reset()
    for i in ids:
        detok.add_token(i)
    detok.finalize()
    assert detok.text == text


VARIANTS = _golden("variants.json")["variants"] if (GOLDENS / "variants.json").is_file() else []


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['base']}-{v['changes']}")
def test_other_pre_tokenizers_and_flags(variant):
    """The real vocabularies under other settings (pre-tokenizer regexes, ▁ prefix, default BOS)."""
    meta = dict(_metadata(variant["base"]))
    for key, value in variant["changes"].items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_files(meta)["tokenizer.json"]))
    texts = _golden("variants.json")["texts"]
    bad = [(t, ids) for t, ids in zip(texts, variant["ids"]) if tok.encode(t, add_special_tokens=False).ids != ids]
    assert not bad, f"{len(bad)}/{len(texts)} differ, first: {bad[:3]}"
    assert [tok.encode(t).ids for t in ["", "Hi"]] == variant["add_special"]


def test_fast_metadata_equals_gguf_py(tmp_path):
    try:
        path = assets.smollm2_gguf()
    except MlxEdgeError as e:
        pytest.skip(f"real model smollm2 not installed: {e}")
    assert gguf_metadata(path) == gguf_metadata(gguf.GGUFReader(path))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(MlxEdgeError, match="truncated GGUF file"):
        gguf_metadata(bad)


def test_unknown_tokenizer_model_is_a_clean_error():
    with pytest.raises(MlxEdgeError, match="not supported"):
        tokenizer_files({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(MlxEdgeError, match="pre-tokenizer"):
        tokenizer_files({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nope", "tokenizer.ggml.tokens": ["a"]})
