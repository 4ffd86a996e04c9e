"""Name -> bundle directory: the one resolution `--model` and `mlxedge.load` go through.

Kept apart from pull/create (which import the converter) so that modelcache can import it: the
converter's planner imports modelcache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import MlxEdgeError
from . import audit, layout, modelfile, names
from .layout import check_blob

SETTINGS = "mlxedge-store.json"  # in a materialized dir: the name's system prompt and options


def get(name: str) -> dict:
    """The manifest of `name`, or one line pointing at `mlxedge list`."""
    n, tag = names.parse(name)
    m = layout.read_manifest(n, tag)
    if m is None:
        raise MlxEdgeError(f"unknown model {n}:{tag}; `mlxedge list` shows the models in the store, "
                           f"`mlxedge pull` adds one")
    return m


def materialize(m: dict) -> Path:
    """models/<id>/: the manifest's files as hardlinks (symlinks where links fail) to its blobs,
    checked first; a damaged blob refuses the load in one line."""
    for fname, f in m["files"].items():
        problem = check_blob(f["digest"], f["size"])
        if problem:
            raise MlxEdgeError(f"{m['name']}: {fname} (blob sha256-{f['digest'][:12]}) is {problem}; "
                               f"`mlxedge verify` lists the damage, `mlxedge pull` it again")
    target = layout.home() / "models" / m["id"]
    if (target / SETTINGS).is_file() and _links_current(target, m):
        return target
    with layout.lock("store", shared=True), layout.workdir() as work:
        d = work / "model"
        d.mkdir()
        for fname, f in m["files"].items():
            blob = layout.blob_path(f["digest"])
            try:
                os.link(blob, d / fname)
            except OSError:
                os.symlink(blob, d / fname)
        settings = {"name": m["name"], "id": m["id"], "system": m.get("system"),
                    "options": modelfile.options(m.get("parameters", {})),
                    "num_ctx": m.get("parameters", {}).get("num_ctx")}
        (d / SETTINGS).write_text(json.dumps(settings, indent=1))
        layout.sub("models")
        try:
            os.rename(d, target)
        except OSError:  # another process won only if its dir is whole and links today's blobs
            if not ((target / SETTINGS).is_file() and _links_current(target, m)):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(d, target)
    return target


def _links_current(target: Path, m: dict) -> bool:
    """Each file of a materialized dir is still its blob (a blob replaced by a new pull is a new inode)."""
    try:
        return all(os.path.samefile(target / fname, layout.blob_path(f["digest"])) for fname, f in m["files"].items())
    except OSError:
        return False


def resolve(model: str | os.PathLike, quiet: bool = True) -> Path | None:
    """The one name resolution: a bundle directory for a store name, None for an existing path (or
    for text that is no model name, which the caller reports as a missing path)."""
    text = str(model)
    if Path(text).expanduser().exists() or not names.is_name(text):
        return None
    m = get(text)
    try:
        directory = materialize(m)
    except MlxEdgeError as e:
        audit.record("load", model=m["name"], id=m["id"][:12], outcome="error", error=str(e))
        raise
    audit.record("load", model=m["name"], id=m["id"][:12])
    return directory


def settings(directory: str | os.PathLike) -> dict:
    """{"system", "options", "num_ctx"} a materialized store model carries ({} for plain bundles)."""
    try:
        return json.loads((Path(directory) / SETTINGS).read_text())
    except (OSError, ValueError):
        return {}
