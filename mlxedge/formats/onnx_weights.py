"""Recover a model's parameters from an ONNX graph by structure, not by initializer name.

Exporters name weights arbitrarily (optimum stores MatMul weights transposed as `onnx::MatMul_8767`)
but keep the module path in node names: `/model/layers.0/self_attn/q_proj/MatMul` says that node's
constant input is `model.layers.0.self_attn.q_proj.weight`. Each op that consumes a weight (MatMul,
MatMulNBits, Gather, a norm, ...) is read here into a `Weight` under its Hugging Face name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..errors import MlxEdgeError
from ..quant.affine import Affine
from ..quant import onnx_quant as oq
from . import onnx_checks as checks
from .onnx_graph import OnnxGraph

FLOAT_SRC = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
NORM_OPS = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2,
            "LayerNormalization": 1, "SkipLayerNormalization": 2, "RMSNormalization": 1}


@dataclass
class Weight:
    """One parameter: MLX orientation ((out, in) for matrices), loaded on demand."""

    shape: tuple[int, ...]
    src_type: str
    dense: Callable[[], np.ndarray]
    affine: Optional[Callable[[], Optional[Affine]]] = None
    nbytes: int = 0
    consts: frozenset = field(default_factory=frozenset)  # initializers it is made of

    def rows(self, start: int, stop: int) -> "Weight":
        """Rows [start, stop) of a matrix (or elements of a vector): splits fused projections."""
        dense, aff = self.dense, self.affine
        def sliced_aff():
            a = aff()
            return None if a is None else Affine(a.q[start:stop], a.scales[start:stop],
                                                 a.biases[start:stop], a.bits, a.group_size)
        frac = (stop - start) / self.shape[0]
        return Weight((stop - start, *self.shape[1:]), self.src_type, lambda: dense()[start:stop],
                      sliced_aff if aff is not None else None, int(self.nbytes * frac), self.consts)


def module_of(graph: OnnxGraph, node, weight_input: str) -> Optional[str]:
    """HF module path of a weight-consuming node: from its scoped name, else its initializer name."""
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return node.name[1:].rsplit("/", 1)[0].replace("/", ".")
    start, _ = graph.trace(weight_input)
    m = re.match(r"(.+?)\.(weight|bias|MatMul|Gather|Add)\b", start)
    return m.group(1) if m else None


def float_weight(graph: OnnxGraph, name: str, transpose: bool) -> Optional[Weight]:
    """A constant reached through layout ops (or a DequantizeLinear, QDQ) as an MLX-oriented weight."""
    start, chain = graph.trace(name)
    if start in graph.consts:
        c = graph.consts[start]
        if c.dtype not in FLOAT_SRC:
            return None
        shape = graph.shape(name)
        shape = shape[::-1] if transpose and len(shape) == 2 else shape

        def dense():
            x = np.asarray(graph.value(name), np.float32)
            return x.T if transpose and x.ndim == 2 else x
        return Weight(tuple(shape), FLOAT_SRC[c.dtype], dense, None, c.nbytes, frozenset([start]))
    dq = graph.producer.get(start)
    if dq is None or dq.op_type != "DequantizeLinear" or not graph.is_const(name):
        return None
    return _qdq_weight(graph, name, dq, chain, transpose)


def _qdq_weight(graph: OnnxGraph, name: str, dq, chain: list, transpose: bool) -> Weight:
    x_start, _ = graph.trace(dq.input[0])
    qc = graph.consts.get(x_start)
    if qc is None:
        raise MlxEdgeError(f"{checks.where(graph, dq)}: quantized input is not a constant")
    a = graph.attrs(dq)
    scale_start, _ = graph.trace(dq.input[1])
    scale_dtype = graph.consts[scale_start].dtype if scale_start in graph.consts else "float32"
    # After DQ only Identity/Cast/2-D Transposes keep the blocks intact; each Transpose flips orientation.
    flips = sum(n.op_type == "Transpose" for n in chain)
    simple = all(n.op_type in ("Identity", "Cast", "Transpose") for n in chain)
    bits = oq.QTYPE_BITS.get(qc.dtype, (0,))[0]
    block = a.get("block_size", 0)
    src_type = f"QDQ{bits}" + (f"b{block}" if block else "")
    consts = frozenset(graph.trace(i)[0] for i in dq.input if i)

    def rowblocks():
        if not simple or qc.dtype not in oq.QTYPE_BITS:
            return None
        zp = graph.value(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        return oq.linear_rows(graph.value(dq.input[0]), qc.dtype, graph.value(dq.input[1]), zp,
                              a.get("axis", 1), block, transposed=(transpose != (flips % 2 == 1)),
                              scale_dtype=scale_dtype)

    def dense():
        rb = rowblocks()
        if rb is not None:
            return rb.dense()
        x = np.asarray(graph.value(name), np.float32)
        return x.T if transpose else x

    def affine():
        rb = rowblocks()
        return None if rb is None else rb.affine()
    shape = graph.shape(name)
    shape = shape[::-1] if transpose else shape
    return Weight(shape, src_type, dense, affine, _nbytes(graph, dq.input), consts)


def _rowblock_weight(rb_fn: Callable[[], oq.RowBlocks], shape, src_type, nbytes, consts) -> Weight:
    return Weight(tuple(shape), src_type, lambda: rb_fn().dense(), lambda: rb_fn().affine(), nbytes, consts)


def _nbytes(graph: OnnxGraph, names) -> int:
    return sum(graph.consts[graph.trace(n)[0]].nbytes for n in names if n and graph.trace(n)[0] in graph.consts)


def matmul_nbits_weight(graph: OnnxGraph, node) -> Weight:
    a = graph.attrs(node)
    ins = list(node.input) + [""] * (6 - len(node.input))
    if ins[4]:
        raise MlxEdgeError(f"{checks.where(graph, node)} uses g_idx (act-order quantization); its columns are "
                           "permuted per block, which MLX affine cannot express - export without act_order")
    if a.get("weight_prepacked", 0):
        raise MlxEdgeError(f"{checks.where(graph, node)} holds GPU-prepacked weights; use the CPU export")
    k, n, bits, block = checks.matmul_nbits(graph, node)
    sdt = checks.value_dtype(graph, ins[2])

    def rb():
        zp = graph.value(ins[3]) if ins[3] else None
        return oq.matmul_nbits(graph.value(ins[1]), graph.value(ins[2]), zp, k, n, bits, block, sdt)
    consts = frozenset(graph.trace(i)[0] for i in ins[1:4] if i)
    return _rowblock_weight(rb, (n, k), f"MatMulNBits{bits}b{block}", _nbytes(graph, ins[1:4]), consts)


def gather_block_quantized_weight(graph: OnnxGraph, node) -> Weight:
    data, _, scales, *rest = list(node.input)
    zp_name = rest[0] if rest else ""
    rows, hidden, bits, block, dtype = checks.gather_block_quantized(graph, node)
    sdt = checks.value_dtype(graph, scales)

    def rb():
        zp = graph.value(zp_name) if zp_name else None
        return oq.gather_block_quantized(graph.value(data), dtype, graph.value(scales), zp, bits, block, sdt)
    consts = frozenset(graph.trace(i)[0] for i in (data, scales, zp_name) if i)
    return _rowblock_weight(rb, (rows, hidden), f"GatherBlockQuantized{bits}b{block}",
                            _nbytes(graph, (data, scales, zp_name)), consts)


def matmul_integer_weight(graph: OnnxGraph, node) -> Weight:
    """MatMulInteger(A_q, W_q, a_zp, w_zp) from dynamic quantization: W's scale is not an input but a
    factor of the Mul that rescales the int32 result (output -> Cast -> Mul(scale_a * scale_w))."""
    if node.op_type == "DynamicQuantizeMatMul":  # com.microsoft fusion: A, B, b_scale, b_zero_point, bias
        w, scale_name, zp_name = node.input[1], node.input[2], node.input[3] if len(node.input) > 3 else ""
    else:
        w, zp_name = node.input[1], node.input[3] if len(node.input) > 3 else ""
        scale_name = _matmul_integer_scale(graph, node)
    k, n, qtype = checks.matmul_integer(graph, node, scale_name, zp_name)
    sdt = checks.value_dtype(graph, scale_name)

    def rb():
        zp = graph.value(zp_name) if zp_name else None
        rows = oq.linear_rows(graph.value(w), qtype, graph.value(scale_name), zp, 1, 0, True, sdt)
        if rows is None:
            raise MlxEdgeError(f"{checks.where(graph, node)}: unsupported weight layout")
        return rows
    consts = frozenset(graph.trace(i)[0] for i in (w, scale_name, zp_name) if i)
    return _rowblock_weight(rb, (n, k), f"MatMulInteger{oq.QTYPE_BITS.get(qtype, (0,))[0]}",
                            _nbytes(graph, (w, scale_name, zp_name)), consts)


def _matmul_integer_scale(graph: OnnxGraph, node) -> str:
    out = node.output[0]
    for _ in range(3):  # through Cast(s) to the rescaling Mul
        users = graph.consumers.get(out, [])
        if len(users) != 1:
            break
        user = users[0]
        if user.op_type == "Cast":
            out = user.output[0]
            continue
        if user.op_type == "Mul":
            other = next((i for i in user.input if i != out), "")
            if other and graph.is_const(other):
                return other
            combined = graph.producer.get(other) if other else None
            if combined is not None and combined.op_type == "Mul":
                consts = [i for i in combined.input if graph.is_const(i)]
                if len(consts) == 1:
                    return consts[0]
        break
    raise MlxEdgeError(f"{checks.where(graph, node)}: cannot find its weight scale (expected Cast -> Mul after it)")


# inputs an op needs at the least (onnxruntime's contrib op schemas; ONNX's for the standard ones)
ARITY = {"MatMul": 2, "Gemm": 2, "FusedMatMul": 2, "MatMulNBits": 3, "MatMulInteger": 2,
         "DynamicQuantizeMatMul": 3, "Gather": 2, "GatherBlockQuantized": 3}


def collect(graph: OnnxGraph) -> dict[str, Weight]:
    """Every parameter the graph's weight-consuming ops hold, under HF-style names (exporter scope)."""
    found: dict[str, Weight] = {}
    linear_modules: set[str] = set()

    def put(name: str, w: Optional[Weight]) -> None:
        if w is not None and name not in found:  # merged decoders repeat nodes in both If branches
            found[name] = w

    for node in graph.nodes:  # constant DequantizeLinear nodes, whoever reads them (weights, shapes)
        if node.op_type == "DequantizeLinear" and node.output and graph.is_const(node.output[0]):
            checks.dequantize_linear(graph, node)
    for node in graph.nodes:
        op, ins = node.op_type, list(node.input)
        if len(ins) < ARITY.get(op, 0):
            raise MlxEdgeError(f"{graph.path.name}: {op} node {node.name!r} has {len(ins)} inputs; "
                               f"the op takes at least {ARITY[op]}")
        if op in ("MatMul", "Gemm", "FusedMatMul") and len(ins) > 1 and graph.is_const(ins[1]):
            mod = module_of(graph, node, ins[1])
            if mod is None:
                continue
            trans_b = graph.attrs(node).get("transB", 0) if op != "MatMul" else 0
            put(f"{mod}.weight", float_weight(graph, ins[1], transpose=not trans_b))
            if op == "Gemm" and len(ins) > 2 and ins[2] and graph.is_const(ins[2]):
                put(f"{mod}.bias", float_weight(graph, ins[2], transpose=False))
            linear_modules.add(mod)
        elif op == "MatMulNBits":
            mod = module_of(graph, node, ins[1])
            put(f"{mod}.weight", matmul_nbits_weight(graph, node))
            if len(ins) > 5 and ins[5]:
                put(f"{mod}.bias", float_weight(graph, ins[5], transpose=False))
            linear_modules.add(mod)
        elif op in ("MatMulInteger", "DynamicQuantizeMatMul") and graph.is_const(ins[1]):
            mod = module_of(graph, node, ins[1])
            put(f"{mod}.weight", matmul_integer_weight(graph, node))
            if op == "DynamicQuantizeMatMul" and len(ins) > 4 and ins[4]:
                put(f"{mod}.bias", float_weight(graph, ins[4], transpose=False))
            linear_modules.add(mod)
        elif op == "Gather" and graph.is_const(ins[0]) and len(graph.shape(ins[0]) or ()) == 2:
            mod = module_of(graph, node, ins[0])
            put(f"{mod}.weight", float_weight(graph, ins[0], transpose=False))
        elif op == "GatherBlockQuantized":
            put(f"{module_of(graph, node, ins[0])}.weight", gather_block_quantized_weight(graph, node))
        elif op in NORM_OPS and len(ins) > NORM_OPS[op] and graph.is_const(ins[NORM_OPS[op]]):
            mod = module_of(graph, node, ins[NORM_OPS[op]])
            put(f"{mod}.weight", float_weight(graph, ins[NORM_OPS[op]], transpose=False))
            b = NORM_OPS[op] + 1
            if op in ("LayerNormalization", "SkipLayerNormalization") and len(ins) > b and ins[b]:
                put(f"{mod}.bias", float_weight(graph, ins[b], transpose=False))
    # Norm weights written out as ops (x * rsqrt(...) * w) and Linear biases (MatMul -> Add b).
    for node in graph.nodes:
        if node.op_type not in ("Mul", "Add") or not node.name.startswith("/"):
            continue
        mod = node.name[1:].rsplit("/", 1)[0].replace("/", ".")
        leaf = mod.rsplit(".", 1)[-1]
        kind = "weight" if node.op_type == "Mul" and leaf.endswith("norm") else \
               "bias" if node.op_type == "Add" and mod in linear_modules else None
        if kind is None:
            continue
        for i in graph.const_inputs(node):
            shape = graph.shape(i) or ()
            if len(shape) == 1 and shape[0] > 1:
                put(f"{mod}.{kind}", float_weight(graph, i, transpose=False))
    return found

