"""An ONNX graph as a lookup structure: lazily loaded constants, who produces and who consumes each
value, and constant folding through the layout-only ops exporters put in front of weights.

Initializers are read straight from the protobuf's raw bytes or memory-mapped from external data
files (`location`/`offset`/`length`), so nothing is loaded until a tensor is converted.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..dtypes import from_bf16_bits
from ..errors import MlxEdgeError
from ..quant.onnx_quant import dequantize_linear

# ONNX TensorProto.DataType -> (name, numpy dtype of the decoded array, bits per element)
DTYPES = {
    1: ("float32", np.float32, 32), 2: ("uint8", np.uint8, 8), 3: ("int8", np.int8, 8),
    4: ("uint16", np.uint16, 16), 5: ("int16", np.int16, 16), 6: ("int32", np.int32, 32),
    7: ("int64", np.int64, 64), 9: ("bool", np.bool_, 8), 10: ("float16", np.float16, 16),
    11: ("float64", np.float64, 64), 12: ("uint32", np.uint32, 32), 13: ("uint64", np.uint64, 64),
    16: ("bfloat16", np.float32, 16), 21: ("uint4", np.uint8, 4), 22: ("int4", np.int8, 4),
    25: ("uint2", np.uint8, 2), 26: ("int2", np.int8, 2),
}
# Ops that only move or relabel a constant: a weight may sit behind any chain of them.
LAYOUT_OPS = {"Identity", "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten"}
MAX_CHAIN = 64  # layout ops in front of one weight (exporters write 1-3); a longer chain is a cycle


@dataclass
class Const:
    """One constant tensor (initializer or Constant node), decoded on `array()`."""

    name: str
    elem_type: int
    shape: tuple[int, ...]
    proto: object  # onnx.TensorProto
    folder: Path

    @property
    def dtype(self) -> str:
        return DTYPES.get(self.elem_type, (f"onnx type {self.elem_type}",))[0]

    @property
    def nbytes(self) -> int:
        bits = DTYPES.get(self.elem_type, (None, None, 8))[2]
        return (math.prod(self.shape) * bits + 7) // 8

    def check(self, model: str) -> None:
        """Dimensions non-negative and the bytes the proto holds (or points to) exactly what the
        dims and type take: checked when the graph is read, so that `array()` cannot fail later."""
        if any(d < 0 for d in self.shape) or math.prod(self.shape) > 1 << 48:
            raise MlxEdgeError(f"{model}: tensor {self.name} has dims {list(self.shape)}, expected sizes >= 0")
        if self.elem_type not in DTYPES:
            return  # refused where it is used (array()), so that an unused odd constant does no harm
        p = self.proto
        if p.data_location == 1:  # TensorProto.EXTERNAL
            self._external_location(model)
        elif p.HasField("raw_data"):
            if len(p.raw_data) != self.nbytes:
                raise MlxEdgeError(f"{model}: tensor {self.name} {self.dtype} {list(self.shape)} holds "
                                   f"{len(p.raw_data)} bytes, expected {self.nbytes}")
        else:
            try:
                n = self._typed_fields().size
            except Exception as e:  # onnx's decoder raises several types on inconsistent protos
                raise MlxEdgeError(f"{model}: tensor {self.name} {self.dtype} {list(self.shape)} cannot be "
                                   f"decoded ({type(e).__name__})") from None
            if n != math.prod(self.shape):
                raise MlxEdgeError(f"{model}: tensor {self.name} holds {n} values, its dims "
                                   f"{list(self.shape)} say {math.prod(self.shape)}")

    def array(self) -> np.ndarray:
        if self.elem_type not in DTYPES:
            raise MlxEdgeError(f"ONNX tensor {self.name} has unsupported element type {self.elem_type}")
        p = self.proto
        if p.data_location == 1:  # TensorProto.EXTERNAL
            raw = self._external()
        elif p.HasField("raw_data"):
            raw = np.frombuffer(p.raw_data, np.uint8)
        else:
            return self._typed_fields()
        return _decode(raw, self.elem_type, self.shape, self.name)

    def _external_location(self, model: str) -> tuple[Path, int, int]:
        """(file, offset, length) of external data, each checked against the file."""
        info = {e.key: e.value for e in self.proto.external_data}
        location = info.get("location", "")
        path = (self.folder / location).resolve()
        if not location or os.path.isabs(location) or self.folder.resolve() not in path.parents:
            raise MlxEdgeError(f"{model}: tensor {self.name}: external data location {location!r} is outside "
                               "the model folder")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", self.nbytes))
        except ValueError:
            raise MlxEdgeError(f"{model}: tensor {self.name}: external data offset {info.get('offset')!r} / "
                               f"length {info.get('length')!r}, expected integers") from None
        if offset < 0 or length != self.nbytes:
            raise MlxEdgeError(f"{model}: tensor {self.name} {self.dtype} {list(self.shape)} takes {self.nbytes} "
                               f"bytes, its external data says offset {offset}, length {length}")
        if not path.is_file():
            raise MlxEdgeError(f"{model}: external data file {location} is missing (needed by tensor {self.name})")
        size = path.stat().st_size
        if offset + length > size:
            raise MlxEdgeError(f"{model}: external data {location} is truncated: tensor {self.name} needs bytes "
                               f"{offset}..{offset + length}, the file has {size}")
        return path, offset, length

    def _external(self) -> np.ndarray:
        path, offset, length = self._external_location("ONNX model")
        if length == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(path, np.uint8, mode="r", offset=offset, shape=(length,))

    def _typed_fields(self) -> np.ndarray:
        from onnx import numpy_helper

        arr = numpy_helper.to_array(self.proto)
        if self.elem_type == 16:  # bfloat16 arrives as ml_dtypes.bfloat16
            return np.asarray(arr, np.float32)
        return np.asarray(arr, DTYPES[self.elem_type][1]).reshape(self.shape)


def _decode(raw: np.ndarray, elem_type: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    _, npdt, bits = DTYPES[elem_type]
    n = math.prod(shape)
    need = (n * bits + 7) // 8
    if raw.size < need:
        raise MlxEdgeError(f"ONNX tensor {name} is truncated ({raw.size} of {need} bytes)")
    raw = raw[:need]
    if elem_type == 16:  # bfloat16 bits -> float32
        return from_bf16_bits(np.asarray(raw).view(np.uint16)).reshape(shape)
    if bits < 8:  # packed sub-byte values, low bits first
        per = 8 // bits
        vals = ((np.asarray(raw)[:, None] >> (np.arange(per, dtype=np.uint8) * bits)) & ((1 << bits) - 1))
        vals = vals.reshape(-1)[:n]
        if npdt == np.int8:  # sign-extend
            vals = vals.astype(np.int8) - ((vals >> (bits - 1)).astype(np.int8) << bits)
        return vals.astype(npdt).reshape(shape)
    return np.asarray(raw).view(npdt).reshape(shape)


class OnnxGraph:
    """The model at `path`: constants, nodes (subgraphs of If/Loop included), producers, consumers."""

    def __init__(self, path: Path):
        import onnx

        self.path = path
        try:
            self.model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf raises several types for garbage input
            raise MlxEdgeError(f"{path} is not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
        if not self.model.graph.node or self.model.ir_version <= 0:
            raise MlxEdgeError(f"{path} is not an ONNX model (no graph inside)")
        self.consts: dict[str, Const] = {}
        self.nodes: list = []
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list] = defaultdict(list)
        self._add_graph(self.model.graph)
        for c in self.consts.values():
            c.check(path.name)

    def _add_graph(self, graph) -> None:
        folder = self.path.parent
        for t in graph.initializer:
            self.consts.setdefault(t.name, Const(t.name, t.data_type, tuple(t.dims), t, folder))
        for node in graph.node:
            self.nodes.append(node)
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
            if node.op_type == "Constant":
                t = _constant_tensor(node)
                if t is not None:
                    self.consts[node.output[0]] = Const(node.output[0], t.data_type, tuple(t.dims), t, folder)
            for a in node.attribute:  # If / Loop / Scan bodies (optimum's merged decoders)
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    self._add_graph(g)

    @staticmethod
    def attrs(node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def opset(self, domain: str = "") -> int:
        """The model's opset version for `domain` ("" is the default ONNX domain), 0 if absent."""
        names = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
        return next((o.version for o in self.model.opset_import if o.domain in names), 0)

    def trace(self, name: str) -> tuple[str, list]:
        """Follow `name` back through LAYOUT_OPS; returns (where that chain starts, the ops from
        there outward). The start is a constant, a DequantizeLinear output, or an activation."""
        chain = []
        while name not in self.consts:
            node = self.producer.get(name)
            if node is None or node.op_type not in LAYOUT_OPS or not node.input:
                break
            self._deep(name, len(chain))
            chain.append(node)
            name = node.input[0]
        return name, chain[::-1]

    def _deep(self, name: str, depth: int) -> None:
        if depth > MAX_CHAIN:
            raise MlxEdgeError(f"{self.path.name}: the value {name!r} is computed by a cycle or a chain of over "
                               f"{MAX_CHAIN} ops")

    def is_const(self, name: str, depth: int = 0) -> bool:
        self._deep(name, depth)
        start, _ = self.trace(name)
        if start in self.consts:
            return True
        node = self.producer.get(start)
        return node is not None and node.op_type == "DequantizeLinear" and all(
            self.is_const(i, depth + 1) for i in node.input if i)

    def value(self, name: str, depth: int = 0) -> Optional[np.ndarray]:
        """Fold a constant expression (constants through LAYOUT_OPS and DequantizeLinear) to NumPy."""
        self._deep(name, depth)
        if not name:
            return None
        if name in self.consts:
            return self.consts[name].array()
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "DequantizeLinear":
            x, s = self.value(node.input[0], depth + 1), self.value(node.input[1], depth + 1)
            if x is None or s is None:
                return None
            zp = self.value(node.input[2], depth + 1) if len(node.input) > 2 else None
            a = self.attrs(node)
            return dequantize_linear(x, s, zp, a.get("axis", 1), a.get("block_size", 0))
        if node.op_type not in LAYOUT_OPS or not node.input:
            return None
        x = self.value(node.input[0], depth + 1)
        if x is not None and node.op_type == "Reshape":
            return x.reshape(self._reshaped(node, x.shape))
        return None if x is None else apply_layout_op(self, node, x)

    def shape(self, name: str, depth: int = 0) -> Optional[tuple[int, ...]]:
        """Shape of a constant expression, without loading it."""
        self._deep(name, depth)
        if name in self.consts:
            return self.consts[name].shape
        node = self.producer.get(name)
        if node is None or node.op_type not in LAYOUT_OPS | {"DequantizeLinear"} or not node.input:
            return None
        shape = self.shape(node.input[0], depth + 1)
        if node.op_type == "Cast" and self.attrs(node).get("to") not in DTYPES:
            raise MlxEdgeError(f"{self.path.name}: Cast node {node.name!r} casts to {self.attrs(node).get('to')!r}, "
                               f"expected one of the element types {sorted(DTYPES)}")
        if shape is None or node.op_type in ("Identity", "Cast", "DequantizeLinear"):
            return shape
        if node.op_type == "Reshape":  # computed directly: reshaping a stand-in could copy
            return self._reshaped(node, shape)
        probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, [0] * len(shape))
        try:
            return tuple(apply_layout_op(self, node, probe).shape)  # a zero-stride stand-in: no copy
        except (ValueError, IndexError, TypeError, KeyError) as e:
            raise MlxEdgeError(f"{self.path.name}: {node.op_type} node {node.name!r} cannot apply to its "
                               f"{list(shape)} constant ({type(e).__name__}: {e})") from None

    def _reshaped(self, node, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a Reshape of a `shape` constant gives, checked as numpy's reshape would."""
        target = self.value(node.input[1]) if len(node.input) > 1 else None
        if target is None or target.ndim != 1 or target.dtype.kind not in "iu":
            raise MlxEdgeError(f"{self.path.name}: Reshape node {node.name!r}: its shape input is not a "
                               "constant 1-D integer tensor")
        target = [shape[i] if d == 0 and not self.attrs(node).get("allowzero", 0) and i < len(shape) else int(d)
                  for i, d in enumerate(target)]
        known = math.prod(d for d in target if d != -1)
        if target.count(-1) == 1 and known > 0 and math.prod(shape) % known == 0:
            target[target.index(-1)] = math.prod(shape) // known
        if any(d < 0 for d in target) or math.prod(target) != math.prod(shape):
            raise MlxEdgeError(f"{self.path.name}: Reshape node {node.name!r} cannot reshape {list(shape)} "
                               f"to {[int(d) for d in self.value(node.input[1])]}")
        return tuple(target)

    def const_inputs(self, node) -> Iterator[str]:
        for i in node.input:
            if i and self.is_const(i):
                yield i


def apply_layout_op(graph: OnnxGraph, node, x: np.ndarray) -> np.ndarray:
    a = graph.attrs(node)
    op = node.op_type
    if op == "Identity":
        return x
    if op == "Transpose":
        return np.transpose(x, a.get("perm"))
    if op == "Cast":
        to = a["to"]
        return x.astype(np.float32) if to == 16 else x.astype(DTYPES[to][1])
    if op == "Reshape":
        shape = [int(d) for d in graph.value(node.input[1])]
        shape = [x.shape[i] if d == 0 and not a.get("allowzero", 0) else d for i, d in enumerate(shape)]
        return x.reshape(shape)
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in graph.value(node.input[1])]
        if op == "Squeeze":
            return np.squeeze(x, tuple(axes) if axes is not None else None)
        return np.expand_dims(x, tuple(axes))
    if op == "Flatten":
        axis = a.get("axis", 1) % max(x.ndim, 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    raise AssertionError(op)


def _constant_tensor(node):
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            v = helper.get_attribute_value(a)
            dt = np.float32 if "float" in a.name else np.int64
            return numpy_helper.from_array(np.asarray(v, dt))
    return None
