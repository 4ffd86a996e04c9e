"""ONNX weight quantization encodings -> float32 or the exact MLX affine form.

Every ONNX encoding we read is "blocked affine": w = (q - zero_point) * scale, with one scale and
zero point per block of consecutive values along the input (K) axis of a matrix:

  com.microsoft.MatMulNBits       B (N, k_blocks, blob) uint8, values packed low bits first
  com.microsoft.GatherBlockQuantized  data (V, H) packed uint8 or int4/uint4, blocks along H
  DequantizeLinear (QDQ)          per tensor, per channel, or blocked (opset 21)
  MatMulInteger                   int8/uint8 weight, per tensor or per column scale

MLX affine stores w = scale * q' + bias per group of 32/64/128 with unsigned q'. So a block of B
values becomes B / g MLX groups that repeat the block's scale, q' = q + offset (offset makes
signed q unsigned), and bias = -(zero_point + offset) * scale. With float32 scales the bias is one
rounding away from ONNX Runtime's (q - zp) * s, so results agree to within 2 ulp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..dtypes import from_bf16_bits, to_bf16_bits
from ..errors import MlxEdgeError
from .affine import Affine, BITS

MLX_GROUPS = (128, 64, 32)


def unpack_low_first(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """(..., nbytes) uint8 holding `bits`-bit values, low-order bits first -> (..., count) uint8."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[..., :count]
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    vals = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # (..., nbytes, per)
    return vals.reshape(*packed.shape[:-1], -1)[..., :count]


@dataclass
class RowBlocks:
    """A quantized (N, K) matrix: q (N, K) integers, scales and zero points (N, ceil(K / block)).

    `zero_points` is float32 (integer-valued for integer encodings); `offset` is added to q and
    zero points to make q unsigned (8 for int4, 128 for int8); `scale_dtype` is the stored dtype of
    the scales ("float32", "float16" or "bfloat16").
    """

    q: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    block: int
    bits: int
    offset: int = 0
    scale_dtype: str = "float32"

    def dense(self) -> np.ndarray:
        """float32 (N, K) = (q - zp) * scale, the way ONNX Runtime computes it."""
        n, k = self.q.shape
        s = _expand(np.asarray(self.scales, np.float32), self.block, k)
        zp = _expand(np.asarray(self.zero_points, np.float32), self.block, k)
        return (self.q.astype(np.float32) - zp) * s

    def affine(self) -> Optional[Affine]:
        """The exact MLX affine form, or None when no MLX group size fits the blocks."""
        n, k = self.q.shape
        if self.bits not in BITS:
            return None
        g = mlx_group(self.block, k, self.scales.shape[1])
        if g is None:
            return None
        per_block = (k if self.scales.shape[1] == 1 else self.block) // g  # MLX groups per ONNX block
        s = np.repeat(np.asarray(self.scales, np.float32), per_block, axis=1)[:, : k // g]
        zp = np.repeat(np.asarray(self.zero_points, np.float32) + self.offset, per_block, axis=1)[:, : k // g]
        bias = -zp * s  # exact in float32 for float16/bfloat16 scales; one rounding for float32
        q = (self.q.astype(np.int32) + self.offset).astype(np.uint8)
        scales, biases = _store_scales(s, bias, self.scale_dtype)
        return Affine(q, scales, biases, self.bits, g)


def mlx_group(block: int, k: int, n_blocks: int) -> Optional[int]:
    """Largest MLX group size that divides K and never straddles an ONNX block boundary."""
    for g in MLX_GROUPS:
        if k % g == 0 and (n_blocks == 1 or block % g == 0):
            return g
    return None


def _expand(per_block: np.ndarray, block: int, k: int) -> np.ndarray:
    """(N, n_blocks) -> (N, K), each block's value over its `block` columns."""
    if per_block.shape[1] == 1:
        return np.broadcast_to(per_block, (per_block.shape[0], k))
    return np.repeat(per_block, block, axis=1)[:, :k]


def _store_scales(s: np.ndarray, bias: np.ndarray, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Keep the source's scale dtype when the biases fit it exactly, else float32 (never less precise)."""
    if scale_dtype == "float16":
        s16, b16 = s.astype(np.float16), bias.astype(np.float16)
        if np.array_equal(b16.astype(np.float32), bias) and np.all(np.isfinite(b16)):
            return s16, b16
    elif scale_dtype == "bfloat16":

        sb, bb = to_bf16_bits(s), to_bf16_bits(bias)
        if np.array_equal(from_bf16_bits(bb), bias):
            return sb, bb
    return s.astype(np.float32), bias.astype(np.float32)


# -- com.microsoft.MatMulNBits ------------------------------------------------------------------

def matmul_nbits(b: np.ndarray, scales: np.ndarray, zero_points: Optional[np.ndarray], k: int, n: int,
                 bits: int, block: int, scale_dtype: str) -> RowBlocks:
    """MatMulNBits weight -> RowBlocks of the (N, K) matrix.

    B is (N, k_blocks, block * bits / 8) uint8, each block's values packed low bits first and the
    last block zero-padded past K. Zero points are packed uint8 (N, ceil(k_blocks * bits / 8)) the
    same way, or unpacked floats (N, k_blocks) like HQQ writes; absent means 2^(bits - 1).
    """
    k_blocks = -(-k // block)
    b = np.asarray(b, np.uint8).reshape(n, k_blocks, -1)
    q = unpack_low_first(b, bits, block).reshape(n, k_blocks * block)[:, :k]  # (N, K)
    scales = np.asarray(scales).reshape(n, k_blocks)
    if zero_points is None:
        zp = np.full((n, k_blocks), 1 << (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8:
        per_row = -(-k_blocks * bits // 8)  # each row padded to whole bytes (flat or (N, per_row))
        if zero_points.size != n * per_row:
            raise MlxEdgeError(f"MatMulNBits zero points hold {zero_points.size} bytes, expected {n} x {per_row}")
        zp = unpack_low_first(zero_points.reshape(n, per_row), bits, k_blocks).astype(np.float32)
    else:  # float zero points, one per block
        zp = np.asarray(zero_points, np.float32).reshape(n, k_blocks)
    return RowBlocks(q, scales, zp, block, bits, 0, scale_dtype)


# -- com.microsoft.GatherBlockQuantized --------------------------------------------------------

def gather_block_quantized(data: np.ndarray, data_type: str, scales: np.ndarray,
                           zero_points: Optional[np.ndarray], bits: int, block: int, scale_dtype: str) -> RowBlocks:
    """Embedding table (V, H) quantized along H. `data_type` is "uint8" (packed, default zero
    point 2^(bits-1)), "uint4" or "int4" (one value per element here, default zero point 0)."""
    v = data.shape[0]
    n_blocks = scales.shape[-1]
    if data_type == "uint8":
        h = data.shape[1] * 8 // bits
        q = unpack_low_first(data, bits, h)
        if zero_points is None:
            zp = np.full((v, n_blocks), 1 << (bits - 1), np.float32)
        else:
            zp = unpack_low_first(zero_points.reshape(v, -1), bits, n_blocks).astype(np.float32)
        return RowBlocks(q, scales.reshape(v, n_blocks), zp, block, bits, 0, scale_dtype)
    offset = 8 if data_type == "int4" else 0
    zp = np.zeros((v, n_blocks), np.float32) if zero_points is None else zero_points.astype(np.float32)
    return RowBlocks(np.asarray(data, np.int8 if offset else np.uint8), scales.reshape(v, n_blocks),
                     zp.reshape(v, n_blocks), block, 4, offset, scale_dtype)


# -- DequantizeLinear / MatMulInteger ----------------------------------------------------------

QTYPE_BITS = {"uint8": (8, 0), "int8": (8, 128), "uint4": (4, 0), "int4": (4, 8),
              "uint2": (2, 0), "int2": (2, 2), "uint16": (16, 0), "int16": (16, 1 << 15)}


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray],
                      axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear in float32: per tensor, per axis or blocked along `axis`."""
    x = np.asarray(x)
    axis = axis % max(x.ndim, 1)
    s, zp = _one_shape(np.asarray(scale, np.float32), zero_point)
    if s.ndim == 1 and x.ndim > 1:  # per axis
        shape = [1] * x.ndim
        shape[axis] = -1
        s, zp = s.reshape(shape), zp.reshape(shape)
    elif s.ndim == x.ndim and s.ndim > 0 and block_size:  # blocked
        s = np.repeat(s, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
        zp = np.repeat(zp, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
    return (x.astype(np.float32) - zp) * s


def _one_shape(s: np.ndarray, zero_point: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Scale and float32 zero point of one shape: a one-element scale or zero point is a scalar
    (per tensor), and a scalar beside a per-channel vector is repeated along it (MatMulInteger's
    scale and zero point are separate inputs)."""
    zp = np.zeros(s.shape, np.float32) if zero_point is None else np.asarray(zero_point, np.float32)
    s, zp = (s.reshape(()) if s.size == 1 else s), (zp.reshape(()) if zp.size == 1 else zp)
    if s.shape != zp.shape and (s.ndim == 0 or zp.ndim == 0):
        s, zp = (np.array(a) for a in np.broadcast_arrays(s, zp))
    return s, zp


def linear_rows(x: np.ndarray, qtype: str, scale: np.ndarray, zero_point: Optional[np.ndarray],
                axis: int, block_size: int, transposed: bool, scale_dtype: str) -> Optional[RowBlocks]:
    """A DequantizeLinear-style weight as RowBlocks of the MLX (out, in) matrix.

    `x` is the 2-D quantized tensor as stored; the MLX matrix is x.T when `transposed` (a MatMul
    weight (K, N)), else x. Returns None when the scales vary along the input axis in a way no
    MLX group can follow (per-input-channel or blocks along the output axis): dense only then.
    """
    if qtype not in QTYPE_BITS or x.ndim != 2:
        return None
    bits, offset = QTYPE_BITS[qtype]
    s, zp = _one_shape(np.asarray(scale), zero_point)
    axis = axis % 2
    if transposed:
        x, axis = x.T, 1 - axis
        if s.ndim == 2:
            s, zp = s.T, zp.T
    n, k = x.shape
    if s.ndim == 0:  # per tensor
        s2, zp2, block = np.full((n, 1), s, s.dtype), np.full((n, 1), zp, np.float32), k
    elif s.ndim == 1 and axis == 0:  # per output channel
        s2, zp2, block = s.reshape(n, 1), zp.reshape(n, 1), k
    elif s.ndim == 2 and axis == 1 and block_size:  # blocks along the input axis
        s2, zp2, block = s, zp, block_size
    else:
        return None
    return RowBlocks(np.ascontiguousarray(x), s2, zp2, block, bits, offset, scale_dtype)
