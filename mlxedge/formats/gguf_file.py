"""GGUF header parsing: metadata and tensor directory, with tensor data memory-mapped.

gguf-py's GGUFReader builds a NumPy view per array element while it opens a file: seconds for a
262k-token vocabulary (23 s for Gemma 3 270M here). Conversion needs only plain values and byte
ranges, so the header is read directly; gguf-py stays the source of truth for the type tables
(`GGML_QUANT_SIZES`) and for dequantization.

Nothing a file says is trusted before it is checked against the file: every count and length is
bounded by the bytes left before anything is allocated, each tensor's byte range must lie inside
the data section at an aligned offset, and the metadata keys mlxedge reads are type- and
range-checked (`gguf_meta.check`). Every problem is one `MlxEdgeError` naming the file and the key
or tensor.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import MlxEdgeError
from .gguf_meta import check as check_metadata

# GGUF value types (gguf.GGUFValueType) -> struct format; 8 is a string, 9 an array.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays: no key mlxedge reads has any; deeper would exhaust the stack
MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dimension, type, offset


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: GGUF lists ne0 (the contiguous dimension) first
    type: str  # GGML type name, e.g. "Q4_K"
    n_elements: int
    n_bytes: int
    path: Path
    offset: int  # absolute byte offset of the data in `path`

    def raw(self) -> np.ndarray:
        """The stored bytes, memory-mapped: (rows, bytes_per_row) uint8, or (n_bytes,) for 1-D."""
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.n_bytes,))
        return data.reshape(self.shape[0], -1) if len(self.shape) == 2 else data


class _Truncated(Exception):
    """The file ends inside a field it has started."""


def read_header(path: str | Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """(metadata as plain Python values, tensor directory) of one GGUF file."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, len(buf))
    except (_Truncated, struct.error):
        raise MlxEdgeError(f"{path}: truncated GGUF file (header ends early)") from None
    except (OSError, ValueError) as e:  # mmap of an empty file, unreadable file
        if isinstance(e, ValueError) and path.is_file() and path.stat().st_size == 0:
            raise MlxEdgeError(f"{path}: truncated GGUF file (header ends early: the file is empty)") from None
        raise MlxEdgeError(f"{path}: not a valid GGUF file ({e})") from None


class _Reader:
    """A cursor over the header that refuses to read or size anything past the end of the file."""

    def __init__(self, path: Path, buf, size: int):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def left(self) -> int:
        return self.size - self.pos

    def unpack(self, fmt: str):
        n = struct.calcsize(fmt)
        if n > self.left():
            raise _Truncated
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def need(self, n: int, what: str) -> None:
        """A length or count read from the file must fit in what is left of it."""
        if n > self.left():
            raise MlxEdgeError(f"{self.path}: truncated GGUF file or corrupt length: {what} needs {n} bytes "
                               f"but only {self.left()} are left in the file")

    def string(self, what: str) -> str:
        (n,) = self.unpack("<Q")
        self.need(n, f"{what} (a string of {n} bytes)")
        self.pos += n
        try:
            return bytes(self.buf[self.pos - n: self.pos]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MlxEdgeError(f"{self.path}: {what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None

    def name(self, what: str) -> str:
        """A metadata key or tensor name: printable text (so that messages naming it stay one line)."""
        out = self.string(what)
        if not out.isprintable() or not out:
            raise MlxEdgeError(f"{self.path}: {what} is {out[:80]!r}, expected printable text")
        return out

    def value(self, kind: int, key: str, depth: int = 0) -> Any:
        if kind == 8:
            return self.string(f"the value of {key}")
        if kind == 9:
            item, n = self.unpack("<IQ")
            if item in _SCALAR:
                dtype = np.dtype(_SCALAR[item])
                self.need(n * dtype.itemsize, f"{key} (an array of {n} items)")
                out = np.frombuffer(self.buf, dtype, n, self.pos).tolist()
                self.pos += n * dtype.itemsize
                return out
            if item not in (8, 9):
                raise MlxEdgeError(f"{self.path}: {key} is an array of unknown GGUF value type {item}")
            if depth >= MAX_NESTING:
                raise MlxEdgeError(f"{self.path}: {key} nests arrays more than {MAX_NESTING} deep")
            self.need(n * (8 if item == 8 else 12), f"{key} (an array of {n} items)")
            return [self.value(item, f"{key}[{i}]", depth + 1) for i in range(n)]
        if kind not in _SCALAR:
            raise MlxEdgeError(f"{self.path}: {key} has unknown GGUF value type {kind} (expected 0..12)")
        (out,) = self.unpack(_SCALAR[kind])
        return out


def _parse(path: Path, buf, size: int):
    r = _Reader(path, buf, size)
    magic, version, n_tensors, n_kv = r.unpack("<4sIQQ")
    if magic != b"GGUF":
        raise MlxEdgeError(f"{path} is not a GGUF file (bad magic {magic!r})")
    if not 2 <= version <= 3:
        raise MlxEdgeError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    if n_kv * MIN_KV_BYTES > r.left():
        raise MlxEdgeError(f"{path}: truncated GGUF file or corrupt count: the header claims {n_kv} metadata "
                           f"entries, more than the file's {size} bytes can hold")
    if n_tensors * MIN_TENSOR_BYTES > r.left():
        raise MlxEdgeError(f"{path}: truncated GGUF file or corrupt count: the header claims {n_tensors} "
                           f"tensors, more than the file's {size} bytes can hold")

    meta: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None]] = {}  # key -> (value type, array item type)
    for i in range(n_kv):
        key = r.name(f"metadata key #{i}")
        (kind,) = r.unpack("<I")
        item = struct.unpack_from("<I", buf, r.pos)[0] if kind == 9 and r.left() >= 4 else None
        if key in meta:
            raise MlxEdgeError(f"{path}: metadata key {key} appears twice")
        meta[key] = r.value(kind, key)
        types[key] = (kind, item)
    check_metadata(path, meta, types)

    entries = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = r.name(f"tensor name #{i}")
        if name in seen:
            raise MlxEdgeError(f"{path}: tensor {name} appears twice in the tensor directory")
        seen.add(name)
        (n_dims,) = r.unpack("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise MlxEdgeError(f"{path}: tensor {name} has {n_dims} dimensions (expected 1 to {MAX_DIMS})")
        dims = r.unpack(f"<{n_dims}Q")
        type_id, offset = r.unpack("<IQ")
        entries.append((name, dims, type_id, offset))

    align = meta.get("general.alignment", 32)
    data_start = r.pos + (-r.pos % align)
    tensors = []
    for name, dims, type_id, offset in entries:
        tensors.append(_tensor(path, name, dims, type_id, offset, align, data_start, size))
    return meta, tensors


def _tensor(path: Path, name: str, dims: tuple[int, ...], type_id: int, offset: int, align: int,
            data_start: int, size: int) -> TensorInfo:
    """One directory entry checked against the type tables and the file: -> TensorInfo."""
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
    except ValueError:
        raise MlxEdgeError(f"{path.name}: tensor {name} has type {type_id}, unknown to gguf-py "
                           f"{_version()} (this file needs a newer gguf package)") from None
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    shape = list(reversed(dims))
    if 0 in dims:
        raise MlxEdgeError(f"{path}: tensor {name} has a zero dimension (shape {shape})")
    if dims[0] % block:
        raise MlxEdgeError(f"{path}: tensor {name} ({qtype.name}, shape {shape}) has rows of {dims[0]} "
                           f"values, not a multiple of its block size {block}")
    n = math.prod(dims)
    n_bytes = n // block * type_size
    if offset % align:
        raise MlxEdgeError(f"{path}: tensor {name} data offset {offset} is not a multiple of the "
                           f"alignment {align}")
    start = data_start + offset
    if n_bytes > size or start + n_bytes > size:
        raise MlxEdgeError(f"{path}: truncated GGUF file or corrupt tensor directory (tensor data ends at "
                           f"byte {size}, {name} of shape {shape} needs up to byte {start + n_bytes})")
    return TensorInfo(name, tuple(int(d) for d in shape), qtype.name, n, n_bytes, path, start)


def _version() -> str:
    return version("gguf")
