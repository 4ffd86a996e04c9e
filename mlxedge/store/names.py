"""Model names as Ollama spells them: `[namespace/]name[:tag]`, lowercase, tag `latest` by default."""

from __future__ import annotations

import re

from ..errors import MlxEdgeError

DEFAULT_TAG = "latest"
_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")
_TAG = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
HF_PREFIXES = ("hf.co/", "huggingface.co/")


def parse(text: str) -> tuple[str, str]:
    """(name, tag) for `text`, or MlxEdgeError saying what is wrong with it."""
    name, tag = split(text)
    if name is None:
        raise MlxEdgeError(f"{text!r} is not a model name: use name[:tag] with letters, digits, '.', '_', '-' "
                           f"(e.g. smollm2:135m)")
    return name, tag


def split(text: str) -> tuple[str | None, str]:
    """(name, tag), with name None when `text` is not a well-formed model name."""
    text = text.strip().lower()
    name, _, tag = text.rpartition(":") if ":" in text.rpartition("/")[2] else (text, "", DEFAULT_TAG)
    parts = name.split("/")
    if not name or len(parts) > 4 or not all(_PART.fullmatch(p) for p in parts) or not _TAG.fullmatch(tag):
        return None, tag
    return name, tag


def canonical(text: str) -> str:
    """`name:tag` for `text` (the tag filled in)."""
    name, tag = parse(text)
    return f"{name}:{tag}"


def is_name(text: str) -> bool:
    return split(str(text))[0] is not None


def hf_ref(text: str) -> tuple[str, str | None] | None:
    """(OWNER/REPO, QUANT or None) for `hf.co/OWNER/REPO[:QUANT]`, else None."""
    for prefix in HF_PREFIXES:
        if text.lower().startswith(prefix):
            rest = text[len(prefix):]
            repo, _, quant = rest.partition(":")
            if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
                raise MlxEdgeError(f"{text!r}: expected hf.co/OWNER/REPO[:QUANT]")
            return repo, quant or None
    return None
