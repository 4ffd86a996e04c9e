"""Turn a `--model` argument into a bundle directory, converting a `.gguf` once into the cache.

Cache entries live in `cache_dir()/models/<stem>-<key>`, where the key comes from the GGUF's real
path, size and modification time and mlxedge's version: a `stat`, not a hash of a multi-GB file on
every run (the source sha256 recorded in mlxedge.json is there to verify on demand), and an upgrade
never reuses an entry older code wrote. An entry is built in a temp dir (named with the builder's
pid: one left by a killed process is removed by the next run) and renamed into place with a
manifest of its files' sizes written last; an entry whose manifest is missing or does not match the
files is removed and rebuilt, and so is one that fails to load (`discard`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import __version__
from .assets import cache_dir
from .errors import MlxEdgeError
from .files import sha256_file
from .formats import open_source
from .formats.bundle import remove_stale
from .pipeline import convert_source
from .quant.recipes import get as get_recipe
from .store.lookup import resolve as resolve_name

MANIFEST = "mlxedge-cache.json"


def source_key(path: Path) -> dict:
    """What identifies a source file for the cache: real path, size, mtime in ns, and the converter
    (mlxedge's version)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "mlxedge": __version__}


def entry_dir(path: Path) -> Path:
    key = source_key(path)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{Path(key['path']).stem}-{digest}"


def _file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}


def is_complete(entry: Path, key: dict | None = None) -> bool:
    """The entry's manifest exists, names this source (if `key` is given), and matches its files."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        if key is not None and manifest.get("source") != key:
            return False
        return manifest.get("files") == _file_sizes(entry)
    except (OSError, ValueError):
        return False


def _remove_stale(models: Path, real_path: str, keep: Path) -> None:
    """Drop entries made from earlier versions of the same file."""
    for entry in models.glob("*"):
        if entry == keep or not entry.is_dir():
            continue
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("source", {}).get("path") == real_path:
            shutil.rmtree(entry, ignore_errors=True)


def convert_gguf(gguf: Path, out: Path, show_progress: bool = False) -> Path:
    """What a cache entry holds: the GGUF converted with `keep`."""
    return convert_source(open_source(gguf), out, get_recipe("keep"), show_progress=show_progress)


def cached_bundle(gguf: str | Path, quiet: bool = False) -> Path:
    """The bundle converted from `gguf`, converting it first if the cache has no valid entry."""
    gguf = Path(gguf)
    key = source_key(gguf)
    entry = entry_dir(gguf)
    if is_complete(entry, key):
        return entry
    models = entry.parent
    try:
        models.mkdir(parents=True, exist_ok=True)
        remove_stale(models)  # temp dirs of conversions that were killed
        if entry.exists():  # half-written or damaged: rebuild
            shutil.rmtree(entry)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.{os.getpid()}.", suffix=".partial", dir=models))
    except OSError as e:
        raise MlxEdgeError(f"cannot write the model cache {models}: {e.strerror or e}") from None
    try:
        if not quiet:
            print(f"converting {gguf} into {entry} (once)", file=sys.stderr)
        try:
            bundle = convert_gguf(gguf, work / "bundle", show_progress=not quiet)
        except MlxEdgeError as e:  # name the cache, not its temp dir
            raise MlxEdgeError(str(e).replace(str(work / "bundle"), f"the model cache entry {entry}")) from None
        (bundle / MANIFEST).write_text(json.dumps({"source": key, "files": _file_sizes(bundle)}, indent=1))
        try:
            os.rename(bundle, entry)
        except OSError:
            if not is_complete(entry, key):  # another process won the race only if its entry is whole
                raise
    except OSError as e:
        raise MlxEdgeError(f"cannot write the model cache {models}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remove_stale(models, key["path"], entry)
    return entry


def is_entry(directory: Path) -> bool:
    """`directory` is an entry of the GGUF cache (as opposed to a bundle the user converted)."""
    return Path(directory).parent == cache_dir() / "models" and (Path(directory) / MANIFEST).is_file()


def discard(entry: Path) -> None:
    """Remove a cache entry that turned out not to load, so that the next run converts again."""
    if is_entry(entry):
        shutil.rmtree(entry, ignore_errors=True)


def verify(gguf: str | Path) -> bool:
    """On demand: hash `gguf` and compare with the sha256 its cache entry recorded at conversion."""
    entry = entry_dir(Path(gguf))
    if not is_complete(entry, source_key(Path(gguf))):
        raise MlxEdgeError(f"{gguf} has no cache entry yet")
    recorded = json.loads((entry / "mlxedge.json").read_text()).get("source", {}).get("sha256")
    return recorded == sha256_file(gguf)


def resolve(model: str | Path, quiet: bool = False) -> Path:
    """A bundle directory for `model`: a store name materialized, a converted directory as is, a `.gguf`
    through the cache."""
    named = resolve_name(model, quiet=quiet)
    if named is not None:
        return named
    path = Path(model).expanduser()
    if not path.exists():
        raise MlxEdgeError(f"{model}: no such file or directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MlxEdgeError(f"{model} is not a converted model (no config.json); "
                               f"convert it first with `mlxedge convert`")
        return path
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise MlxEdgeError(f"cannot read {model}: {e.strerror}") from None
    if magic != b"GGUF":
        raise MlxEdgeError(f"{model} is not a GGUF file nor a converted model directory")
    return cached_bundle(path, quiet=quiet)
