"""The store on disk: sha256-named blobs, JSON manifests, locks, work dirs, and the crash hook.

    $MLXEDGE_HOME/
      blobs/sha256-<hex>            every source file and bundle file, once
      manifests/<name>/<tag>.json   name:tag -> bundle files (digests), source, recipe, parameters
      cache/<key>.json              a `.gguf` loaded by path: its conversion, unnamed (cache.py)
      models/<id>/                  a manifest materialized as a bundle directory (hardlinks to blobs)
      verified/sha256-<hex>         size/inode/ctime of a blob when it last hashed right
      tmp/<random>/ + .lock         one per running operation; a lock nobody holds is debris
      locks/                        fcntl locks: store.lock (shared: writers, exclusive: rm/gc), one per pull
      audit.jsonl                   append-only log (audit.py)

Every write goes to tmp/ and is renamed into place; a manifest is written last, so a crash leaves
only unreferenced blobs and dead work dirs, which the next writer removes (`collect`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ..errors import MlxEdgeError
from ..files import pump, sha256_file  # noqa: F401 - sha256_file is part of the store's layout API


def home() -> Path:
    return Path(os.environ.get("MLXEDGE_HOME") or Path.home() / ".mlxedge").expanduser()


def sub(name: str) -> Path:
    d = home() / name
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MlxEdgeError(f"cannot create the model store at {d}: {e.strerror or e}") from None
    return d


def hook(step: str) -> None:
    """Tests kill the process here: MLXEDGE_STORE_PAUSE=step writes tmp/paused-<step> and sleeps
    (=SECONDS: sleeps that long, to make two processes overlap)."""
    want, _, seconds = os.environ.get("MLXEDGE_STORE_PAUSE", "").partition("=")
    if want == step:
        if not seconds:
            (sub("tmp") / f"paused-{step}").write_text(str(os.getpid()))
        time.sleep(float(seconds or 600))


@contextlib.contextmanager
def lock(name: str, shared: bool = False, blocking: bool = True, remove: bool = False) -> Iterator[bool]:
    """An fcntl lock on locks/<name>.lock; yields False when non-blocking and someone else holds it.
    `remove`: the file is unlinked when released (for locks that only save duplicate work: a waiter
    and a newcomer may then both go ahead, which a refused source leaving no file is worth)."""
    path = sub("locks") / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A private dir under tmp/, removed at the end; while we hold its lock, `collect` leaves it be."""
    d = sub("tmp") / f"{os.getpid()}-{os.urandom(6).hex()}"
    fd = os.open(f"{d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # locked before the dir exists: `collect` never sees it unlocked
    try:
        d.mkdir()
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(f"{d}.lock")
        os.close(fd)


def blob_path(digest: str) -> Path:
    return home() / "blobs" / f"sha256-{digest}"


def copy_hashing(src: Path, dst: Path, progress=None) -> str:
    """Copy `src` to `dst`, returning the sha256 of what was read (one pass over the data)."""
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        pump(fi, h, fo, progress)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_ino} {st.st_ctime_ns} {st.st_mtime_ns}"


def check_blob(digest: str, size: int | None = None, rehash: bool = False) -> str | None:
    """None when the blob is whole, else 'missing' / 'changed'. A blob unchanged (size, inode, times)
    since it last hashed right is not hashed again unless `rehash`."""
    path = blob_path(digest)
    stamp_file = home() / "verified" / path.name
    try:
        stamp = _stamp(path)
    except FileNotFoundError:
        return "missing"
    if not rehash and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return None
    if (size is not None and path.stat().st_size != size) or sha256_file(path) != digest:
        return "changed"
    with contextlib.suppress(OSError):
        sub("verified")
        stamp_file.write_text(stamp)
    return None


def add_blob(path: Path, digest: str | None = None) -> tuple[str, int]:
    """Move `path` (a file in a work dir) into blobs/ under its sha256; (digest, size). A blob already
    there is kept when whole and replaced when damaged."""
    digest = digest or sha256_file(path)
    size = path.stat().st_size
    target = blob_path(digest)
    sub("blobs")
    if target.exists() and check_blob(digest, size) is None:
        path.unlink()
    else:
        os.replace(path, target)
    return digest, size


def write_json(path: Path, data: dict) -> None:
    """Atomic: a temp file next to `path`, fsynced, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def model_id(m: dict) -> str:
    """What makes two names the same model: the bundle files and the generation settings."""
    keyed = {k: m.get(k) for k in ("files", "parameters", "system", "template")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def bundle_info(bundle: Path) -> dict:
    """Facts `list` and `show` print, read once from the converted bundle."""
    meta = json.loads((bundle / "mlxedge.json").read_text())
    config = json.loads((bundle / "config.json").read_text())
    tc = bundle / "tokenizer_config.json"
    has_template = (bundle / "chat_template.jinja").is_file() or \
        (tc.is_file() and bool(json.loads(tc.read_text()).get("chat_template")))
    text_cfg = config.get("text_config", config)
    return {"architecture": config.get("model_type"), "parameter_count": meta.get("parameters"),
            "bits_per_weight": meta.get("bits_per_weight"), "quantization": meta.get("recipe"),
            "context_length": text_cfg.get("max_position_embeddings"), "chat_template": has_template,
            "source_format": meta.get("source", {}).get("format")}


def manifest_path(name: str, tag: str) -> Path:
    return home() / "manifests" / name / f"{tag}.json"


_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_manifest(m, where: str) -> dict:
    """The fields the store relies on, with blob digests and file names that stay inside the store."""
    ok = isinstance(m, dict) and isinstance(m.get("files"), dict) and isinstance(m.get("id"), str) \
        and isinstance(m.get("source"), dict) and isinstance(m.get("parameters", {}), dict) and m["files"]
    for fname, f in (m.get("files") or {}).items() if ok else ():
        ok = ok and isinstance(f, dict) and isinstance(f.get("digest"), str) and bool(_HEX64.fullmatch(f["digest"])) \
            and isinstance(f.get("size"), int) and fname not in (".", "..") and not re.search(r"[/\\\0]", fname)
    blob = m.get("source", {}).get("blob") if ok else None
    if not ok or (blob is not None and not (isinstance(blob, str) and _HEX64.fullmatch(blob))):
        raise MlxEdgeError(f"{where} is not a valid manifest (remove it, or `mlxedge rm` the name)")
    return m


def read_manifest(name: str, tag: str) -> dict | None:
    path = manifest_path(name, tag)
    try:
        return check_manifest(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MlxEdgeError(f"manifest of {name}:{tag} is unreadable: {e}") from None


def manifests() -> Iterator[tuple[str, dict]]:
    """(name:tag, manifest) for every manifest, sorted by name."""
    root = home() / "manifests"
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            data = check_manifest(json.loads(path.read_text()), str(path))
        except (OSError, ValueError, MlxEdgeError):
            print(f"warning: skipping unreadable manifest {path}", file=sys.stderr)
            continue
        yield f"{path.parent.relative_to(root).as_posix()}:{path.stem}", data


def cache_entries() -> Iterator[tuple[Path, dict]]:
    """(file, manifest) for every valid entry of the conversion cache (cache/*.json, cache.py)."""
    root = home() / "cache"
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            yield path, check_manifest(json.loads(path.read_text()), str(path))
        except (OSError, ValueError, MlxEdgeError):
            continue  # unreadable: `collect` removes it (a cache entry is only ever converted again)


def _all_manifests() -> Iterator[dict]:
    yield from (m for _, m in manifests())
    yield from (m for _, m in cache_entries())


def referenced() -> set[str]:
    """Digests some manifest or cache entry uses (bundle files and source blobs)."""
    refs = set()
    for m in _all_manifests():
        refs |= {f["digest"] for f in m.get("files", {}).values()}
        if m.get("source", {}).get("blob"):
            refs.add(m["source"]["blob"])
    return refs


def collect() -> dict[str, int]:
    """Remove what no manifest needs: unreferenced blobs, dead work dirs, stale materialized models and
    manifest temp files. Only when no writer holds the store (non-blocking); counts what went."""
    removed = {"blobs": 0, "tmp": 0, "models": 0}
    with lock("store", blocking=False) as got:
        if not got:
            return removed
        _collect_unlocked(removed)
    return removed


def _drop_stale_cache_entries() -> None:
    """Cache entries whose source file is gone, or that do not parse, and their temp files."""
    root = home() / "cache"
    valid = {path for path, _ in cache_entries()}
    for path in root.glob("*.json") if root.is_dir() else []:
        if path not in valid:
            path.unlink(missing_ok=True)
    for path, m in cache_entries():
        if not os.path.exists(m["source"].get("ref") or ""):
            path.unlink(missing_ok=True)
    for tmp in root.glob(".*.json.*") if root.is_dir() else []:
        tmp.unlink(missing_ok=True)


def _collect_unlocked(removed: dict[str, int]) -> None:
    _drop_stale_cache_entries()
    refs = referenced()
    ids = {m.get("id") for m in _all_manifests()}
    for blob in (home() / "blobs").glob("*"):
        if blob.name.removeprefix("sha256-") not in refs:
            blob.unlink(missing_ok=True)
            (home() / "verified" / blob.name).unlink(missing_ok=True)
            removed["blobs"] += 1
    for entry in (home() / "models").glob("*"):
        if entry.name not in ids:
            shutil.rmtree(entry, ignore_errors=True)
            removed["models"] += 1
    for tmp in (home() / "manifests").rglob(".*.json.*"):
        tmp.unlink(missing_ok=True)
    tmpdir = home() / "tmp"
    for entry in tmpdir.glob("*"):
        if entry.suffix == ".lock" or entry.name.startswith("paused-"):
            continue
        lockfile = Path(f"{entry}.lock")
        fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live operation
        finally:
            os.close(fd)
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        lockfile.unlink(missing_ok=True)
        removed["tmp"] += 1
    for stray in tmpdir.glob("*.lock"):  # a lock file whose dir is gone
        if not Path(str(stray)[:-5]).exists():
            stray.unlink(missing_ok=True)
