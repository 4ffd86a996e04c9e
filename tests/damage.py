"""Damaged copies of real model files, for the hostile-input tests (issue 10) and
`scripts/fuzz_inputs.py`.

Every case is a function `case(src, out_dir) -> Path` that writes one damaged copy of `src` (a GGUF
file, or a converted bundle directory) into `out_dir` and returns the copy's path; the source is
never modified. `GGUF_CASES` and `BUNDLE_CASES` map each case's name to its function, and
`intact_gguf` / `intact_bundle` write undamaged copies to compare against.

The GGUF cases go through a small header rewriter of their own (`read_gguf` / `GGUF.write`), not
through gguf-py's writer, which refuses to write most of this damage. It follows the layout in
ggml's docs/gguf.md, little-endian throughout:

    magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
    kv*:     key string | value_type u32 | value     (string: u64 length + UTF-8 bytes;
                                                      array: item_type u32 | count u64 | items)
    tensor*: name string | n_dims u32 | ne u64[n_dims] (ne0 first) | ggml_type u32 | offset u64
    zero padding to general.alignment (default 32) | tensor data (offsets relative to its start)

`intact_gguf` re-serializes a file unchanged, and must give back the same bytes.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType as T

_SCALAR = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
           T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}
HUGE = 2**62  # a length or count no file can hold


# --- the GGUF rewriter ------------------------------------------------------------------------

@dataclass
class KV:
    key: str
    type: int
    value: Any  # arrays: (item_type, [items]), nested arrays likewise
    pos: int = -1  # in the source file: offset of the value (just after its type)


@dataclass
class Tensor:
    name: str
    dims: list[int]  # GGUF order: ne0 (the contiguous dimension) first
    type: int  # ggml type id
    offset: int  # relative to the tensor data
    pos: int = -1  # in the source file: offset of n_dims (just after the name)

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[GGMLQuantizationType(self.type)][0]


@dataclass
class GGUF:
    path: Path
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    alignment: int  # of the source's layout; `write` pads to it whatever general.alignment now says
    data_start: int  # absolute offset of the tensor data in the source
    size: int = field(default=0)  # of the source file

    def kv(self, key: str) -> KV:
        return next(kv for kv in self.kvs if kv.key == key)

    def set(self, key: str, type: int, value: Any) -> None:
        """Replace `key` in place (keeping its position), or append it."""
        for kv in self.kvs:
            if kv.key == key:
                kv.type, kv.value = type, value
                return
        self.kvs.append(KV(key, type, value))

    @property
    def arch(self) -> str:
        return self.kv("general.architecture").value

    def write(self, dst: Path, n_tensors: int | None = None, n_kv: int | None = None) -> Path:
        """Serialize the header, pad to `alignment`, then copy the source's tensor data."""
        out = bytearray(b"GGUF")
        out += struct.pack("<IQQ", self.version, len(self.tensors) if n_tensors is None else n_tensors,
                           len(self.kvs) if n_kv is None else n_kv)
        for kv in self.kvs:
            out += _string(kv.key) + struct.pack("<I", kv.type) + _value(kv.type, kv.value)
        for t in self.tensors:
            out += _string(t.name) + struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims)
            out += struct.pack("<IQ", t.type, t.offset)
        out += bytes(-len(out) % self.alignment)
        with open(self.path, "rb") as f, open(dst, "wb") as g:
            g.write(out)
            f.seek(self.data_start)
            shutil.copyfileobj(f, g, 1 << 22)
        return dst


def _string(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _value(type: int, value: Any) -> bytes:
    if type == T.STRING:
        return _string(value)
    if type == T.ARRAY:
        item, items = value
        if item in _SCALAR:
            return struct.pack(f"<IQ{len(items)}{_SCALAR[item][1]}", item, len(items), *items)
        return struct.pack("<IQ", item, len(items)) + b"".join(_value(item, v) for v in items)
    return struct.pack(_SCALAR[type], value)


def read_gguf(path: str | Path) -> GGUF:
    """Parse a (well-formed) GGUF header: plain values, with types and source positions kept."""
    path = Path(path)
    buf = path.read_bytes()  # the header could be parsed from a prefix; test files are small enough
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        return buf[pos - n:pos].decode("utf-8", "surrogateescape")

    def value(type: int) -> Any:
        nonlocal pos
        if type == T.STRING:
            return string()
        if type == T.ARRAY:
            item, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in _SCALAR:
                fmt = f"<{n}{_SCALAR[item][1]}"
                items = list(struct.unpack_from(fmt, buf, pos))
                pos += struct.calcsize(fmt)
                return item, items
            return item, [value(item) for _ in range(n)]
        (v,) = struct.unpack_from(_SCALAR[type], buf, pos)
        pos += struct.calcsize(_SCALAR[type])
        return v

    kvs = []
    for _ in range(n_kv):
        key = string()
        (type,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        kvs.append(KV(key, type, None, pos))
        kvs[-1].value = value(type)
    tensors = []
    for _ in range(n_tensors):
        name = string()
        t = Tensor(name, [], 0, 0, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        t.dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
        t.type, t.offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tensors.append(t)
    align = next((kv.value for kv in kvs if kv.key == "general.alignment"), 32)
    return GGUF(path, version, kvs, tensors, align, pos + (-pos % align), len(buf))


def _patch(src: Path, dst: Path, *edits: tuple[int, str, Any]) -> Path:
    """Copy `src` byte for byte, then overwrite (offset, struct format, value) fields."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for offset, fmt, v in edits:
            f.seek(offset)
            f.write(struct.pack(fmt, v))
    return dst


def _truncate(src: Path, dst: Path, size: int) -> Path:
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(size))
    return dst


# --- GGUF cases -------------------------------------------------------------------------------

GGUF_CASES: dict[str, Callable[[Path, Path], Path]] = {}


def _edit(fn: Callable[[GGUF], dict | None]):
    """A case that edits the parsed header; `fn` may return header-count overrides for `write`."""
    def case(src: str | Path, out_dir: str | Path) -> Path:
        g = read_gguf(src)
        return g.write(Path(out_dir) / f"{fn.__name__}.gguf", **(fn(g) or {}))
    case.__name__ = case.__qualname__ = fn.__name__
    case.__doc__ = fn.__doc__
    GGUF_CASES[fn.__name__] = case
    return case


def _bytes(fn: Callable[[GGUF, Path, Path], Path]):
    """A case that patches or cuts the source's bytes (`fn(parsed, src, dst)`)."""
    def case(src: str | Path, out_dir: str | Path) -> Path:
        return fn(read_gguf(src), Path(src), Path(out_dir) / f"{fn.__name__}.gguf")
    case.__name__ = case.__qualname__ = fn.__name__
    case.__doc__ = fn.__doc__
    GGUF_CASES[fn.__name__] = case
    return case


def intact_gguf(src: str | Path, out_dir: str | Path) -> Path:
    """The source re-serialized unchanged by the rewriter (the same bytes)."""
    return read_gguf(src).write(Path(out_dir) / "intact.gguf")


def _quantized(g: GGUF) -> Tensor:
    t = next((t for t in g.tensors if t.block_size > 1 and len(t.dims) == 2), None)
    if t is None:
        raise ValueError(f"{g.path.name} has no quantized 2-D tensor")
    return t


@_edit
def block_count_huge(g):
    """{arch}.block_count = 2**40."""
    g.set(f"{g.arch}.block_count", T.UINT64, 2**40)


@_edit
def block_count_zero(g):
    g.set(f"{g.arch}.block_count", g.kv(f"{g.arch}.block_count").type, 0)


@_edit
def block_count_float(g):
    """block_count as a float32 (its value + 0.5)."""
    g.set(f"{g.arch}.block_count", T.FLOAT32, g.kv(f"{g.arch}.block_count").value + 0.5)


@_edit
def alignment_zero(g):
    """general.alignment = 0 (the data stays where it was)."""
    g.set("general.alignment", T.UINT32, 0)


@_edit
def tensor_offset_misaligned(g):
    """The last tensor's data offset + 1 byte: not a multiple of the alignment."""
    g.tensors[-1].offset += 1


@_edit
def context_length_string(g):
    key = f"{g.arch}.context_length"
    g.set(key, T.STRING, str(g.kv(key).value))


@_edit
def embedding_length_string(g):
    key = f"{g.arch}.embedding_length"
    g.set(key, T.STRING, str(g.kv(key).value))


@_edit
def embedding_length_wrong(g):
    """embedding_length twice its value: disagrees with every tensor shape."""
    key = f"{g.arch}.embedding_length"
    g.set(key, g.kv(key).type, 2 * g.kv(key).value)


@_edit
def head_count_zero(g):
    key = f"{g.arch}.attention.head_count"
    g.set(key, g.kv(key).type, 0)


@_edit
def head_count_seven(g):
    """7 heads: does not divide the embedding length (nor match the q/k/v shapes)."""
    key = f"{g.arch}.attention.head_count"
    g.set(key, g.kv(key).type, 7)


@_edit
def tensor_partial_block(g):
    """A quantized tensor whose row length is not a multiple of its block size."""
    t = _quantized(g)
    t.dims[0] -= t.block_size // 2


@_edit
def tensor_zero_dim(g):
    """The first 2-D tensor has a zero dimension."""
    next(t for t in g.tensors if len(t.dims) == 2).dims[1] = 0


@_edit
def tensor_dims_overflow(g):
    """A 2-D tensor of 2**32 x 2**32 elements: the element count overflows 64 bits."""
    next(t for t in g.tensors if len(t.dims) == 2).dims[:] = [2**32, 2**32]


@_edit
def tensor_offset_past_end(g):
    """The last tensor's data starts (aligned) far past the end of the file."""
    g.tensors[-1].offset = 2**40


@_edit
def tensor_type_unknown(g):
    g.tensors[0].type = 999


@_edit
def duplicate_tensor_name(g):
    """The second tensor takes the first one's name."""
    g.tensors[1].name = g.tensors[0].name


@_edit
def duplicate_key(g):
    """block_count appears twice, the second time as 1."""
    kv = g.kv(f"{g.arch}.block_count")
    g.kvs.append(KV(kv.key, kv.type, 1))


@_edit
def tokens_string(g):
    """tokenizer.ggml.tokens is one string instead of an array of strings."""
    g.set("tokenizer.ggml.tokens", T.STRING, "hello")


@_edit
def bos_token_id_huge(g):
    g.set("tokenizer.ggml.bos_token_id", T.UINT32, 2**32 - 1)


@_bytes
def array_length_huge(g, src, dst):
    """tokenizer.ggml.tokens claims 2**62 items."""
    return _patch(src, dst, (g.kv("tokenizer.ggml.tokens").pos + 4, "<Q", HUGE))


@_bytes
def string_length_huge(g, src, dst):
    """The first token's string claims 2**62 bytes."""
    return _patch(src, dst, (g.kv("tokenizer.ggml.tokens").pos + 12, "<Q", HUGE))


@_bytes
def key_length_huge(g, src, dst):
    """The first metadata key claims 2**62 bytes."""
    return _patch(src, dst, (24, "<Q", HUGE))


@_bytes
def tensor_count_huge(g, src, dst):
    return _patch(src, dst, (8, "<Q", HUGE))


@_bytes
def kv_count_huge(g, src, dst):
    return _patch(src, dst, (16, "<Q", HUGE))


@_bytes
def value_type_unknown(g, src, dst):
    """general.architecture's value type is 99."""
    return _patch(src, dst, (g.kv("general.architecture").pos - 4, "<I", 99))


@_bytes
def n_dims_huge(g, src, dst):
    """The first tensor claims 2**31 dimensions."""
    return _patch(src, dst, (g.tensors[0].pos, "<I", 2**31))


@_bytes
def version_99(g, src, dst):
    return _patch(src, dst, (4, "<I", 99))


@_bytes
def truncated_in_header(g, src, dst):
    """12 bytes: the magic, the version and half the tensor count."""
    return _truncate(src, dst, 12)


@_bytes
def truncated_in_metadata(g, src, dst):
    """Cut in the middle of the token list."""
    kv = g.kv("tokenizer.ggml.tokens")
    return _truncate(src, dst, kv.pos + 12 + 1000)


@_bytes
def truncated_in_tensor_info(g, src, dst):
    return _truncate(src, dst, g.tensors[len(g.tensors) // 2].pos + 2)


@_bytes
def truncated_at_data(g, src, dst):
    """The whole header, no tensor data."""
    return _truncate(src, dst, g.data_start)


@_bytes
def truncated_in_data(g, src, dst):
    return _truncate(src, dst, (g.data_start + g.size) // 2)


@_bytes
def truncated_one_byte(g, src, dst):
    return _truncate(src, dst, g.size - 1)


# --- bundle cases -----------------------------------------------------------------------------

BUNDLE_CASES: dict[str, Callable[[Path, Path], Path]] = {}


def intact_bundle(src: str | Path, out_dir: str | Path, name: str = "intact") -> Path:
    """A plain copy of the bundle directory `src` as `out_dir/name`."""
    dst = Path(out_dir) / name
    shutil.copytree(src, dst)
    return dst


def _bundle(fn: Callable[[Path], None]):
    """A case that damages a fresh copy of the bundle in place (`fn(copy_dir)`)."""
    def case(src: str | Path, out_dir: str | Path) -> Path:
        dst = intact_bundle(src, out_dir, fn.__name__)
        fn(dst)
        return dst
    case.__name__ = case.__qualname__ = fn.__name__
    case.__doc__ = fn.__doc__
    BUNDLE_CASES[fn.__name__] = case
    return case


def _shard(bundle: Path) -> Path:
    return sorted(bundle.glob("*.safetensors"))[0]


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header JSON, offset of the data) of one safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def _rewrite_header(path: Path, edit: Callable[[dict, int], None]) -> None:
    """Re-serialize a safetensors header after `edit(header, data_size)`, keeping the data."""
    header, start = read_safetensors_header(path)
    edit(header, path.stat().st_size - start)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_suffix(".tmp")
    with open(path, "rb") as f, open(tmp, "wb") as g:
        g.write(struct.pack("<Q", len(blob)) + blob)
        f.seek(start)
        shutil.copyfileobj(f, g, 1 << 22)
    tmp.replace(path)


def _last_tensor(header: dict) -> dict:
    return max((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][1])


@_bundle
def st_offsets_past_end(b):
    """The last tensor's data_offsets start at the end of the data (its length kept)."""
    def edit(header, size):
        t = _last_tensor(header)
        begin, end = t["data_offsets"]
        t["data_offsets"] = [size, size + end - begin]
    _rewrite_header(_shard(b), edit)


@_bundle
def st_shape_mismatch(b):
    """The last tensor's shape says twice as many elements as its byte range holds."""
    def edit(header, size):
        _last_tensor(header)["shape"][0] *= 2
    _rewrite_header(_shard(b), edit)


@_bundle
def st_truncated_one_byte(b):
    p = _shard(b)
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - 1)


@_bundle
def st_header_length_huge(b):
    with open(_shard(b), "r+b") as f:
        f.write(struct.pack("<Q", HUGE))


@_bundle
def st_header_invalid_json(b):
    """The header's first bytes overwritten (its length kept)."""
    with open(_shard(b), "r+b") as f:
        f.seek(8)
        f.write(b"{nope")


def _cut(path: Path) -> None:
    """Keep the first half of a file: JSON that ends mid-way."""
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])


@_bundle
def config_list(b):
    """config.json is a JSON list holding the config."""
    p = b / "config.json"
    p.write_text(json.dumps([json.loads(p.read_text())]))


@_bundle
def config_heads_string(b):
    p = b / "config.json"
    config = json.loads(p.read_text())
    config["num_attention_heads"] = str(config["num_attention_heads"])
    p.write_text(json.dumps(config, indent=2))


@_bundle
def config_invalid_json(b):
    _cut(b / "config.json")


@_bundle
def mlxedge_json_invalid(b):
    _cut(b / "mlxedge.json")


@_bundle
def tokenizer_json_invalid(b):
    _cut(b / "tokenizer.json")


@_bundle
def tokenizer_config_invalid(b):
    _cut(b / "tokenizer_config.json")
