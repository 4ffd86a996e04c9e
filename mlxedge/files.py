"""Small file helpers every layer uses: JSON objects read with one-line errors, hashing streams."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import MlxEdgeError

CHUNK = 1 << 22  # bytes read at a time when hashing or copying


def read_json(path: str | Path, missing_ok: bool = False) -> dict:
    """A JSON object file; {} for a missing file when `missing_ok`; else one line saying why not."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MlxEdgeError(f"{path} does not exist") from None
    except (OSError, ValueError, RecursionError) as e:
        raise MlxEdgeError(f"{path} is unreadable: {str(e)[:200] or type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise MlxEdgeError(f"{path} is a JSON {type(obj).__name__}, expected an object")
    return obj


def pump(src, h, dst=None, progress=None) -> None:
    """Stream the binary file object `src` into the hash `h` (and `dst`, if given) a chunk at a time."""
    while chunk := src.read(CHUNK):
        h.update(chunk)
        if dst is not None:
            dst.write(chunk)
        if progress is not None:
            progress.update(len(chunk))


def sha256_file(path: str | Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        pump(f, h, progress=progress)
    return h.hexdigest()
