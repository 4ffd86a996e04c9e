"""Human-written text that ships on every machine with our dependencies installed, for
perplexity / KL evaluation and calibration without downloads.

Evaluation defaults to NumPy's license; calibration uses other packages' documentation so that
evaluation text stays held out. /usr/share/common-licenses is never used: it is reserved for
independent evaluation.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from .errors import MlxEdgeError


def _dist_file(dist: str, suffix: str) -> str:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise MlxEdgeError(f"text source package {dist!r} is not installed") from None
    rel = next((f for f in d.files or () if str(f).endswith(suffix)), None)
    if rel is None:
        raise MlxEdgeError(f"{dist} has no file ending in {suffix}")
    return Path(d.locate_file(rel)).read_text(encoding="utf-8")


def evaluation_text() -> str:
    """NumPy's BSD license, up to the platform-specific appendix (same on every platform)."""
    full = _dist_file("numpy", "licenses/LICENSE.txt")
    cut = full.find("\n----")
    return (full[:cut] if cut > 0 else full).rstrip("\n") + "\n"


def calibration_text() -> str:
    """Held-out from evaluation: the documentation pages (METADATA) of a few installed packages."""
    parts = []
    for dist in ("jinja2", "tqdm", "safetensors", "tokenizers", "gguf"):
        try:
            parts.append(_dist_file(dist, ".dist-info/METADATA").split("\n\n", 1)[-1])
        except MlxEdgeError:
            continue
    if not parts:
        raise MlxEdgeError("no installed package documentation found for calibration")
    return "\n\n".join(parts)


def windows(tokenizer, text: str, ctx: int, count: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """`text` as token windows of at most `ctx` tokens, each led by BOS where the tokenizer has one.

    count=None: every consecutive window (evaluation); else `count` non-overlapping full windows
    chosen with `seed` (calibration), in text order."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.token_to_id(tokenizer.bos_token) if tokenizer.bos_token else None
    lead = [bos] if bos is not None else []
    step = ctx - len(lead)
    if step < 2:
        raise MlxEdgeError(f"context of {ctx} tokens is too short to score anything")
    if count is None:
        chunks = [np.array(lead + ids[i: i + step], dtype=np.int64) for i in range(0, len(ids), step)]
        chunks = [c for c in chunks if len(c) >= 2]
    else:
        n_windows = max(1, len(ids) // step)
        starts = np.sort(np.random.default_rng(seed).choice(n_windows, size=min(n_windows, count),
                                                             replace=False)) * step
        chunks = [np.array(lead + ids[s: s + step], dtype=np.int64) for s in starts] if len(ids) >= 2 else []
    if not chunks:
        raise MlxEdgeError("the text is too short (fewer than 2 tokens)")
    return chunks
