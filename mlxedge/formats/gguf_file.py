"""GGUF header parsing: metadata and tensor directory, with tensor data memory-mapped.

gguf-py's GGUFReader builds a NumPy view per array element while it opens a file: seconds for a
262k-token vocabulary (23 s for Gemma 3 270M here). Conversion needs only plain values and byte
ranges, so the header is read directly; gguf-py stays the source of truth for the type tables
(`GGML_QUANT_SIZES`) and for dequantization.
"""

from __future__ import annotations

import mmap
import struct
from importlib.metadata import version
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import MlxEdgeError

# GGUF value types (gguf.GGUFValueType) -> struct format; 8 is a string, 9 an array.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


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


def read_header(path: str | Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """(metadata as plain Python values, tensor directory) of one GGUF file."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, len(buf))
    except MlxEdgeError:
        raise
    except (OSError, ValueError, struct.error, IndexError, OverflowError) as e:
        if isinstance(e, struct.error) or "out of range" in str(e) or "buffer" in str(e):
            raise MlxEdgeError(f"{path}: truncated GGUF file (header ends early)") from None
        raise MlxEdgeError(f"{path}: not a valid GGUF file ({e})") from None


def _parse(path: Path, buf, size: int):
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF":
        raise MlxEdgeError(f"{path} is not a GGUF file (bad magic {magic!r})")
    if not 2 <= version <= 3:
        raise MlxEdgeError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        if pos + 8 + n > size:
            raise struct.error("string past end of file")
        pos += 8 + n
        return buf[pos - n: pos].decode("utf-8", errors="surrogateescape")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in _SCALAR:
                dtype = np.dtype(_SCALAR[item])
                if pos + n * dtype.itemsize > size:
                    raise struct.error("array past end of file")
                out = np.frombuffer(buf, dtype, n, pos).tolist()
                pos += n * dtype.itemsize
                return out
            return [value(item) for _ in range(n)]
        if kind not in _SCALAR:
            raise MlxEdgeError(f"{path.name}: unknown GGUF value type {kind}")
        (out,) = struct.unpack_from(_SCALAR[kind], buf, pos)
        pos += struct.calcsize(_SCALAR[kind])
        return out

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        meta[key] = value(kind)

    entries = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        type_id, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        entries.append((name, dims, type_id, offset))

    align = int(meta.get("general.alignment", 32))
    data_start = pos + (-pos % align)
    tensors = []
    for name, dims, type_id, offset in entries:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
        except ValueError:
            raise MlxEdgeError(f"{path.name}: tensor {name} has type {type_id}, unknown to gguf-py "
                               f"{_version()} (this file needs a newer gguf package)") from None
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(dims)) if dims else 1
        n_bytes = n // block * type_size
        start = data_start + offset
        if start + n_bytes > size:
            raise MlxEdgeError(f"{path}: truncated GGUF file (tensor data ends at byte {size}, "
                               f"{name} needs up to {start + n_bytes})")
        tensors.append(TensorInfo(name, tuple(int(d) for d in reversed(dims)), qtype.name, n, n_bytes,
                                  path, start))
    return meta, tensors


def _version() -> str:
    return version("gguf")
