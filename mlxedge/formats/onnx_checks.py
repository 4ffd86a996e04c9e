"""The inputs of an ONNX graph's quantized weight ops, checked against the shapes they imply when the
graph is read (before any tensor is loaded): convert then never meets a block it cannot decode.

Each check raises one `MlxEdgeError` naming the model file, the op and node, the input, what its
attributes imply and what the file holds. The layouts are onnxruntime's contrib op schemas
(MatMulNBits, GatherBlockQuantized) and ONNX's DequantizeLinear / MatMulInteger.
"""

from __future__ import annotations

from typing import Optional

from ..errors import MlxEdgeError
from ..quant.onnx_quant import QTYPE_BITS
from .onnx_graph import DTYPES, OnnxGraph

FLOATS = ("float32", "float16", "bfloat16")
PACKED_BITS = (2, 4, 8)  # values packed low bits first into whole bytes
MAX_DIM = 1 << 24


def where(graph: OnnxGraph, node) -> str:
    return f"{graph.path.name}: {node.op_type} node {node.name!r}"


def int_attr(graph: OnnxGraph, node, key: str, default: Optional[int] = None, low: int = 0,
             high: int = MAX_DIM) -> int:
    """An integer attribute in [low, high] (`default` when absent; required when None)."""
    value = graph.attrs(node).get(key, default)
    if value is None:
        raise MlxEdgeError(f"{where(graph, node)} lacks the attribute {key}")
    if not isinstance(value, int) or not low <= value <= high:
        raise MlxEdgeError(f"{where(graph, node)}: attribute {key} is {value!r}, expected an integer in [{low}, {high}]")
    return value


def block_size(graph: OnnxGraph, node, default: Optional[int] = None) -> int:
    block = int_attr(graph, node, "block_size", default, 1, 1 << 16)
    if block < 16 or block & (block - 1):
        raise MlxEdgeError(f"{where(graph, node)}: block_size is {block}, expected a power of two >= 16")
    return block


def value_dtype(graph: OnnxGraph, name: str) -> str:
    """The element type of a constant expression: its constant's, or that of the last Cast after it."""
    start, chain = graph.trace(name)
    dtype = graph.consts[start].dtype if start in graph.consts else "float32"
    for node in chain:
        if node.op_type == "Cast":
            to = graph.attrs(node).get("to")
            dtype = DTYPES[to][0] if to in DTYPES else f"onnx type {to}"
    return dtype


def const_input(graph: OnnxGraph, node, index: int, role: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of the node's `index`-th input, which must be a constant expression."""
    name = node.input[index] if index < len(node.input) else ""
    shape = graph.shape(name) if name and graph.is_const(name) else None
    if shape is None:
        raise MlxEdgeError(f"{where(graph, node)}: {role} input {name!r} is not a constant")
    return tuple(shape), value_dtype(graph, name)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def expect(graph: OnnxGraph, node, role: str, shape, dtype: str, want_count: int, want_dtypes,
           implied: str, want_shape: Optional[tuple[int, ...]] = None) -> None:
    """`role` holds `want_count` elements of one of `want_dtypes` (in `want_shape`, when the op's
    schema fixes one), as `implied` says."""
    if dtype not in want_dtypes:
        raise MlxEdgeError(f"{where(graph, node)}: {role} is {dtype}, expected {' or '.join(want_dtypes)}")
    if numel(shape) != want_count or want_shape is not None and tuple(shape) != want_shape:
        raise MlxEdgeError(f"{where(graph, node)}: {role} has shape {list(shape)} ({numel(shape)} values), "
                           f"expected {list(want_shape) if want_shape else want_count} ({implied})")


def matmul_nbits(graph: OnnxGraph, node) -> tuple[int, int, int, int]:
    """MatMulNBits: B (N, k_blocks, block * bits / 8) uint8, scales N x k_blocks floats, zero points
    packed uint8 (N, ceil(k_blocks * bits / 8)) or floats like the scales. -> (K, N, bits, block)."""
    k, n = int_attr(graph, node, "K", None, 1), int_attr(graph, node, "N", None, 1)
    bits = int_attr(graph, node, "bits", 4, 1, 8)
    if bits not in PACKED_BITS:
        raise MlxEdgeError(f"{where(graph, node)}: bits is {bits}, expected one of {PACKED_BITS}")
    block = block_size(graph, node)
    k_blocks, blob = -(-k // block), block * bits // 8
    implied = f"K {k}, N {n}, bits {bits}, block_size {block}"
    b_shape, b_dtype = const_input(graph, node, 1, "B")
    expect(graph, node, "B", b_shape, b_dtype, n * k_blocks * blob, ("uint8",),
           f"N x blocks x bytes a block = {n} x {k_blocks} x {blob}; {implied}")
    s_shape, s_dtype = const_input(graph, node, 2, "scales")
    expect(graph, node, "scales", s_shape, s_dtype, n * k_blocks, FLOATS, f"N x blocks = {n} x {k_blocks}")
    if len(node.input) > 3 and node.input[3]:
        z_shape, z_dtype = const_input(graph, node, 3, "zero_points")
        if z_dtype == "uint8":
            per_row = -(-k_blocks * bits // 8)
            expect(graph, node, "zero_points", z_shape, z_dtype, n * per_row, ("uint8",),
                   f"N x packed bytes a row = {n} x {per_row}")
        else:
            expect(graph, node, "zero_points", z_shape, z_dtype, n * k_blocks, ("uint8", s_dtype),
                   f"N x blocks = {n} x {k_blocks}")
    return k, n, bits, block


def gather_block_quantized(graph: OnnxGraph, node) -> tuple[int, int, int, int, str]:
    """GatherBlockQuantized on a (V, H) table quantized along H: data packed uint8 (V, H * bits / 8)
    or int4/uint4 (V, H); scales V x ceil(H / block) floats; zero points packed like the data.
    -> (V, H, bits, block, data dtype)."""
    shape, dtype = const_input(graph, node, 0, "data")
    if dtype not in ("uint8", "uint4", "int4"):
        raise MlxEdgeError(f"{where(graph, node)}: data is {dtype}, expected uint8, uint4 or int4 (2/4/8-bit integers)")
    if len(shape) != 2 or int_attr(graph, node, "gather_axis", 0, -2, 1) % 2 != 0 \
            or int_attr(graph, node, "quantize_axis", 1, -2, 1) % 2 != 1:
        raise MlxEdgeError(f"{where(graph, node)}: data has shape {list(shape)}; only 2-D tables gathered on "
                           "axis 0 and quantized along axis 1 are supported")
    bits = int_attr(graph, node, "bits", 4, 1, 8) if dtype == "uint8" else 4
    if bits not in PACKED_BITS:
        raise MlxEdgeError(f"{where(graph, node)}: bits is {bits}, expected one of {PACKED_BITS}")
    block = block_size(graph, node, 128)
    v, h = shape[0], shape[1] * 8 // bits if dtype == "uint8" else shape[1]
    if v < 1 or h < 1:
        raise MlxEdgeError(f"{where(graph, node)}: data has shape {list(shape)}, expected a non-empty table")
    n_blocks = -(-h // block)
    s_shape, s_dtype = const_input(graph, node, 2, "scales")
    expect(graph, node, "scales", s_shape, s_dtype, v * n_blocks, FLOATS,
           f"rows x blocks = {v} x {n_blocks}; {h} columns, block_size {block}", (v, n_blocks))
    if len(node.input) > 3 and node.input[3]:
        z_shape, z_dtype = const_input(graph, node, 3, "zero_points")
        per_row = -(-n_blocks * bits // 8) if dtype == "uint8" else n_blocks
        expect(graph, node, "zero_points", z_shape, z_dtype, v * per_row, (dtype,),
               f"rows x {'packed bytes' if dtype == 'uint8' else 'blocks'} a row = {v} x {per_row}", (v, per_row))
    return v, h, bits, block, dtype


def dequantize_linear(graph: OnnxGraph, node) -> None:
    """DequantizeLinear on a constant: x an integer tensor; its scale a scalar (per tensor), 1-D along
    `axis` (per channel) or x's rank with ceil(x.shape[axis] / block_size) along `axis` (blocked);
    the zero point the scale's shape in x's type."""
    x_shape, x_dtype = const_input(graph, node, 0, "x")
    if x_dtype not in QTYPE_BITS and x_dtype != "int32":
        raise MlxEdgeError(f"{where(graph, node)}: x is {x_dtype}, expected an integer type "
                           f"({', '.join(QTYPE_BITS)}, int32)")
    rank = len(x_shape)
    block = int_attr(graph, node, "block_size", 0, 0, 1 << 16)
    s_shape, s_dtype = const_input(graph, node, 1, "x_scale")
    if s_dtype not in FLOATS:
        raise MlxEdgeError(f"{where(graph, node)}: x_scale is {s_dtype}, expected {' or '.join(FLOATS)}")
    if numel(s_shape) == 1 and len(s_shape) <= 1:
        pass  # per tensor (axis is not used)
    elif len(s_shape) == 1 and rank and not block:
        axis = int_attr(graph, node, "axis", 1, -rank, rank - 1) % rank
        if s_shape[0] != x_shape[axis]:
            raise MlxEdgeError(f"{where(graph, node)}: x_scale has {s_shape[0]} values, expected one per "
                               f"channel along axis {axis} of x {list(x_shape)}")
    elif len(s_shape) == rank and block:
        axis = int_attr(graph, node, "axis", 1, -rank, rank - 1) % rank
        want = tuple(-(-d // block) if i == axis else d for i, d in enumerate(x_shape))
        if s_shape != want:
            raise MlxEdgeError(f"{where(graph, node)}: x_scale has shape {list(s_shape)}, expected {list(want)} "
                               f"(x {list(x_shape)} in blocks of {block} along axis {axis})")
    else:
        raise MlxEdgeError(f"{where(graph, node)}: x_scale has shape {list(s_shape)}, expected a scalar, "
                           f"a per-channel vector or blocks of x {list(x_shape)} (block_size {block})")
    if len(node.input) > 2 and node.input[2]:
        z_shape, z_dtype = const_input(graph, node, 2, "x_zero_point")
        if z_dtype != x_dtype or z_shape != s_shape:
            raise MlxEdgeError(f"{where(graph, node)}: x_zero_point is {z_dtype} {list(z_shape)}, expected "
                               f"{x_dtype} {list(s_shape)} (x's type, the scale's shape)")


def matmul_integer(graph: OnnxGraph, node, scale_name: str, zp_name: str) -> tuple[int, int, str]:
    """MatMulInteger / DynamicQuantizeMatMul: the weight (K, N) int8 or uint8, its scale and zero
    point one value or one per column (N). -> (K, N, weight dtype)."""
    shape, dtype = const_input(graph, node, 1, "B")
    if dtype not in ("int8", "uint8") or len(shape) != 2:
        raise MlxEdgeError(f"{where(graph, node)}: B is {dtype} {list(shape)}, expected a 2-D int8 or uint8 matrix")
    k, n = shape
    for role, name, dtypes in (("the weight's scale", scale_name, FLOATS), ("B's zero point", zp_name, (dtype,))):
        if not name:
            continue
        s_shape = graph.shape(name) if graph.is_const(name) else None
        if s_shape is None:
            raise MlxEdgeError(f"{where(graph, node)}: {role} {name!r} is not a constant")
        s_dtype = value_dtype(graph, name)
        if s_dtype not in dtypes or numel(s_shape) not in (1, n) or len(s_shape) > 1:
            raise MlxEdgeError(f"{where(graph, node)}: {role} is {s_dtype} {list(s_shape)}, expected "
                               f"{' or '.join(dtypes)}, one value or one per column ({n})")
    return k, n, dtype
