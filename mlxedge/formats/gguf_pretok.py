"""llama.cpp's pre-tokenizer regexes per `tokenizer.ggml.pre`, and GPT-2's byte-level alphabet."""

from __future__ import annotations

# The regexes are llama.cpp's own spellings, which differ from the tokenizer.json originals where
# its engine differs: contractions spelled '[sS] (not (?i:'s), which also takes "'ſ"), and GPT-4o /
# Tekken letters as "(?=\p{L})[^a-z]", so combining marks (U+FE0F...) are not part of a word.
# The GPT-2 split also ends with `\s+`: llama.cpp's hand-written version of it does.
_S = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = _S + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _S + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (
    _S + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UPPER = r"((?=[\p{L}])([^a-z]))"  # a letter that is not a-z
_LOWER = r"((?=[\p{L}])([^A-Z]))"
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_S}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_S}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> (regexes applied in turn, ignore_merges), as in llama_vocab::impl::load and
# llm_tokenizer_bpe. Qwen3 GGUFs say "qwen2"; Phi-3 is SentencePiece, Phi-2 "phi-2", Phi-4 "dbrx".
PRE: dict[str, tuple[list[str], bool]] = {}
for _names, _regexes, _ignore in [
    (("default",), [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], False),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), [LLAMA3], True),
    (("dbrx", "smaug-bpe"), [LLAMA3], False),
    (("chatglm-bpe",), [LLAMA3], False),
    (("glm4", "glm5"), [LLAMA3], True),
    (("qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan", "megrez"), [_QWEN2], False),
    (("qwen35",), [_QWEN35], False),
    (("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "roberta-bpe", "trillion", "granite-docling"), [_GPT2], False),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"),
     [r"\p{N}", _GPT2], False),
    (("falcon",), [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"], False),
    (("gpt-4o", "llama4"), [_GPT4O], False),
    (("tekken",), [_TEKKEN], False),
]:
    for _name in _names:
        PRE[_name] = (_regexes, _ignore)

def byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: byte b is spelled by the character at index b."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:  # unprintable bytes move past 255, in order
            chars.append(chr(256 + extra))
            extra += 1
    return chars
