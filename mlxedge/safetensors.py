"""safetensors files as mlxedge reads them: the header, lazy memory-mapped tensors, the per-module
quantization spec of mlx-lm's config, and parameter / bits-per-weight counts.

One definition of bits per weight everywhere (convert, eval, inspect): stored bits of every tensor
(packed weights, scales, biases, float tensors) / number of parameters, a quantized weight counting
as its unpacked element count.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from .dtypes import from_bf16_bits
from .errors import MlxEdgeError

# safetensors dtype names -> numpy dtypes; bfloat16 travels as its uint16 bit pattern.
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U32": np.uint32, "U8": np.uint8,
          "I32": np.int32, "I8": np.int8, "I64": np.int64, "F64": np.float64}
NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint32): "U32",
            np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32", np.dtype(np.int8): "I8"}
FLOAT_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
MAX_HEADER = 100 * 1024**2
QUANT_BITS = (2, 3, 4, 5, 6, 8)  # what MLX's affine quantization packs
QUANT_GROUPS = (32, 64, 128)


def read_header(path: str | Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file; tensor data starts at byte 8 + length.

    Every entry is checked against the file before anything is viewed: a known dtype, a shape of
    non-negative integers, data_offsets inside the data section whose length is shape x dtype size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} is past the end of the file ({size} bytes)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, RecursionError) as e:
        raise MlxEdgeError(f"{path} is not a readable safetensors file ({str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise MlxEdgeError(f"{path}: the safetensors header is a JSON {type(header).__name__}, expected an object")
    data_size = size - 8 - n
    for name, info in header.items():
        if name != "__metadata__":
            _check_entry(path, name, info, data_size)
    return n, header


def _check_entry(path: Path, name: str, info, data_size: int) -> None:
    def bad(what: str) -> MlxEdgeError:
        return MlxEdgeError(f"{path}: tensor {name} {what}")

    if not isinstance(info, dict):
        raise bad(f"is described by {type(info).__name__}, expected an object with dtype, shape, data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"has unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise bad(f"has shape {shape!r}, expected a list of at most 8 non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise bad(f"has data_offsets {offsets!r}, expected [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise bad(f"has data_offsets [{begin}, {end}] outside the file's {data_size} data bytes "
                  f"(truncated or corrupt file)")
    want = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    if end - begin != want:
        raise bad(f"holds {end - begin} bytes, but shape {shape} of {dtype} needs {want}")


class Tensor:
    """One stored tensor: its safetensors dtype name, shape and a lazy view of its bytes."""

    def __init__(self, dtype: str, shape: tuple[int, ...], load: Callable[[], np.ndarray]):
        self.dtype, self.shape, self.load = dtype, shape, load

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(DTYPES[self.dtype]).itemsize

    def float32(self) -> np.ndarray:
        x = self.load()
        return from_bf16_bits(x) if self.dtype == "BF16" else np.asarray(x, dtype=np.float32)


def scan(path: str | Path) -> dict[str, Tensor]:
    """The tensors of `path`, memory-mapped on first use (BF16 as uint16 bits)."""
    path = Path(path)
    n, header = read_header(path)
    out = {}
    mm = None

    def view(start: int, end: int, dt, shape):
        def load() -> np.ndarray:
            nonlocal mm
            if mm is None:
                mm = np.memmap(path, dtype=np.uint8, mode="r")
            return mm[8 + n + start: 8 + n + end].view(dt).reshape(shape)
        return load

    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
        out[name] = Tensor(info["dtype"], shape, view(start, end, DTYPES[info["dtype"]], shape))
    return out


def weight_files(root: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint or bundle: the index's shards, else model*.safetensors."""
    root = Path(root)
    index = root / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise MlxEdgeError(f"{index} is unreadable: {e!r}") from None
        if not all(isinstance(n, str) and Path(n).name == n for n in names):
            raise MlxEdgeError(f"{index}: weight_map names files outside the directory")
        files = [root / n for n in names]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise MlxEdgeError(f"{root}: shards listed in the index are missing: {', '.join(missing)}")
        return files
    files = sorted(root.glob("model*.safetensors")) or sorted(root.glob("*.safetensors"))
    if not files:
        raise MlxEdgeError(f"{root} has no .safetensors files")
    return files


def scan_all(root: str | Path) -> dict[str, Tensor]:
    """Every tensor of a (sharded) checkpoint or bundle, lazily."""
    out: dict[str, Tensor] = {}
    for f in weight_files(root):
        out.update(scan(f))
    return out


def quant_spec(qcfg: dict, prefix: str) -> tuple[int, int]:
    """(bits, group_size) of module `prefix`: mlx-lm's per-module entry if it is a dict, else the
    top-level one. Only affine quantization is supported."""
    if not isinstance(qcfg, dict):
        raise MlxEdgeError(f"config.json \"quantization\" is {qcfg!r}, expected an object")
    spec = qcfg.get(prefix)
    if not isinstance(spec, dict):
        spec = qcfg
    if spec.get("mode", "affine") != "affine":
        raise MlxEdgeError(f"{prefix}: quantization mode {spec.get('mode')!r} is not supported (affine only)")
    bits, group = spec.get("bits"), spec.get("group_size")
    if bits is None or group is None:
        raise MlxEdgeError(f"{prefix} is quantized but config.json gives no bits/group_size for it")
    if bits not in QUANT_BITS or group not in QUANT_GROUPS or isinstance(bits, bool) or isinstance(group, bool):
        raise MlxEdgeError(f"config.json quantization of {prefix}: bits {bits!r} / group_size {group!r}, expected "
                           f"bits in {QUANT_BITS} and group_size in {QUANT_GROUPS}")
    return bits, group


def tensor_kinds(tensors: dict[str, Tensor], qcfg: dict) -> dict[str, tuple[str, int]]:
    """name -> (kind, parameters) for every parameter: "affine4g64" for a quantized weight (its
    scales and biases belong to it), else the stored numpy dtype."""
    out = {}
    for name, t in tensors.items():
        base = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{base}.weight" in tensors:
            continue
        if name.endswith(".weight") and f"{base}.scales" in tensors:
            bits, group = quant_spec(qcfg, base)
            out[name] = (f"affine{bits}g{group}", t.size * 32 // bits)
        else:
            out[name] = (str(np.dtype(DTYPES[t.dtype])) if t.dtype != "BF16" else "bfloat16", t.size)
    return out


def bits_per_weight(stored_bits: int, parameters: int) -> float:
    return stored_bits / max(parameters, 1)


def stats(root: str | Path, qcfg: dict) -> dict:
    """size_bytes (the safetensors files), parameters, bits_per_weight of a bundle or checkpoint."""
    files = weight_files(root)
    tensors = scan_all(root)
    params = sum(n for _, n in tensor_kinds(tensors, qcfg).values())
    bits = sum(t.nbytes * 8 for t in tensors.values())
    return {"size_bytes": sum(f.stat().st_size for f in files), "parameters": params,
            "bits_per_weight": bits_per_weight(bits, params)}
