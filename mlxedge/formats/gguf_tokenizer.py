"""Rebuild Hugging Face tokenizer files from the vocabulary embedded in a GGUF.

The target is llama.cpp's own tokenizer (src/llama-vocab.cpp): the files produced here make the
`tokenizers` library return the same ids as `llama_tokenize(..., parse_special=True)`.

- "gpt2" (byte-level BPE): the GGUF merges in order, and the pre-tokenizer regexes llama.cpp uses
  for `tokenizer.ggml.pre`, applied one after the other (each splits the pieces of the previous one).
- "llama" (SentencePiece as llama.cpp runs it): llama.cpp merges the adjacent pair whose joined text
  is the vocabulary entry with the highest score, leftmost first, and spells leftover characters as
  `<0xXX>` bytes. That is a BPE whose merges are every (left, right) split of every entry, ranked
  by the entry's score, with byte fallback.
- Control tokens are special added tokens, user-defined tokens are plain added tokens: llama.cpp
  cuts both out of the text before the model runs (user-defined ones even without parse_special).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import MlxEdgeError
from .gguf_file import read_header
from .gguf_pretok import LLAMA3 as _LLAMA3, PRE as _PRE, byte_chars

# tokenizer.ggml.token_type values (llama.h `llama_token_type`)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Texts llama.cpp treats as end of generation whatever their type (llama_vocab::impl::load).
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)  # fmt: skip
# ... and the fill-in-the-middle texts it also makes control tokens.
_FIM_TEXTS = (
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
    "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
    "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>",
    "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
    "[PAD]", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
)  # fmt: skip

# Gemma 3 GGUFs may come without a template: turns are <start_of_turn>{user|model}\n...<end_of_turn>\n,
# and Gemma has no system role, so a system prompt opens the first user turn.
GEMMA_CHAT_TEMPLATE = (  # raw strings: the \n escapes are Jinja's, as in Hugging Face templates
    r"{{ bos_token }}"
    r"{%- set ns = namespace(system='') -%}"
    r"{%- for message in messages -%}"
    r"{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    r"{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    r" | map(attribute='text') | join('') -%}{%- endif -%}"
    r"{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + text + '\n\n' -%}"
    r"{%- else -%}"
    r"{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    r"{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + (text | trim)"
    r" + '<end_of_turn>\n' }}"
    r"{%- if role == 'user' -%}{%- set ns.system = '' -%}{%- endif -%}"
    r"{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def gguf_metadata(source) -> dict[str, Any]:
    """GGUF key/value metadata as plain Python values (lists, str, int, float, bool).

    `source` is a `gguf.GGUFReader` (its bookkeeping fields "GGUF.*" are left out) or a path; a path
    is parsed directly, which skips building gguf-py's per-element views (seconds for 262k tokens).
    """
    if isinstance(source, (str, Path)):
        try:
            return read_header(Path(source))[0]
        except (OSError, ValueError) as e:
            raise MlxEdgeError(f"cannot read GGUF metadata from {source}: {e}") from None
    return {name: field.contents() for name, field in source.fields.items() if not name.startswith("GGUF.")}


def tokenizer_files(meta: dict[str, Any]) -> dict[str, dict]:
    """Hugging Face tokenizer files (filename -> JSON object) equivalent to llama.cpp's tokenizer."""
    meta = _checked_tokens(meta)
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        model, normalizer, pre_tokenizer, decoder = _byte_level_bpe(meta)
    elif kind == "llama":
        model, normalizer, pre_tokenizer, decoder = _sentencepiece_bpe(meta)
    else:
        raise MlxEdgeError(f"GGUF tokenizer model {kind!r} is not supported (only 'gpt2' and 'llama')")
    tokens = meta["tokenizer.ggml.tokens"]
    types = _token_types(meta)
    rstrip = _rstrip_ids(meta, types)
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": i in rstrip,
            "normalized": False,
            "special": t != USER_DEFINED,
        }
        for i, t in enumerate(types)
        if t in (CONTROL, USER_DEFINED, UNKNOWN)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": _post_processor(meta),
        "decoder": decoder,
        "model": model,
    }
    special = _special_token_texts(meta)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": _add_bos(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{meta.get('general.architecture')}.context_length") or 1 << 20),
    }
    template = chat_template(meta)
    if template is not None:
        config["chat_template"] = template
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config, "special_tokens_map.json": special}


def generation_config(meta: dict[str, Any]) -> dict:
    """bos/eos/pad ids for generation_config.json; eos lists every end-of-turn token llama.cpp stops on."""
    meta = _checked_tokens(meta)
    out: dict[str, Any] = {}
    bos = _token_id(meta, "bos")
    if bos is not None:
        out["bos_token_id"] = bos
    eos = _stop_ids(meta)
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    pad = _token_id(meta, "padding")
    if pad is not None:
        out["pad_token_id"] = pad
    return out


def chat_template(meta: dict[str, Any]) -> Optional[str]:
    """The GGUF's chat template; for an instruction-tuned Gemma GGUF that ships none, ours.

    A base model gets none, so `generate` does raw completion on it (Gemma's vocabulary has the
    turn tokens either way; base Gemma 3 270M answers a templated prompt with noise).
    """
    template = meta.get("tokenizer.chat_template")
    if template:
        return template
    tokens = set(meta["tokenizer.ggml.tokens"][:1024])
    label = f"{meta.get('general.finetune', '')} {meta.get('general.name', '')}"
    instruct = re.search(r"(?i)\b(it|instruct|chat)\b", label) is not None
    if str(meta.get("general.architecture", "")).startswith("gemma") and "<start_of_turn>" in tokens and instruct:
        return GEMMA_CHAT_TEMPLATE
    return None


# --- the two model kinds ---------------------------------------------------------------------


def _byte_level_bpe(meta: dict) -> tuple[dict, Any, Any, dict]:
    pre = meta.get("tokenizer.ggml.pre") or "default"
    if pre not in _PRE:
        raise MlxEdgeError(f"GGUF pre-tokenizer {pre!r} is not supported yet")
    regexes, ignore_merges = _PRE[pre]
    if "tokenizer.ggml.merges" not in meta:
        raise MlxEdgeError("GGUF 'gpt2' tokenizer has no tokenizer.ggml.merges")
    merges = []
    for line in meta["tokenizer.ggml.merges"]:
        cut = line.find(" ", 1)  # llama.cpp splits at the first space after the first character
        if cut < 0:
            raise MlxEdgeError(f"bad GGUF merge {line!r}")
        merges.append([line[:cut], line[cut + 1 :]])
    splits = [
        {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in regexes
    ]
    splits.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False})
    # A byte the vocabulary lacks (SmolLM2 has none for 0x04, 0xF2, ...) is dropped by both, but
    # llama.cpp drops it after merging, so it keeps its neighbours apart: cut the word there.
    vocab = set(meta["tokenizer.ggml.tokens"])
    missing = "".join(c for c in byte_chars() if c not in vocab)
    if missing:
        pattern = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in missing) + "]"
        splits.append({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False})
    pre_tokenizer = {"type": "Sequence", "pretokenizers": splits}
    model = _bpe_model(meta, merges, byte_fallback=False, ignore_merges=ignore_merges, unk=None)
    decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return model, None, pre_tokenizer, decoder


def _sentencepiece_bpe(meta: dict) -> tuple[dict, Any, Any, dict]:
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    index = _vocab(tokens)
    pairs, joined = [], []  # every (left, right) split of an entry into two entries; the entry's id
    for tid, text in enumerate(tokens):
        if len(text) < 2 or index[text] != tid:
            continue
        for cut in range(1, len(text)):
            # llama.cpp could also join a lone character that is no entry; tokenizers spells such a
            # character as bytes before merging, so it cannot (in Gemma 3 only ' ' is one, and spaces
            # never reach the model: they become U+2581 first).
            left, right = index.get(text[:cut]), index.get(text[cut:])
            if left is not None and right is not None:
                # the vocabulary's own strings: a million merges of a 262k vocabulary (Gemma 3)
                # would otherwise hold two new copies each (~55 MB)
                pairs.append([tokens[left], tokens[right]])
                joined.append(tid)
    # Best score first; a stable sort keeps equal scores in id order, then split order.
    order = np.argsort(-np.asarray(scores, dtype=np.float64)[joined], kind="stable")
    merges = [pairs[i] for i in order.tolist()]
    normalizer: dict = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    decoder_steps = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if _add_space_prefix(meta):
        normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, normalizer]}
        decoder_steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    unk_id = _token_id(meta, "unknown")
    unk = tokens[unk_id] if unk_id is not None else None
    model = _bpe_model(meta, merges, byte_fallback=True, ignore_merges=False, unk=unk)
    return model, normalizer, None, {"type": "Sequence", "decoders": decoder_steps}


def _bpe_model(meta: dict, merges: list, byte_fallback: bool, ignore_merges: bool, unk: Optional[str]) -> dict:
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": unk,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": byte_fallback,
        "ignore_merges": ignore_merges,
        "vocab": _vocab(meta["tokenizer.ggml.tokens"]),
        "merges": merges,
    }


# --- small helpers ---------------------------------------------------------------------------


def _checked_tokens(meta: dict) -> dict:
    """The metadata with tokens as llama.cpp loads them: an empty one becomes "[EMPTY_<id>]"."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise MlxEdgeError("GGUF has no tokenizer.ggml.tokens")
    if not all(tokens):
        meta = {**meta, "tokenizer.ggml.tokens": [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]}
    if len(set(meta["tokenizer.ggml.tokens"])) != len(tokens):
        raise MlxEdgeError("GGUF vocabulary repeats a token text (llama.cpp refuses such files too)")
    return meta


def _vocab(tokens: list[str]) -> dict[str, int]:
    # llama.cpp's text->id map keeps the last id of a repeated text; a dict built in order does too.
    return {t: i for i, t in enumerate(tokens)}


def _token_types(meta: dict) -> list[int]:
    """Token types as llama.cpp ends up using them: it re-types some tokens by their text."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    index = _vocab(tokens)
    forced = {t: CONTROL for t in _EOG_TEXTS + _FIM_TEXTS}
    # gpt-oss: always rendered; "<|end|>" is a turn separator there, not a stop.
    forced.update(dict.fromkeys(["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"], USER_DEFINED))
    if {"<|return|>", "<|call|>"} <= index.keys() or {"<|calls|>", "<|flush|>"} <= index.keys():
        forced["<|end|>"] = USER_DEFINED
    if "<|tool_response>" in index or "<|plamo:eos|>" in index:
        forced.pop("</s>")  # a plain token in those vocabularies
    for text, kind in forced.items():
        if text in index:
            types[index[text]] = kind
    return types


def _stop_ids(meta: dict) -> list[int]:
    """End-of-generation ids: eos, eot, and the end-of-turn texts llama.cpp stops on.

    Left out: FIM tokens, and "</s>" unless it is the eos (Gemma's "</s>" closes an HTML <s> tag).
    """
    tokens = meta["tokenizer.ggml.tokens"]
    index = _vocab(tokens)
    types = _token_types(meta)
    ids = [i for i in [_token_id(meta, "eos"), _token_id(meta, "eot")] if i is not None]
    ids += [index[t] for t in _EOG_TEXTS if t in index and t != "</s>" and types[index[t]] == CONTROL]
    return list(dict.fromkeys(ids))


def _rstrip_ids(meta: dict, types: list[int]) -> set[int]:
    # llama.cpp eats the spaces after Phi-3's special tokens (all but <unk>, <s>, <|endoftext|>).
    name = str(meta.get("general.name", "")).lower()
    if "phi-3" not in name and "phi3" not in name:
        return set()
    tokens = meta["tokenizer.ggml.tokens"]
    keep = {"<unk>", "<s>", "<|endoftext|>"}
    return {i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED, UNKNOWN) and tokens[i] not in keep}


def _token_id(meta: dict, role: str) -> Optional[int]:
    value = meta.get(f"tokenizer.ggml.{role}_token_id")
    if value is None or not 0 <= int(value) < len(meta["tokenizer.ggml.tokens"]):
        return None
    return int(value)


def _special_token_texts(meta: dict) -> dict[str, Optional[str]]:
    tokens = meta["tokenizer.ggml.tokens"]
    out = {}
    for key, role in [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")]:
        tid = _token_id(meta, role)
        out[key] = tokens[tid] if tid is not None else None
    return out


def _add_bos(meta: dict) -> bool:
    if "tokenizer.ggml.add_bos_token" in meta:
        return bool(meta["tokenizer.ggml.add_bos_token"])
    # llama.cpp's defaults: SentencePiece and Llama-3 style BPE add BOS, other BPE vocabularies don't.
    pre = meta.get("tokenizer.ggml.pre")
    return meta.get("tokenizer.ggml.model") == "llama" or (pre in _PRE and _PRE[pre][0] == [_LLAMA3] and _PRE[pre][1])


def _add_space_prefix(meta: dict) -> bool:
    return bool(meta.get("tokenizer.ggml.add_space_prefix", meta.get("tokenizer.ggml.model") == "llama"))


def _post_processor(meta: dict) -> dict:
    """BOS/EOS exactly when the GGUF says so (transformers 5 reads them from here, not the config)."""
    tokens = meta["tokenizer.ggml.tokens"]
    bos, eos = _token_id(meta, "bos"), _token_id(meta, "eos")
    bos = bos if _add_bos(meta) else None
    eos = eos if meta.get("tokenizer.ggml.add_eos_token") else None

    def sequence(name: str, type_id: int) -> list[dict]:
        ends = [{"SpecialToken": {"id": tokens[i], "type_id": type_id}} for i in (bos, eos) if i is not None]
        return ends[: bos is not None] + [{"Sequence": {"id": name, "type_id": type_id}}] + ends[bos is not None :]

    special = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for i in (bos, eos) if i is not None}
    return {
        "type": "TemplateProcessing",
        "single": sequence("A", 0),
        "pair": sequence("A", 0) + sequence("B", 1),
        "special_tokens": special,
    }
