"""`hf.co/OWNER/REPO[:QUANT]`: one GGUF from a Hugging Face Hub repo, through huggingface_hub's cache.

A cached snapshot with the file is used as is (offline first); otherwise the repo's file list picks
the file and `hf_hub_download` fetches it (resumable, its own cache). HF_HUB_OFFLINE=1 or an
unreachable Hub: one line saying the pull needs the network.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

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
    """(path of the GGUF in the Hub cache, its sha256 when the cache names the blob by it). The cache
    first (offline first); the Hub only for what the cache lacks."""
    path = _cached(repo, quant)
    if path is None:
        if offline():
            raise MlxEdgeError(f"hf.co/{repo} is not in the Hugging Face cache {hub_cache()} and HF_HUB_OFFLINE "
                               f"is set; pulling it needs the network")
        endpoint = os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT
        if not _reachable(endpoint):  # one line now, not huggingface_hub's retries with backoff
            raise MlxEdgeError(f"hf.co/{repo} is not in the Hugging Face cache {hub_cache()} and the Hub "
                               f"({endpoint}) is unreachable; pulling it needs the network")
        huggingface_hub.utils.logging.set_verbosity_error()
        try:
            names = huggingface_hub.list_repo_files(repo)
            path = Path(huggingface_hub.hf_hub_download(repo, pick(names, quant, repo), cache_dir=hub_cache()))
        except huggingface_hub.errors.RepositoryNotFoundError:
            raise MlxEdgeError(f"hf.co/{repo}: no such repository (or it is private)") from None
        except MlxEdgeError:
            raise
        except Exception as e:
            raise MlxEdgeError(f"hf.co/{repo}: download failed: {_line(e)}") from None
    blob = Path(os.path.realpath(path)).name
    return path, blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None


def _cached(repo: str, quant: str | None) -> Path | None:
    """The GGUF from the cached snapshot; None when not cached (or, online, when it has no match)."""
    try:
        snap = Path(huggingface_hub.snapshot_download(repo, cache_dir=hub_cache(), local_files_only=True))
    except Exception:
        return None
    names = [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]
    try:
        return snap / pick(names, quant, repo)
    except MlxEdgeError:
        if offline():
            raise
        return None


def _reachable(endpoint: str) -> bool:
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # through a proxy: let the client try
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
        return True
    except OSError:
        return False


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
