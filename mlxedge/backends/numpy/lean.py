"""Matrices kept small and widened per call: float16 storage and packed MLX affine (lean).

Each call turns a block of rows into float32 inside one scratch buffer that all of a model's
layers share (they run one at a time), then multiplies: no per-call allocation beyond the output.
- `Half`: float16 (out, in), widened by integer ops (NumPy's own float16 cast is ~5x slower).
- `LeanAffine`: the bundle's packed bytes re-laid column-major at load (same size), unpacked per
  call by whole-row shifts and masks (quant/affine.py `unpack_columns_into`) straight into W.T.
- `PackedFloat`: float weights as stored (float32 used in place, float16/bfloat16 widened).
`PackedAffine` is the bundle's tensors as stored, which float32/float16 dequantize once at load.
"""

from __future__ import annotations

import math

import numpy as np

from ...dtypes import as_float32
from ...quant import affine

CHUNK = 1 << 20     # weights widened per block: 4 MB of float32 stays in cache until the matmul reads it
GROUPED_MAX = 8     # up to this many tokens, multiply packed groups; beyond, dequantize then GEMM
COLS_MIN = 256      # output columns per block at least: long rows for the integer ops
ROW_BLOCK = 256     # rows per block when converting at load
_F16_TO_F32 = np.float32(2.0 ** 112)  # f16 exponent bias 15 -> f32 bias 127
_F16_BITS = np.int32(-0x70000001)     # 0x8FFFFFFF: sign and the 28 bits that came from h << 13


def matmul_t(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x @ w.T for w (out, in) contiguous: y (T, out), C-contiguous. OpenBLAS is 1.3-1.5x faster
    computing (w @ x.T) than x @ w.T (or x @ W.T stored (in, out)) for a few rows of x (decoding
    several sequences at once) and for the 49k-row vocabulary head at any T (measured on 2-16 rows)."""
    return np.ascontiguousarray((w @ x.T).T)


class Scratch:
    """One growing byte buffer, carved into arrays (the carvings of each shape list are kept)."""

    def __init__(self):
        self.buf = np.empty(0, np.uint8)
        self.views: dict[tuple, list[np.ndarray]] = {}

    def arrays(self, *specs: tuple[tuple[int, ...], type]) -> list[np.ndarray]:
        views = self.views.get(specs)
        if views is not None:
            return views
        nbytes = [math.prod(shape) * np.dtype(dt).itemsize for shape, dt in specs]
        total = sum((n + 63) // 64 * 64 for n in nbytes)
        if total > self.buf.size:
            self.buf, self.views = np.empty(total, np.uint8), {}
        views, at = [], 0
        for (shape, dt), n in zip(specs, nbytes):
            views.append(self.buf[at:at + n].view(dt).reshape(shape))
            at += (n + 63) // 64 * 64
        self.views[specs] = views
        return views

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes


def scratch_bytes(in_features: int, bits: int | None) -> int:
    """Scratch one call of an `in_features`-wide packed (or float, bits None) matrix needs at most."""
    n = max(CHUNK, COLS_MIN * 32, in_features)  # weights in one block
    return 4 * n + 2 * 4 * n // 32 + (2 * n if bits else 0) + 256


def half_to_float32(h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float16 -> float32 exactly for finite values (weights are checked finite at load).

    int16 -> int32 sign-extends; << 13 puts exponent and mantissa in float32 place, the mask keeps
    the sign of the four bits 28..31, and * 2**112 re-biases the exponent (subnormals included).
    Four native loops: NumPy's own float16 cast is ~5x slower."""
    bits = out.view(np.int32)
    np.copyto(bits, h.view(np.int16))
    np.left_shift(bits, 13, out=bits)
    np.bitwise_and(bits, _F16_BITS, out=bits)
    np.multiply(out, _F16_TO_F32, out=out)
    return out


def to_float32_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Stored floats (float32, float16, bfloat16 as uint16 bits) into `out` float32."""
    if x.dtype == np.float16:
        return half_to_float32(x, out)
    if x.dtype == np.uint16:
        np.left_shift(x, 16, out=out.view(np.uint32), dtype=np.uint32)
        return out
    np.copyto(out, x)
    return out


def _blocks(rows: int, in_features: int):
    step = max(1, CHUNK // in_features)
    for r in range(0, rows, step):
        yield r, min(rows, r + step)


class Half:
    """W (out, in) float16; x @ W.T widened block by block."""

    def __init__(self, w16: np.ndarray, scratch: Scratch):
        self.w16, self.scratch = w16, scratch
        self.out_features, self.in_features = w16.shape

    def matmul(self, x: np.ndarray) -> np.ndarray:
        y = np.empty((x.shape[0], self.out_features), np.float32)  # (T, out)
        for r0, r1 in _blocks(self.out_features, self.in_features):
            (buf,) = self.scratch.arrays(((r1 - r0, self.in_features), np.float32))
            y[:, r0:r1] = x @ half_to_float32(self.w16[r0:r1], buf).T  # (T, rows)
        return y

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.w16[ids].astype(np.float32)  # (T, in)


class PackedFloat:
    """Float weights (out, in) as stored, memory-mapped."""

    def __init__(self, w: np.ndarray, scratch: Scratch):
        self.w, self.scratch = w, scratch
        self.out_features, self.in_features = w.shape

    def __call__(self) -> np.ndarray:
        return as_float32(self.w)

    def rows(self, ids) -> np.ndarray:
        return as_float32(self.w[ids])

    def dense(self) -> np.ndarray:
        """W (out, in) contiguous float32."""
        return np.ascontiguousarray(as_float32(self.w), dtype=np.float32)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        if self.w.dtype == np.float32:
            return matmul_t(self.w, x)
        y = np.empty((x.shape[0], self.out_features), np.float32)  # (T, out)
        for r0, r1 in _blocks(self.out_features, self.in_features):
            (buf,) = self.scratch.arrays(((r1 - r0, self.in_features), np.float32))
            y[:, r0:r1] = x @ to_float32_into(self.w[r0:r1], buf).T
        return y


class PackedAffine:
    """MLX affine weights as stored: w (out, in*bits/32) uint32, scales/biases (out, in/gs)."""

    def __init__(self, w, scales, biases, bits: int, group_size: int):
        self.w, self.scales, self.biases = w, scales, biases
        self.bits, self.group_size = bits, group_size
        self.out_features, self.in_features = w.shape[0], w.shape[1] * 32 // bits

    def __call__(self) -> np.ndarray:
        return affine.dequantize(self.w, self.scales, self.biases, self.bits, self.group_size)

    def rows(self, ids) -> np.ndarray:
        return affine.dequantize(self.w[ids], self.scales[ids], self.biases[ids], self.bits, self.group_size)

    def dense(self) -> np.ndarray:
        """W (out, in) contiguous float32, dequantized a block of rows at a time."""
        out = np.empty((self.out_features, self.in_features), np.float32)
        for r in range(0, self.out_features, ROW_BLOCK):
            out[r:r + ROW_BLOCK] = self.rows(slice(r, r + ROW_BLOCK))
        return out


class LeanAffine:
    """The same packed bytes laid out (units, nb, out) (affine.pack_columns), scales/biases (in/gs, out).

    A block of columns of W.T unpacks with whole-row integer ops into the scratch; for a few tokens
    y[o] = sum_g s[g,o] (x_g . q[g,:,o]) + b[g,o] sum(x_g), one batched matmul over groups, never
    forming s * q + b; for a long prefill the block is dequantized in place and fed to one GEMM."""

    def __init__(self, p: PackedAffine, scratch: Scratch):
        self.bits, self.group_size, self.scratch = p.bits, p.group_size, scratch
        self.out_features, self.in_features = p.out_features, p.in_features
        self.bt = affine.pack_columns(p.w, p.bits)       # (units, nb, out) uint8
        self.st = np.ascontiguousarray(p.scales.T)       # (in/gs, out) as stored
        self.bias_t = np.ascontiguousarray(p.biases.T)   # (in/gs, out)
        self.unit_values = affine.values_per_unit(p.bits)

    def _dequantized_t(self, units: slice, cols, out_q, out_s, out_b, tmp) -> np.ndarray:
        """Levels (in, cols) float32 of the selected units and columns, scales/biases widened."""
        affine.unpack_columns_into(self.bt[units, :, cols], self.bits, out_q, tmp)
        g = slice(units.start * self.unit_values // self.group_size, units.stop * self.unit_values // self.group_size)
        to_float32_into(self.st[g, cols], out_s)
        to_float32_into(self.bias_t[g, cols], out_b)
        return out_q

    def rows(self, ids) -> np.ndarray:
        """Dequantized rows W[ids] (T, in) float32, the same values as PackedAffine.rows."""
        ids = np.asarray(ids).reshape(-1)
        n, gs, T = self.in_features, self.group_size, ids.size
        q, s, b = np.empty((n, T), np.float32), np.empty((n // gs, T), np.float32), np.empty((n // gs, T), np.float32)
        self._dequantized_t(slice(0, self.bt.shape[0]), ids, q, s, b, None)
        qg = q.reshape(n // gs, gs, T)
        return np.ascontiguousarray((qg * s[:, None, :] + b[:, None, :]).reshape(n, T).T)  # (T, in)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        T, n, gs, out = x.shape[0], self.in_features, self.group_size, self.out_features
        ng, upg = n // gs, gs // self.unit_values  # groups; units per group
        cols = min(out, max(COLS_MIN, CHUNK // n))
        gstep = max(1, CHUNK // (cols * gs))
        grouped = T <= GROUPED_MAX
        xg = x.reshape(T, ng, gs).transpose(1, 0, 2)  # (ng, T, gs)
        xsum = x.reshape(T, ng, gs).sum(-1)           # (T, ng)
        y = np.zeros((T, out), np.float32)            # (T, out)
        for c0 in range(0, out, cols):
            c = slice(c0, min(out, c0 + cols))
            C = c.stop - c.start
            for g0 in range(0, ng, gstep):
                G = min(ng, g0 + gstep) - g0
                q, s, b, tmp = self.scratch.arrays(((G * gs, C), np.float32), ((G, C), np.float32),
                                                   ((G, C), np.float32), ((2, G * upg, C), np.uint8))
                self._dequantized_t(slice(g0 * upg, (g0 + G) * upg), c, q, s, b, tmp)  # (G*gs, C)
                qg = q.reshape(G, gs, C)
                if grouped:
                    part = np.matmul(xg[g0:g0 + G], qg)  # (G, T, C): x_g . q[g]
                    part *= s[:, None, :]
                    y[:, c] += part.sum(0) + xsum[:, g0:g0 + G] @ b
                else:
                    qg *= s[:, None, :]
                    qg += b[:, None, :]                  # (G, gs, C) dequantized W.T block
                    y[:, c] += x[:, g0 * gs:(g0 + G) * gs] @ q
        return y
