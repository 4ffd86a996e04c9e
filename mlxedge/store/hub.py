"""`hf.co/OWNER/REPO[:QUANT]`: one GGUF from a Hugging Face Hub repo, through huggingface_hub's cache.

Online, the repo's file list picks the file and `hf_hub_download` fetches it (resumable, its own
cache). Offline (HF_HUB_OFFLINE=1, or the Hub unreachable) the cached snapshot is used as is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import huggingface_hub  # lazy: its submodules load on first use

from ..errors import MlxEdgeError

_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pick(names: list[str], quant: str | None, repo: str) -> str:
    """The GGUF among `names` whose file name contains `quant` (case-insensitive); the first split."""
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf") and not _SPLIT.search(n)
                   or _SPLIT.search(n) and _SPLIT.search(n).group(1) == "00001")
    if quant:
        q = quant.lower()
        ggufs = [n for n in ggufs if re.search(rf"(^|[-_.]){re.escape(q)}([-_.]|$)", Path(n).name.lower())]
    if not ggufs:
        raise MlxEdgeError(f"hf.co/{repo}: no GGUF file{f' for {quant}' if quant else ''} "
                           f"(files: {', '.join(sorted(names))[:200] or 'none'})")
    if len(ggufs) > 1:
        if quant is None:
            raise MlxEdgeError(f"hf.co/{repo} has several GGUF files; name one, e.g. hf.co/{repo}:Q4_K_M "
                               f"({', '.join(Path(n).name for n in ggufs)[:200]})")
        ggufs = sorted(ggufs, key=len)[:1]
    if _SPLIT.search(ggufs[0]):
        raise MlxEdgeError(f"hf.co/{repo}: {ggufs[0]} is split; pull the splits with huggingface-cli and "
                           f"`mlxedge pull` the first one")
    return ggufs[0]


def locate(repo: str, quant: str | None) -> tuple[Path, str | None]:
    """(path of the GGUF in the Hub cache, its sha256 when the cache names the blob by it)."""
    cache = hub_cache()
    path = None
    if not offline():
        try:
            names = huggingface_hub.list_repo_files(repo)
        except huggingface_hub.errors.RepositoryNotFoundError:
            raise MlxEdgeError(f"hf.co/{repo}: no such repository (or it is private)") from None
        except Exception as e:  # no network: fall back on the cache below
            names, network_error = None, e
        if names is not None:
            try:
                path = Path(huggingface_hub.hf_hub_download(repo, pick(names, quant, repo), cache_dir=cache))
            except MlxEdgeError:
                raise
            except Exception as e:
                raise MlxEdgeError(f"hf.co/{repo}: download failed: {_line(e)}") from None
    if path is None:
        try:
            snap = Path(huggingface_hub.snapshot_download(repo, cache_dir=cache, local_files_only=True))
        except Exception:
            why = "HF_HUB_OFFLINE is set" if offline() else f"the Hub is unreachable ({_line(network_error)})"
            raise MlxEdgeError(f"hf.co/{repo} is not in the Hugging Face cache {cache} and {why}; "
                               f"pulling it needs the network") from None
        names = [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]
        path = snap / pick(names, quant, repo)
    blob = Path(os.path.realpath(path)).name
    return path, blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
