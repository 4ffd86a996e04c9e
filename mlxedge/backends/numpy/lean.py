"""Matrices kept small and widened per call: float16 storage and packed MLX affine (lean).

Each call turns a block of rows into float32 inside one scratch buffer that all of a model's
layers share (they run one at a time), then multiplies: no per-call allocation beyond the output.
- `Half`: float16 (out, in), widened by integer ops (3 passes; NumPy's own cast is ~4x slower).
- `PackedAffine`: the bundle's uint32 words, unpacked in "slot order" (quant/affine.py). For a
  few tokens it never forms scale * q + bias: y[o] = sum_g s[o,g] (x_g . q[o,g]) + b[o,g] sum(x_g),
  one batched matmul over groups; for a long prefill it dequantizes the block and uses one GEMM.
- `PackedFloat`: float weights as stored (float32 used in place, float16/bfloat16 widened).
"""

from __future__ import annotations

import numpy as np

from ...dtypes import as_float32
from ...quant import affine

CHUNK = 1 << 18     # weights widened per block: 1 MB of float32 stays in L2 until the matmul reads it
GROUPED_MAX = 8     # up to this many tokens, multiply packed groups; beyond, dequantize then GEMM
ROW_BLOCK = 256     # rows per block when converting at load
_F16_TO_F32 = np.float32(2.0 ** 112)  # f16 exponent bias 15 -> f32 bias 127
_F16_BITS = np.int32(-0x70000001)     # 0x8FFFFFFF: sign and the 28 bits that came from h << 13


class Scratch:
    """One growing byte buffer, carved into arrays on each call."""

    def __init__(self):
        self.buf = np.empty(0, np.uint8)

    def arrays(self, *specs: tuple[tuple[int, ...], type]) -> list[np.ndarray]:
        sizes = [(int(np.prod(shape)) * np.dtype(dt).itemsize + 63) // 64 * 64 for shape, dt in specs]
        if sum(sizes) > self.buf.size:
            self.buf = np.empty(sum(sizes), np.uint8)
        out, at = [], 0
        for (shape, dt), n in zip(specs, sizes):
            out.append(self.buf[at:at + int(np.prod(shape)) * np.dtype(dt).itemsize].view(dt).reshape(shape))
            at += n
        return out

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes


def scratch_bytes(in_features: int, bits: int | None) -> int:
    """Scratch one call of a `in_features`-wide packed (or float, bits None) matrix needs at most."""
    rows = max(1, CHUNK // in_features)
    n = rows * in_features * 4 + 2 * rows * (in_features // 32) * 4 + 256
    return n + (2 * rows * in_features if bits else 0)


def half_to_float32(h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float16 -> float32 exactly for finite values (inf/nan do not occur in weights we made finite).

    h << 13 as int32 puts exponent and mantissa in float32 place; sign extension fills bits
    28..31 for negative h, of which the mask keeps the sign; * 2**112 re-biases the exponent,
    subnormals included."""
    bits = out.view(np.int32)
    np.left_shift(h.view(np.int16), 13, out=bits, dtype=np.int32)
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

    def transposed(self) -> np.ndarray:
        return np.ascontiguousarray(as_float32(self.w).T)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        if self.w.dtype == np.float32:
            return x @ self.w.T
        y = np.empty((x.shape[0], self.out_features), np.float32)  # (T, out)
        for r0, r1 in _blocks(self.out_features, self.in_features):
            (buf,) = self.scratch.arrays(((r1 - r0, self.in_features), np.float32))
            y[:, r0:r1] = x @ to_float32_into(self.w[r0:r1], buf).T
        return y


class PackedAffine:
    """MLX affine weights as stored: w (out, in*bits/32) uint32, scales/biases (out, in/gs)."""

    def __init__(self, w, scales, biases, bits: int, group_size: int, scratch: Scratch):
        self.w, self.scales, self.biases = w, scales, biases
        self.bits, self.group_size, self.scratch = bits, group_size, scratch
        self.out_features, self.in_features = w.shape[0], w.shape[1] * 32 // bits
        groups = self.in_features // group_size
        # x[:, perm] lines x up with the unpacked slots of every group
        self.perm = (np.arange(groups)[:, None] * group_size
                     + affine.slot_order(bits, group_size)[None, :]).reshape(-1)  # (in,)

    def __call__(self) -> np.ndarray:
        return affine.dequantize(self.w, self.scales, self.biases, self.bits, self.group_size)

    def rows(self, ids) -> np.ndarray:
        return affine.dequantize(self.w[ids], self.scales[ids], self.biases[ids], self.bits, self.group_size)

    def transposed(self) -> np.ndarray:
        """W.T (in, out) contiguous float32, dequantized in row blocks that stay in cache."""
        out_t = np.empty((self.in_features, self.out_features), np.float32)
        for r in range(0, self.out_features, ROW_BLOCK):
            out_t[:, r:r + ROW_BLOCK] = self.rows(slice(r, r + ROW_BLOCK)).T
        return out_t

    def matmul(self, x: np.ndarray) -> np.ndarray:
        T, n, gs = x.shape[0], self.in_features, self.group_size
        ng = n // gs
        xp = np.ascontiguousarray(x[:, self.perm])        # (T, in) in slot order
        grouped = T <= GROUPED_MAX
        if grouped:
            xg = xp.reshape(T, ng, gs).transpose(1, 2, 0)  # (ng, gs, T)
            xsum = xp.reshape(T, ng, gs).sum(-1)           # (T, ng)
        y = np.empty((T, self.out_features), np.float32)   # (T, out)
        for r0, r1 in _blocks(self.out_features, n):
            R = r1 - r0
            shape, dt = affine.unpack_scratch(R, self.w.shape[1], self.bits)
            q, s, b, tmp = self.scratch.arrays(((R, n), np.float32), ((R, ng), np.float32),
                                               ((R, ng), np.float32), (shape, dt))
            affine.unpack_slots_into(self.w[r0:r1], self.bits, gs, q, tmp)  # (R, in) levels
            to_float32_into(self.scales[r0:r1], s)
            to_float32_into(self.biases[r0:r1], b)
            qg = q.reshape(R, ng, gs)
            if grouped:
                part = np.matmul(qg.transpose(1, 0, 2), xg)  # (ng, R, T): x_g . q[o, g]
                part *= s.T[:, :, None]
                y[:, r0:r1] = part.sum(0).T + xsum @ b.T     # (T, R)
            else:
                qg *= s[:, :, None]
                qg += b[:, :, None]                          # (R, ng, gs) dequantized
                y[:, r0:r1] = xp @ q.T
        return y
