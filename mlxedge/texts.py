"""Human-written text that ships on every machine with our dependencies installed, for
perplexity / KL evaluation and calibration without downloads.

Evaluation defaults to NumPy's license; calibration uses other packages' documentation so that
evaluation text stays held out. /usr/share/common-licenses is never used: it is reserved for
independent evaluation.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

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
