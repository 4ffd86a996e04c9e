"""The MLX model directory (mlx-lm layout): stream tensors into safetensors shards, write the
JSON files beside them, and move the finished directory into place in one rename.

Nothing is half-written: everything goes into a temporary directory next to OUT, which is renamed
to OUT only after the last byte is on disk, and removed on any error (disk full included). The temp
dir's name carries the writer's pid (`.OUT.<pid>.<random>.partial`): one left by a process that was
killed (kill -9, power loss) is removed by the next writer that finds it once that pid is gone.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import archs, safetensors
from ..errors import MlxEdgeError
from ..files import read_json
from ..safetensors import NP_TO_ST

SHARD_BYTES = 5 * 1024**3
# what a writer leaves beside OUT while it works: its temp dir, and the old OUT while --force replaces it
_OURS = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{8}\.partial$|^\..+\.old(\d+)$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a pid no kill() takes): leave its files alone
    return True


def remove_stale(parent: Path, pattern: re.Pattern = _OURS) -> list[Path]:
    """Remove the directories in `parent` whose name matches `pattern` and whose pid (the first
    non-empty group) is no longer running; returns them."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            pid = int(next(g for g in m.groups() if g))
            if pid != os.getpid() and not pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


class BundleWriter:
    """Write a bundle into a temp dir beside `out`; `commit()` renames it into place.

    Use as a context manager: leaving the block with an exception removes the temp dir.
    """

    def __init__(self, out: str | Path, force: bool = False):
        self.out = Path(out)
        if self.out.exists() and not force:
            raise MlxEdgeError(f"{self.out} exists (use --force to replace it)")
        if self.out.exists() and not self.out.is_dir():
            raise MlxEdgeError(f"{self.out} exists and is not a directory")
        parent = self.out.absolute().parent
        if not parent.is_dir():
            raise MlxEdgeError(f"output folder {parent} does not exist")
        self.force = force
        remove_stale(parent)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.{os.getpid()}.", suffix=".partial",
                                             dir=parent))
        except OSError as e:
            raise MlxEdgeError(f"cannot write into {parent}: {e.strerror}") from None
        self._shards: list[tuple[dict, Path]] = []  # (header entries, data file)
        self._data = None
        self._offset = 0
        self.total_bytes = 0

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        if isinstance(exc, OSError):
            raise _os_error(exc, self.out) from None

    def add(self, name: str, array: np.ndarray, dtype: str | None = None) -> None:
        """Append one tensor. `dtype` overrides the safetensors dtype (\"BF16\" for uint16 bits)."""
        array = np.ascontiguousarray(array)
        st = dtype or NP_TO_ST.get(array.dtype)
        if st is None:
            raise ValueError(f"{name}: no safetensors dtype for {array.dtype}")
        if self._data is None or self._offset + array.nbytes > SHARD_BYTES and self._offset:
            self._new_shard()
        header, _ = self._shards[-1]
        header[name] = {"dtype": st, "shape": list(array.shape),
                        "data_offsets": [self._offset, self._offset + array.nbytes]}
        self._data.write(memoryview(array.reshape(-1).view(np.uint8)))
        self._offset += array.nbytes
        self.total_bytes += array.nbytes

    def add_blocks(self, name: str, rows: int, blocks: Iterable[np.ndarray], dtype: str | None = None) -> None:
        """Append one tensor of `rows` rows given as consecutive row blocks, each written as it
        comes: a row-major tensor's bytes are its row blocks' bytes in order, so the file is the
        one `add` of the whole tensor writes. The blocks must agree in dtype and trailing shape
        and add up to `rows`; if they do not, or the iterator raises, nothing of this tensor
        stays written and the error propagates (the caller may add the tensor again)."""
        it = iter(blocks)
        first = np.ascontiguousarray(next(it))
        dt, tail = first.dtype, first.shape[1:]
        nbytes = rows * (first.nbytes // max(len(first), 1))
        st = dtype or NP_TO_ST.get(dt)
        if st is None:
            raise ValueError(f"{name}: no safetensors dtype for {dt}")
        if self._data is None or self._offset + nbytes > SHARD_BYTES and self._offset:
            self._new_shard()
        header, _ = self._shards[-1]
        start, done = self._offset, 0
        try:
            for block in itertools.chain([first], it):
                first = None  # hold no block longer than its write
                block = np.ascontiguousarray(block)
                if block.dtype != dt or block.shape[1:] != tail or done + len(block) > rows:
                    raise ValueError(f"{name}: a row block {block.dtype} {block.shape} does not continue "
                                     f"{rows} rows of {dt} {tail}")
                self._data.write(memoryview(block.reshape(-1).view(np.uint8)))
                done += len(block)
            if done != rows:
                raise ValueError(f"{name}: row blocks add up to {done} rows, not {rows}")
        except BaseException:
            self._data.seek(start)
            self._data.truncate()
            raise
        header[name] = {"dtype": st, "shape": [rows, *tail], "data_offsets": [start, start + nbytes]}
        self._offset += nbytes
        self.total_bytes += nbytes

    def _new_shard(self) -> None:
        if self._data is not None:
            self._data.close()
        path = self.tmp / f".shard{len(self._shards)}.data"
        self._data = open(path, "wb")
        self._shards.append(({}, path))
        self._offset = 0

    def write_json(self, filename: str, obj) -> None:
        with open(self.tmp / filename, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")

    def commit(self) -> Path:
        """Finish the safetensors files, then move the directory to `out`."""
        if self._data is not None:
            self._data.close()
        n = len(self._shards)
        weight_map = {}
        for i, (header, data_path) in enumerate(self._shards):
            fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            _write_safetensors(self.tmp / fname, header, data_path)
            weight_map.update({k: fname for k in header})
        if n > 1:
            self.write_json("model.safetensors.index.json",
                            {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp made it private
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old{os.getpid()}")
            os.rename(self.out, old)
            os.rename(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        if self._data is not None and not self._data.closed:
            self._data.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_safetensors(path: Path, header: dict, data_path: Path) -> None:
    header = dict(header)
    header["__metadata__"] = {"format": "mlx"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        with open(data_path, "rb") as src:
            shutil.copyfileobj(src, f, 16 * 1024 * 1024)
    data_path.unlink()


def _os_error(e: OSError, out: Path) -> MlxEdgeError:
    if e.errno == errno.ENOSPC:
        return MlxEdgeError(f"disk full while writing {out}; nothing was written")
    return MlxEdgeError(f"cannot write {out}: {e.strerror or e}")


# -- reading -----------------------------------------------------------------------------------

def read_weights(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a bundle (single file or sharded), memory-mapped; BF16 comes back as float32."""
    directory = Path(directory)
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        raise MlxEdgeError(f"{directory} has no model*.safetensors")
    weights: dict[str, np.ndarray] = {}
    for f in files:
        weights.update({k: t.float32() if t.dtype == "BF16" else t.load() for k, t in safetensors.scan(f).items()})
    return weights


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise MlxEdgeError(f"{directory} is not a model bundle (no config.json)")
    config = read_json(path)
    archs.check_config(config, str(directory))
    return config
