"""Checks of the tokenizer files a bundle carries (tokenizer.json, tokenizer_config.json,
special_tokens_map.json), shared by the readers (before converting) and the runtime tokenizer."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from ..errors import MlxEdgeError

SMOKE_TEXT = "Hello, world! 12 + 3.5 = 15.5 \u00e9t\u00e9 \u4f60\u597d \U0001f642\n\tend"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def check_config(config: dict, path: str | Path) -> None:
    """tokenizer_config.json / special_tokens_map.json: special tokens are strings or AddedToken
    objects, the chat template a string or a list of named templates."""
    for key in SPECIAL_KEYS:
        value = config.get(key)
        if not (value is None or isinstance(value, str)
                or isinstance(value, dict) and isinstance(value.get("content"), str)):
            raise MlxEdgeError(f"{path}: {key} is {str(value)[:60]!r}, expected a string or {{\"content\": ...}}")
    template = config.get("chat_template")
    if isinstance(template, list):
        ok = all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in template)
    else:
        ok = template is None or isinstance(template, str)
    if not ok:
        raise MlxEdgeError(f"{path}: chat_template is {str(template)[:60]!r}, expected a string "
                           f"or a list of {{\"name\", \"template\"}}")


def check_tokenizer_files(files: dict[str, dict], root: Path, vocab_size: int) -> None:
    """The tokenizer files a converter will write can be loaded, and every id they give is a row of
    the embedding (`vocab_size`)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if name in files:
            check_config(files[name], Path(root) / name)
    path = Path(root) / "tokenizer.json"
    tok = load_tokenizer_json(path)  # the file itself: no JSON round trip of a 30 MB vocabulary
    with tokenizer_errors(path), _rust_panics_silenced():  # one that loads may still fail on a text
        tok.decode(tok.encode(SMOKE_TEXT).ids)
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise MlxEdgeError(f"{root}: tokenizer.json has token id {top}, but the model's vocabulary "
                           f"(embedding rows) is {vocab_size}")


@contextmanager
def tokenizer_errors(path: Path):
    """The tokenizers library's failures on a text (its Rust panics are BaseExceptions) as one line."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MlxEdgeError):
        raise
    except BaseException as e:
        lines = str(e).splitlines() or [type(e).__name__]
        raise MlxEdgeError(f"{path} fails on this text: {lines[0][:200]}") from None


@contextmanager
def _rust_panics_silenced():
    """Rust's panic hook writes a backtrace to fd 2 before the exception reaches Python: hide it
    while a file is being tried out, so that the refusal stays one line."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, AttributeError, ValueError):
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_tokenizer_json(path: Path) -> HFTokenizer:
    try:
        return HFTokenizer.from_file(str(path))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # bare Exceptions on bad files, and pyo3's PanicException (a BaseException)
        lines = str(e).splitlines() or [type(e).__name__]
        raise MlxEdgeError(f"{path} is not a valid tokenizer: {lines[0][:200]}") from None
