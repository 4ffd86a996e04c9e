"""The GGUF metadata keys mlxedge reads, each with its expected type and range, checked once as the
header is parsed, so that no reader below ever sees a string where it wants a count, a zero head
count or a token id past the vocabulary.

`{arch}` stands for `general.architecture`. Keys mlxedge does not read pass unchecked; a key it
reads but the file lacks is the reader's business (a default, or a "lacks" error).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import MlxEdgeError

_INTS = {0, 1, 2, 3, 4, 5, 10, 11}
_FLOATS = {6, 12}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

# key -> (kind, low, high): "int", "float", "str", "bool", "ints"/"floats"/"strs" (arrays), "int*" (int
# or array of ints, as per-layer counts are stored). Ranges are inclusive, generous, and keep every
# count far below what could exhaust memory.
SCHEMA: dict[str, tuple] = {
    "general.architecture": ("str",),
    "general.alignment": ("int", 1, 1 << 16),
    "general.name": ("str",),
    "general.finetune": ("str",),
    "general.file_type": ("int", 0, 1 << 16),
    "{arch}.block_count": ("int", 1, 1 << 16),
    "{arch}.context_length": ("int", 1, 1 << 32),
    "{arch}.embedding_length": ("int", 1, 1 << 20),
    "{arch}.feed_forward_length": ("int*", 1, 1 << 22),
    "{arch}.vocab_size": ("int", 1, 1 << 24),
    "{arch}.attention.head_count": ("int*", 1, 1 << 14),
    "{arch}.attention.head_count_kv": ("int*", 1, 1 << 14),
    "{arch}.attention.key_length": ("int", 1, 1 << 16),
    "{arch}.attention.value_length": ("int", 1, 1 << 16),
    "{arch}.attention.layer_norm_rms_epsilon": ("float", 0.0, 1.0),
    "{arch}.attention.sliding_window": ("int", 0, 1 << 32),
    "{arch}.rope.freq_base": ("float", 1e-6, 1e15),
    "{arch}.rope.dimension_count": ("int", 1, 1 << 16),
    "{arch}.rope.scaling.type": ("str",),
    "{arch}.rope.scaling.factor": ("float", 0.0, 1e6),
    "{arch}.rope.scaling.original_context_length": ("int", 0, 1 << 32),
    "tokenizer.ggml.model": ("str",),
    "tokenizer.ggml.pre": ("str",),
    "tokenizer.ggml.tokens": ("strs", 1, 1 << 24),
    "tokenizer.ggml.scores": ("floats",),
    "tokenizer.ggml.token_type": ("ints",),
    "tokenizer.ggml.merges": ("strs", 0, 1 << 25),
    "tokenizer.ggml.bos_token_id": ("token",),
    "tokenizer.ggml.eos_token_id": ("token",),
    "tokenizer.ggml.eot_token_id": ("token",),
    # llama.cpp's converter writes out-of-range placeholders for these; the tokenizer ignores them
    "tokenizer.ggml.unknown_token_id": ("int", -(1 << 63), 1 << 64),
    "tokenizer.ggml.padding_token_id": ("int", -(1 << 63), 1 << 64),
    "tokenizer.ggml.add_bos_token": ("bool",),
    "tokenizer.ggml.add_eos_token": ("bool",),
    "tokenizer.ggml.add_space_prefix": ("bool",),
    "tokenizer.chat_template": ("str",),
}
_PER_TOKEN = ("tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def _found(kind: int, item: int | None, value: Any) -> str:
    """How a stored value reads in an error message: its GGUF type and (a short form of) its value."""
    if kind == 9:
        return f"an array of {len(value)} {_TYPE_NAMES.get(item, '?')}"
    text = repr(value)
    return f"a {_TYPE_NAMES.get(kind, '?')} ({text[:40] + '...' if len(text) > 40 else text})"


def _is_int(kind: int) -> bool:
    return kind in _INTS


def _in_range(x: float, low: float, high: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and low <= x <= high


def check(path: Path, meta: dict, types: dict[str, tuple[int, int | None]]) -> None:
    """Every key of SCHEMA that `meta` holds has the expected type and range; cross-key facts hold."""
    arch = meta.get("general.architecture")
    schema = {k.replace("{arch}", arch) if isinstance(arch, str) else k: v for k, v in SCHEMA.items()}

    def bad(key: str, expected: str, found: str | None = None) -> MlxEdgeError:
        kind, item = types[key]
        return MlxEdgeError(f"{path}: metadata {key} is {found or _found(kind, item, meta[key])}, "
                            f"expected {expected}")

    n_tokens = len(meta["tokenizer.ggml.tokens"]) if types.get("tokenizer.ggml.tokens") == (9, 8) else None
    for key, spec in schema.items():
        if key not in meta or "{arch}" in key:
            continue
        kind, item = types[key]
        value, what = meta[key], spec[0]
        if what == "str" and kind != 8:
            raise bad(key, "a string")
        if what == "bool" and kind != 7:
            raise bad(key, "a bool")
        if what in ("int", "float", "int*"):
            numeric = _is_int(kind) or (what == "float" and kind in _FLOATS)
            array_ok = what == "int*" and kind == 9 and item in _INTS
            if not (numeric or array_ok):
                expected = {"int": "an integer", "float": "a number", "int*": "an integer or an array of integers"}
                raise bad(key, f"{expected[what]} in [{spec[1]}, {spec[2]}]")
            if array_ok and not value:
                raise bad(key, "a non-empty array")
            for x in value if array_ok else [value]:
                if not _in_range(x, spec[1], spec[2]):
                    noun = "a number" if what == "float" else "integers" if array_ok else "an integer"
                    raise bad(key, f"{noun} in [{spec[1]}, {spec[2]}]",
                              f"{x!r}" if not array_ok else f"an array holding {x!r}")
        if what in ("strs", "ints", "floats"):
            want = {"strs": {8}, "ints": _INTS, "floats": _FLOATS | _INTS}[what]
            if kind != 9 or item not in want:
                raise bad(key, f"an array of {what[:-1].replace('str', 'string')}s")
            if len(spec) > 1 and not spec[1] <= len(value) <= spec[2]:
                raise bad(key, f"between {spec[1]} and {spec[2]} items")
        if what == "token":
            if not _is_int(kind):
                raise bad(key, "an integer token id")
            if n_tokens is not None and not 0 <= value < n_tokens:
                raise bad(key, f"a token id below the vocabulary size {n_tokens}", f"{value}")

    align = meta.get("general.alignment")
    if align is not None and align & (align - 1):
        raise bad("general.alignment", "a power of two", f"{align}")
    for key in _PER_TOKEN:
        if key in meta and n_tokens is not None and len(meta[key]) != n_tokens:
            raise bad(key, f"one entry per token ({n_tokens})")
