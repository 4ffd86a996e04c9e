"""onnxruntime's CPU kernels (MLAS) for the NumPy backend's matrix products, in float32.

NumPy's BLAS (OpenBLAS) multiplies float32 weights. Two products are much faster in MLAS
(docs/serving.md, SmolLM2 Q4_1 on one core):
- Quantized weights as stored, `AffineGemm`: com.microsoft.MatMulNBits computes x @ ((q - 8) s).T
  from 4-bit nibbles (MLX and MatMulNBits both put element 2j in the low nibble of byte j) in
  float32 (accuracy_level 0: the activations are not quantized). MLX's affine weight is q s + b,
  so y = MatMulNBits(x) + xsum @ (b + 8 s).T, xsum (T, groups) the sums of x over each group: the
  same product, rounded differently (~1e-6 relative). A decode step reads 0.6 bytes per 4-bit
  weight instead of float32's 4; wider levels are split into two 4-bit planes (AffineGemm).
- Float weights with 2 rows or more (the server's batched decode), `DenseGemm`: MLAS's SGEMM on W
  packed once into its kernel's layout, where OpenBLAS reaches ~25 GFLOP/s at 4-16 rows. One row
  stays with NumPy: its matrix-vector product is as fast on one thread and faster on several.

"onnxruntime-int8" (opt-in) runs MatMulNBits at accuracy_level 4: each row of x is quantized to
int8 per block of the group size (as llama.cpp's q8 activations) and MLAS multiplies with VNNI:
2-3x faster products, no longer the float32 arithmetic of mlx-lm (KL and top-1 agreement with the
float path in docs/serving.md). Float weights stay float32.

Each session is one small graph over one weight, built on its first call, with `threads` intra-op
threads of its own that sleep between calls (no spinning: a hundred pools spinning on a few cores
starve each other, and NumPy's attention runs between two products on the same cores). The
server's process shares one pool instead (`share_threads`): B=8 decode steps 10% faster.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from ...dtypes import as_float32
from ...errors import MlxEdgeError, OutOfMemory
from ...quant import affine
from .lean import PackedAffine

CHOICES = ("numpy", "onnxruntime", "onnxruntime-int8", "auto")


def available() -> bool:
    """onnxruntime and onnx (which builds the one-node graphs) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class Kernels:
    """The choice a model was loaded with: MLAS sessions on `threads` threads each.

    `packs`: the server's choice (serve/batch.py) to add `DenseGemm`s for products of 2+ rows by
    float weights and by those wider than 4 bits (weights.Linear.pack), when their packed float32
    copies fit in memory twice over. A prompt's prefill does well without them."""

    def __init__(self, threads: int = 1, int8: bool = False):
        if not available():
            raise MlxEdgeError("matmul 'onnxruntime' needs the onnxruntime and onnx packages "
                               "(pip install onnxruntime onnx)")
        self.threads = max(1, int(threads))
        self.int8 = int8  # activations quantized to int8 in AffineGemm (accuracy_level 4)
        self.packs = False
        self.made: weakref.WeakSet = weakref.WeakSet()  # products still in use; `build` makes their sessions

    def takes(self, src) -> bool:
        """`src` (lean.PackedAffine / PackedFloat) is multiplied by `AffineGemm` as stored."""
        return isinstance(src, PackedAffine)

    def affine(self, parts: list[PackedAffine]) -> "AffineGemm":
        g = AffineGemm(parts, self.threads, accuracy_level=4 if self.int8 else 0)
        self.made.add(g)
        return g

    def build(self) -> None:
        """Make every session now (load time), not at the first product: the first token's latency."""
        for g in list(self.made):
            g.ensure()

    def dense(self, w: np.ndarray) -> "DenseGemm":
        return DenseGemm(w, self.threads)

    @property
    def name(self) -> str:
        return "onnxruntime-int8" if self.int8 else "onnxruntime"


def resolve(choice: str, threads: int = 1) -> Kernels | None:
    """`Kernels` for "onnxruntime"/"onnxruntime-int8" (and for "auto" where onnxruntime imports),
    None for "numpy"."""
    if choice not in CHOICES:
        raise MlxEdgeError(f"unknown matmul {choice!r}; choose from {', '.join(CHOICES)}")
    if choice == "numpy" or (choice == "auto" and not available()):
        return None
    return Kernels(threads, int8=choice == "onnxruntime-int8")


_POOL: list[int] = []  # the size of onnxruntime's process-wide thread pool, once `share_threads` made it


def share_threads(threads: int) -> bool:
    """Run every session of this process on one onnxruntime thread pool of `threads` (spinning
    between calls), instead of a sleeping pool per session: the server's process calls this once
    (serve/cli.py), before any session. Afterwards onnxruntime refuses sessions with pools of
    their own, in this process, which is why a library never calls it. False if unavailable."""
    if _POOL:
        return _POOL[0] == threads
    try:
        from onnxruntime.capi._pybind_state import set_global_thread_pool_sizes

        set_global_thread_pool_sizes(max(1, threads), 1)
    except Exception:  # noqa: BLE001 — an older or differently built onnxruntime: per-session pools
        return False
    _POOL.append(max(1, threads))
    return True


def shared_threads() -> int:
    """The shared pool's size where `share_threads` made one, else 1."""
    return _POOL[0] if _POOL else 1


class _Session:
    """One onnxruntime session, made on first use (a fused q/k/v replaces its parts before any call)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.session = None
        self.held = None
        self.lock = threading.Lock()

    def _options(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if _POOL:  # onnxruntime then allows no other kind of session
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = False  # an arena per session would keep each one's largest output
        return opts

    def _open(self, model, opts, weights: dict[str, np.ndarray]):
        """A session over `model`, its external initializers read from `weights` in place."""
        import onnxruntime as ort

        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in weights.values()]
        opts.add_external_initializers(list(weights), values)
        self.held = (weights, values)  # ORT reads these buffers for as long as the session lives
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def ensure(self) -> None:
        if self.session is None:
            with self.lock:
                if self.session is None:
                    try:
                        self.session = self.build()
                    except MemoryError:
                        raise OutOfMemory("out of memory making onnxruntime's kernels (MLXEDGE_MATMUL=numpy "
                                          "needs less)") from None
                    except Exception as e:  # noqa: BLE001 — onnxruntime's own exception types
                        if "bad_alloc" in str(e):
                            raise OutOfMemory("out of memory making onnxruntime's kernels (MLXEDGE_MATMUL=numpy "
                                              "needs less)") from None
                        raise MlxEdgeError(f"onnxruntime could not make a kernel: {str(e).splitlines()[0]}") from None

    def run(self, x: np.ndarray) -> np.ndarray:
        self.ensure()
        return self.session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def build(self):
        raise NotImplementedError


def _model(nodes, inputs, outputs, initializers):
    from onnx import helper

    graph = helper.make_graph(nodes, "linear", inputs, outputs, initializers)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13),
                                                                 helper.make_opsetid("com.microsoft", 1)])


class AffineGemm(_Session):
    """x @ W.T for MLX affine W = q s + b, rows stacked from `parts` (same bits and group size).

    In float32 (accuracy_level 0) MatMulNBits is fast for 4 bits only, so every width is written
    as 4-bit planes: q < 16 (2, 3, 4 bits) is one plane; 5-8 bits are q = 16 hi + lo, two planes,
    the high one with scales 16 s (exact). With int8 activations (accuracy_level 4) its 8-bit
    kernel is the fast one for 5-8 bits (SmolLM2's 8-bit tied head: 2-3x faster than two planes):
    one plane of bytes. Each plane's product subtracts a zero point and `c` adds it back; with int8
    activations it is the middle of the levels (MatMulNBits' defaults, 8 and 128, put the 2-, 5-
    and 6-bit errors up to 2x past the int8-rounding bound: tests/test_gemm.py)."""

    def __init__(self, parts: list[PackedAffine], threads: int = 1, accuracy_level: int = 0):
        super().__init__(threads)
        bits, gs = parts[0].bits, parts[0].group_size
        if any(p.bits != bits or p.group_size != gs or p.in_features != parts[0].in_features for p in parts):
            raise MlxEdgeError("AffineGemm parts differ in bits, group size or input width")
        self.parts, self.bits, self.group_size = parts, bits, gs
        self.accuracy_level = accuracy_level
        self.in_features = parts[0].in_features
        self.out_features = sum(p.out_features for p in parts)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)  # (T, out)

    @property
    def wide(self) -> bool:
        """Two 4-bit planes (5-8 bits in float32): slower than a packed float32 copy at 2+ rows."""
        return self.bits > 4 and self.accuracy_level == 0

    def planes(self) -> list[tuple[np.ndarray, int, int, int]]:
        """[(levels (N, K*plane_bits/8) uint8 in MatMulNBits' order, plane bits, zero point,
        multiplier)], high plane first."""
        ws = [np.asarray(p.w) for p in self.parts]
        if self.bits == 4:  # MLX's 4-bit words are already nibbles in that order
            return [(np.concatenate([w.view(np.uint8) for w in ws]), 4, 8, 1)]
        if self.bits == 8:  # one level per byte, in order
            q = np.concatenate([w.view(np.uint8) for w in ws])
        else:
            q = np.concatenate([affine.unpack(w, self.bits) for w in ws]).astype(np.uint8)  # (N, K) levels
        # with int8 activations the zero point sits mid-levels; in float32 the default (8) is exact too
        middle = 1 << (self.bits - 1) if self.accuracy_level else 8
        if self.bits < 4:
            return [(_nibbles(q), 4, middle, 1)]
        if not self.wide:
            return [(q, 8, middle, 1)]
        return [(_nibbles(q >> 4), 4, 8, 16), (_nibbles(q & 15), 4, 8, 1)]

    def build(self):
        from onnx import TensorProto, helper, numpy_helper

        K, N, gs = self.in_features, self.out_features, self.group_size
        ng = K // gs
        s = np.concatenate([as_float32(p.scales) for p in self.parts])  # (N, ng)
        b = np.concatenate([as_float32(p.biases) for p in self.parts])  # (N, ng)
        planes = self.planes()
        c = b + np.float32(sum(z * m for _, _, z, m in planes)) * s  # what the planes' products subtracted
        weights, nodes, terms = {"c": np.ascontiguousarray(c.T)}, [], []  # c: (ng, N)
        for i, (levels, pb, z, mult) in enumerate(planes):
            weights[f"q{i}"] = levels.reshape(N, ng, gs * pb // 8)
            weights[f"s{i}"] = s * np.float32(mult) if mult != 1 else s
            inputs = ["x", f"q{i}", f"s{i}"]
            if z != 1 << (pb - 1):  # not MatMulNBits' default: one zero point per group, packed as the levels
                weights[f"z{i}"] = _zero_points(z, N, ng, pb)
                inputs.append(f"z{i}")
            nodes.append(helper.make_node("MatMulNBits", inputs, [f"y{i}"], domain="com.microsoft",
                                          K=K, N=N, bits=pb, block_size=gs, accuracy_level=self.accuracy_level))
            terms.append(f"y{i}")
        inits = [_external(name, a) for name, a in weights.items()]
        inits += [numpy_helper.from_array(np.array([-1, ng, gs], np.int64), "groups"),
                  numpy_helper.from_array(np.array([2], np.int64), "last")]
        nodes += [helper.make_node("Reshape", ["x", "groups"], ["xg"]),                 # (T, ng, gs)
                  helper.make_node("ReduceSum", ["xg", "last"], ["xsum"], keepdims=0),  # (T, ng)
                  helper.make_node("MatMul", ["xsum", "c"], ["xb"])]                    # (T, N)
        for i, term in enumerate(terms):
            nodes.append(helper.make_node("Add", ["xb" if i == 0 else f"acc{i}", term],
                                          ["y" if i == len(terms) - 1 else f"acc{i + 1}"]))
        model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])], inits)
        return self._open(model, self._options(), weights)

    def dense(self) -> np.ndarray:
        """W (out, in) float32, as `PackedAffine.dense` gives it (for `DenseGemm`)."""
        return np.concatenate([p.dense() for p in self.parts])


class DenseGemm(_Session):
    """x @ w.T for w (out, in) float32, read in place (an external initializer) and packed by MLAS."""

    def __init__(self, w: np.ndarray, threads: int = 1):
        super().__init__(threads)
        if w.dtype != np.float32 or w.ndim != 2 or not w.flags.c_contiguous:
            raise MlxEdgeError(f"DenseGemm needs a C-contiguous float32 matrix, got {w.dtype} {w.shape}")
        self.w = w

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)  # (T, out)

    def build(self):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        N, K = self.w.shape
        model = _model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
                       [_external("w", self.w)])
        return self._open(model, self._options(), {"w": self.w})


def _zero_points(z: int, N: int, groups: int, bits: int) -> np.ndarray:
    """MatMulNBits' zero points, all `z`: (N, groups) bytes for 8 bits, two groups a byte for 4."""
    if bits == 8:
        return np.full((N, groups), z, np.uint8)
    return np.full((N, (groups + 1) // 2), z | z << 4, np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Levels (N, K) < 16 -> (N, K/2) uint8, element 2j in the low nibble of byte j."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def _external(name: str, a: np.ndarray):
    """An initializer whose bytes `_open` hands over from memory."""
    from onnx import TensorProto, helper

    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(a.dtype), dims=a.shape,
                    data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=name)
    return t
