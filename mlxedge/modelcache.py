"""Turn a `--model` argument into a bundle directory: a store name materialized, a converted directory
as is, a `.gguf` converted once into the model store's conversion cache (`mlxedge.store.cache`).

A `.gguf` is found again by a `stat` (real path, size, mtime, inode), not a hash of a multi-GB file on
every run; its sha256, taken once, keys the conversion with the recipe (`keep`) and mlxedge's version,
so an upgrade never reuses what older code wrote and the same bytes under another path, or pulled
under a name, share their blobs. `verify` re-hashes the file on demand; `discard` drops an entry that
failed to load.
"""

from __future__ import annotations

from pathlib import Path

from . import __version__
from .errors import MlxEdgeError
from .files import sha256_file
from .formats import open_source
from .pipeline import convert_source
from .quant.recipes import get as get_recipe
from .store import cache, layout
from .store.lookup import resolve as resolve_name

RECIPE = "keep"


def convert_gguf(gguf: Path, out: Path, show_progress: bool = False) -> Path:
    """What a cache entry holds: the GGUF converted with `keep`."""
    return convert_source(open_source(gguf), out, get_recipe(RECIPE), show_progress=show_progress)


def cached_bundle(gguf: str | Path, quiet: bool = False) -> Path:
    """The bundle converted from `gguf`, converting it first if the store has no whole conversion."""
    return cache.bundle(gguf, lambda src, out: convert_gguf(src, out, show_progress=not quiet),
                        version=__version__, recipe=RECIPE, quiet=quiet)


def is_complete(directory: Path) -> bool:
    """`directory` is a cache entry's bundle whose blobs are all whole."""
    return any(m["id"] == Path(directory).name and cache.damage(m) is None
               for _, m in layout.cache_entries()) and Path(directory).is_dir()


def discard(model: str | Path, directory: Path) -> bool:
    """Drop `model`'s cache entry if `directory` is its bundle (it failed to load), so that the next
    run converts it again; False when `directory` is no cache entry of `model`."""
    return cache.discard(model, directory)


def verify(gguf: str | Path) -> bool:
    """On demand: hash `gguf` and compare with the sha256 its cache entry recorded at conversion."""
    m = cache.entry_of(gguf)
    if m is None:
        raise MlxEdgeError(f"{gguf} has no cache entry yet")
    return m["source"]["sha256"] == sha256_file(gguf)


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
