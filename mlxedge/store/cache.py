"""The conversion cache: a `.gguf` that `generate`, `chat`, `eval`, `serve` or `mlxedge.load()` is given
by path, converted once (recipe `keep`) into the store's blobs, under no name.

    cache/<key>.json   key: sha256 of the file's real path. A manifest as manifests/ hold, whose
                       source records the file's identity (real path, size, mtime, inode) and sha256

A load only stats the file: the same identity, recipe and converter (mlxedge version) -> the entry's
blobs, checked as a named model's are, materialized in models/<id>/. Otherwise the file is hashed
(unless only the converter changed: its sha256 is then known) and a conversion of the same bytes
with the same recipe by this mlxedge version, named or cached, is reused without converting; failing
that it is converted in a work dir, its files moved into blobs/ and the entry written last (the
commit point). A damaged blob makes the entry convert again from the source at hand (and repairs the
blob for any name sharing it). An entry is replaced when its file changes or the converter does, and
dropped when its file is gone (`layout.collect`) or by `clear`; blobs no manifest needs then go.
`mlxedge list` shows names only; `mlxedge list --cache` shows these.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import MlxEdgeError
from . import audit, layout
from .lookup import materialize

Converter = Callable[[Path, Path], Path]  # (source file, bundle dir to create) -> the bundle dir


def identity(path: str | os.PathLike) -> dict:
    """What a stat tells about a source file: real path, size, mtime (ns), inode."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return {"ref": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def entry_path(real: str) -> Path:
    return layout.home() / "cache" / f"{hashlib.sha256(real.encode()).hexdigest()[:32]}.json"


def read(real: str) -> dict | None:
    """The cache entry of the file at real path `real` (None when there is none or it is unreadable)."""
    path = entry_path(real)
    try:
        return layout.check_manifest(json.loads(path.read_text()), str(path))
    except (OSError, ValueError, MlxEdgeError):
        return None


def same_file(m: dict | None, ident: dict) -> bool:
    return m is not None and all(m["source"].get(k) == v for k, v in ident.items())


def damage(m: dict) -> str | None:
    """'<file> is missing/changed' for the first damaged blob of `m`, None when all are whole."""
    for fname, f in m["files"].items():
        problem = layout.check_blob(f["digest"], f["size"])
        if problem:
            return f"{fname} (blob sha256-{f['digest'][:12]}) is {problem}"
    return None


def find(sha: str, recipe: str, version: str, named_only: bool = False) -> dict | None:
    """A manifest or cache entry converted from the bytes `sha` with `recipe` by mlxedge `version`,
    its blobs whole: its files can be reused without converting."""
    found = [m for _, m in layout.manifests()] + ([] if named_only else [m for _, m in layout.cache_entries()])
    for m in found:
        src = m.get("source", {})
        if src.get("sha256") == sha and not src.get("parameters_only") and m.get("recipe") == recipe \
                and m.get("mlxedge_version") == version and damage(m) is None:
            return m
    return None


def convert_lock(sha: str, recipe: str, version: str) -> str:
    """The lock one conversion of these bytes holds, shared by pulls and the cache."""
    return "convert-" + hashlib.sha256(f"{sha}\0{recipe}\0{version}".encode()).hexdigest()[:24]


def add_bundle(bundle: Path, hook: str | None = None) -> dict:
    """Move a converted bundle's files into blobs/ (the caller holds the store's shared lock)."""
    files = {}
    for p in sorted(bundle.iterdir()):
        digest, size = layout.add_blob(p)
        files[p.name] = {"digest": digest, "size": size}
        if hook:
            layout.hook(hook)
    return files


def bundle(path: str | os.PathLike, convert: Converter, version: str, recipe: str = "keep",
           quiet: bool = True) -> Path:
    """The bundle directory of `path` converted with `recipe`, converting it first when the store holds
    no whole conversion of its bytes by this converter."""
    try:
        return _bundle(Path(path), convert, version, recipe, quiet)
    except OSError as e:
        raise MlxEdgeError(f"cannot write the model store {layout.home()}: {e.strerror or e}") from None


def _usable(m: dict | None, ident: dict, version: str, recipe: str) -> bool:
    return same_file(m, ident) and m.get("recipe") == recipe and m.get("mlxedge_version") == version \
        and damage(m) is None


def _bundle(path: Path, convert: Converter, version: str, recipe: str, quiet: bool) -> Path:
    ident = identity(path)
    m = read(ident["ref"])
    current = same_file(m, ident) and m.get("recipe") == recipe and m.get("mlxedge_version") == version
    problem = damage(m) if current else None
    if current and problem is None:
        return _loaded(m)
    if problem and not quiet:
        print(f"{path}: its conversion's {problem}; converting it again", file=sys.stderr)
    sha = m["source"]["sha256"] if same_file(m, ident) else layout.sha256_file(ident["ref"])
    with layout.lock(convert_lock(sha, recipe, version), remove=True):
        m = read(ident["ref"])  # another process may have converted it meanwhile
        if _usable(m, ident, version, recipe):
            return _loaded(m)
        base = find(sha, recipe, version)
        with layout.workdir() as work:
            if base is None:
                if not quiet:
                    print(f"converting {path} into the model store {layout.home()} (once)", file=sys.stderr)
                out = work / "bundle"
                try:
                    converted = convert(Path(ident["ref"]), out)
                except MlxEdgeError as e:  # name the store, not its work dir
                    raise MlxEdgeError(str(e).replace(str(out), f"its conversion in {layout.home()}")) from None
                info = layout.bundle_info(converted)
            with layout.lock("store", shared=True):
                if base is not None:
                    if damage(base) is not None:  # an rm in between
                        raise MlxEdgeError(f"{path}: the conversion it shares went missing meanwhile; run again")
                    files, info = base["files"], base["info"]
                else:
                    files = add_bundle(converted, hook="cache:blobs")
                m = {"schema": 1, "name": ident["ref"], "modified": audit.now(), "mlxedge_version": version,
                     "recipe": recipe, "source": {"kind": "cache", **ident, "sha256": sha, "blob": None},
                     "files": files, "info": info, "parameters": {}, "system": None, "template": None}
                m["id"] = layout.model_id(m)
                layout.write_json(entry_path(ident["ref"]), m)  # the commit point
    layout.collect()  # the entry this one replaced, dead work dirs
    return _loaded(m)


def _loaded(m: dict) -> Path:
    directory = materialize(m)
    audit.record("load", model=m["name"], id=m["id"][:12], cache=True)
    return directory


def entry_of(path: str | os.PathLike) -> dict | None:
    """The cache entry of the file `path` as it is now (None when it has none, or it changed since)."""
    try:
        ident = identity(path)
    except OSError:
        return None
    m = read(ident["ref"])
    return m if same_file(m, ident) else None


def discard(path: str | os.PathLike, directory: Path) -> bool:
    """Drop the entry of `path` whose materialized dir is `directory` (it failed to load), so that the
    next load converts again. False when `directory` is not that entry's."""
    m = entry_of(path)
    if m is None or Path(directory).resolve() != (layout.home() / "models" / m["id"]).resolve():
        return False
    with layout.lock("store"):
        entry_path(m["source"]["ref"]).unlink(missing_ok=True)
        layout._collect_unlocked({"blobs": 0, "tmp": 0, "models": 0})
    return True


def entries() -> list[dict]:
    """One row per cache entry: source path, id (12 hex), size, recipe, converter version, modified."""
    return [{"source": m["source"]["ref"], "id": m["id"][:12], "size": sum(f["size"] for f in m["files"].values()),
             "recipe": m.get("recipe"), "mlxedge_version": m.get("mlxedge_version"), "modified": m.get("modified")}
            for _, m in layout.cache_entries()]


def clear() -> tuple[int, int]:
    """Drop every cache entry (the blobs named models share stay): (entries, blobs) removed."""
    removed = {"blobs": 0, "tmp": 0, "models": 0}
    with layout.lock("store"):
        paths = list((layout.home() / "cache").glob("*.json")) if (layout.home() / "cache").is_dir() else []
        for p in paths:
            p.unlink(missing_ok=True)
        layout._collect_unlocked(removed)
    return len(paths), removed["blobs"]
