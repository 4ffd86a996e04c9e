"""The tokenizer both backends share: `tokenizer.json` through the `tokenizers` library, the
special tokens and chat template from `tokenizer_config.json`, and a streaming detokenizer.

BOS comes from tokenizer.json's post-processor (as in transformers); a rendered chat template is
encoded without it, because templates write their own BOS text.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import MlxEdgeError
from .files import read_json
from .formats.tokenizer_files import SPECIAL_KEYS, check_config, load_tokenizer_json, tokenizer_errors

def _token_text(value: Any) -> str | None:
    """tokenizer_config stores special tokens as strings or AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _as_id_list(value: Any, where: str = "eos_token_id") -> list[int]:
    if value is None:
        return []
    ids = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise MlxEdgeError(f"{where} is {value!r}, expected a token id or a list of token ids")
    return ids


@lru_cache(maxsize=16)
def _compile_template(source: str):
    """Compile a chat template in the environment transformers uses (sandboxed, trim/lstrip blocks)."""
    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class Tokenizer:
    """A bundle's tokenizer: `encode`, `decode`, `apply_chat_template`, `eos_token_ids`, `detokenizer()`."""

    def __init__(self, directory: str | Path, extra_eos_ids: Iterable[int] = ()):
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise MlxEdgeError(f"{directory} has no tokenizer.json")
        self.path = path
        self._tok = load_tokenizer_json(path)
        self.config = read_json(directory / "tokenizer_config.json", missing_ok=True)
        check_config(self.config, directory / "tokenizer_config.json")
        self.special_tokens: dict[str, str] = {}
        for key in SPECIAL_KEYS:
            text = _token_text(self.config.get(key))
            if text is not None:
                self.special_tokens[key] = text
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.chat_template = self._find_template(directory)

        gen = read_json(directory / "generation_config.json", missing_ok=True)
        model_cfg = read_json(directory / "config.json", missing_ok=True)
        eos = set(_as_id_list(gen.get("eos_token_id"), f"{directory / 'generation_config.json'}: eos_token_id"))
        eos |= set(_as_id_list(model_cfg.get("eos_token_id"), f"{directory / 'config.json'}: eos_token_id"))
        eos |= {int(i) for i in extra_eos_ids}
        if self.eos_token is not None and self.token_to_id(self.eos_token) is not None:
            eos.add(self.token_to_id(self.eos_token))
        self.eos_token_ids: frozenset[int] = frozenset(eos)

    def _find_template(self, directory: Path) -> str | None:
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is None and (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        if template is None and (directory / "chat_template.json").is_file():
            template = read_json(directory / "chat_template.json", missing_ok=True).get("chat_template")
        return template or None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` applies the post-processor (BOS for most models)."""
        with tokenizer_errors(self.path):
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        with tokenizer_errors(self.path):
            return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the model's chat template, as transformers does."""
        if self.chat_template is None:
            raise MlxEdgeError("this model has no chat template (use --no-chat-template)")

        context = {**self.special_tokens, "tools": None, "documents": None, **kwargs}
        try:
            return _compile_template(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **context)
        except jinja2.TemplateError as e:
            raise MlxEdgeError(f"chat template: {e}") from None

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered conversation (no post-processor BOS: the template writes its own)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False)

    def detokenizer(self) -> "StreamingDetokenizer":
        return StreamingDetokenizer(self)


class StreamingDetokenizer:
    """Turn tokens into text one at a time without ever emitting half a UTF-8 character.

    It decodes the tokens since the last emitted piece together with the piece before them, so that
    decoders which depend on context (leading spaces, byte fallback) give the same text as one
    `decode` of everything; text ending in U+FFFD (an incomplete byte sequence) waits for more tokens.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self._prefix = 0  # start of the context decoded with each new token
        self._read = 0  # tokens before this index have been emitted

    def add(self, token: int) -> str:
        """Add one token; return the new text that is now final (often "", never a broken character)."""
        self.tokens.append(int(token))
        prefix_text = self.tokenizer.decode(self.tokens[self._prefix:self._read])
        text = self.tokenizer.decode(self.tokens[self._prefix:])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.tokens)
            return text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (at the end of generation)."""
        prefix_text = self.tokenizer.decode(self.tokens[self._prefix:self._read])
        text = self.tokenizer.decode(self.tokens[self._prefix:])
        self._prefix = self._read = len(self.tokens)
        return text[len(prefix_text):]


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer files of a bundle directory."""
    return Tokenizer(directory)
