"""MLX affine quantization in NumPy: w ≈ scale * q + bias per group of `group_size` along the last axis.

Packing is MLX's: each row's q values form one little-endian bit stream (value i occupies bits
[i*bits, (i+1)*bits)), read as uint32 words. For 2/4/8 bits this is the familiar "value j of a
word sits at bits j*bits"; for 3/5/6 bits values straddle bytes the same way MLX lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import as_float32, to_bf16_bits

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


@dataclass
class Affine:
    """One quantized matrix, unpacked: q (rows, cols) uint8, scales/biases (rows, cols // group_size)."""

    q: np.ndarray
    scales: np.ndarray
    biases: np.ndarray
    bits: int
    group_size: int

    def packed(self) -> np.ndarray:
        return pack(self.q, self.bits)

    def dequantize(self) -> np.ndarray:
        return dequantize_unpacked(self.q, self.scales, self.biases, self.group_size)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """(..., n) uint8 values < 2**bits -> (..., n * bits // 32) uint32, MLX's layout."""
    *lead, n = q.shape
    if (n * bits) % 32:
        raise ValueError(f"row of {n} {bits}-bit values does not fill whole uint32 words")
    q = np.ascontiguousarray(q, dtype=np.uint8)
    if bits == 8:
        return q.view(np.uint32).reshape(*lead, n // 4)
    if bits in (2, 4):
        per = 8 // bits
        q = q.reshape(*lead, n // per, per)
        packed = q[..., 0].copy()  # (..., n // per): one byte, value k at bits k * bits (LSB first)
        for k in range(1, per):  # (a reduce over an axis of 2 or 4 is ~10x slower than these ORs)
            packed |= q[..., k] << np.uint8(k * bits)
        return packed.view(np.uint32).reshape(*lead, n * bits // 32)
    bitstream = np.unpackbits(q[..., None], axis=-1, count=bits, bitorder="little")  # (..., n, bits)
    packed = np.packbits(bitstream.reshape(*lead, n * bits), axis=-1, bitorder="little")
    return packed.view(np.uint32).reshape(*lead, n * bits // 32)


def unpack(w: np.ndarray, bits: int) -> np.ndarray:
    """(..., words) uint32 -> (..., words * 32 // bits) uint8: the inverse of :func:`pack`."""
    *lead, words = w.shape
    n = words * 32 // bits
    b = np.ascontiguousarray(w, dtype=np.uint32).view(np.uint8).reshape(*lead, words * 4)
    if bits == 8:
        return b.copy()
    if bits in (2, 4):
        per = 8 // bits
        shifts = (np.arange(per, dtype=np.uint8) * bits)
        return ((b[..., None] >> shifts) & ((1 << bits) - 1)).reshape(*lead, n).astype(np.uint8)
    bitstream = np.unpackbits(b, axis=-1, bitorder="little").reshape(*lead, n, bits)
    return np.packbits(bitstream, axis=-1, bitorder="little")[..., 0]


def dequantize_unpacked(q, scales, biases, group_size: int) -> np.ndarray:
    """float32 (..., n) = scale * q + bias, scales/biases upcast to float32 first."""
    *lead, n = q.shape
    g = q.reshape(*lead, n // group_size, group_size).astype(np.float32)
    s, b = as_float32(scales)[..., None], as_float32(biases)[..., None]
    return (g * s + b).reshape(*lead, n)


def dequantize(w, scales, biases, bits: int, group_size: int) -> np.ndarray:
    """MLX's dequantize for packed uint32 weights, in float32."""
    return dequantize_unpacked(unpack(w, bits), scales, biases, group_size)


def bits_per_weight(bits: int, group_size: int, scale_bits: int = 16) -> float:
    """Storage cost per weight including one scale and one bias per group."""
    return bits + 2 * scale_bits / group_size


def quantize(w: np.ndarray, bits: int, group_size: int, scale_dtype: str = "float16") -> Affine:
    """MLX's affine quantization, bit for bit: `mx.quantize(mx.array(w), group_size, bits)`.

    Follows MLX's CPU kernel (mlx/backend/cpu/quantized.cpp `quantize`), all in float32: per group
    the step is max((max - min) / (2**bits - 1), 1e-7), signed so that the endpoint of larger
    magnitude (the "edge") sits at a level q0 = rint(edge / step); when q0 != 0 the step becomes
    edge / q0 and the bias the edge itself, so the edge is exact and 0 lands on level -q0. Levels use
    the float32 step; scales/biases are rounded to `scale_dtype` ("float16", "float32", or
    "bfloat16" -> uint16 bit patterns) only on output, as MLX does for 16-bit inputs. So for float16
    (bfloat16) values this equals mx.quantize of the float16 (bfloat16) array. Input must be finite.
    (MLX's Metal kernel differs in corner cases: it rounds half away from zero and clamps max >= 0.)
    """
    if bits not in BITS or group_size not in GROUP_SIZES:
        raise ValueError(f"MLX affine supports bits {BITS} and group sizes {GROUP_SIZES}, not {bits}/{group_size}")
    x = np.asarray(w).astype(np.float32)  # float16/bfloat16 -> float32 is exact
    *lead, n = x.shape
    if n % group_size:
        raise ValueError(f"last axis {n} is not a multiple of group_size {group_size}")
    g = x.reshape(*lead, n // group_size, group_size)  # (..., n_groups, group_size)
    n_bins = np.float32((1 << bits) - 1)

    w_max, w_min = g.max(-1), g.min(-1)  # (..., n_groups)
    negative_edge = np.abs(w_min) > np.abs(w_max)
    step = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7))
    step = np.where(negative_edge, step, -step)
    edge = np.where(negative_edge, w_min, w_max)
    q0 = np.rint(edge / step)
    at_zero = q0 == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(at_zero, step, edge / q0)
    bias = np.where(at_zero, np.float32(0), edge)

    q = np.rint((g - bias[..., None]) / step[..., None])  # std::rint: half to even, like np.rint
    q = np.clip(q, 0, n_bins).astype(np.uint8).reshape(*lead, n)
    return Affine(q, _cast_params(step, scale_dtype), _cast_params(bias, scale_dtype), bits, group_size)


def _cast_params(x: np.ndarray, scale_dtype: str) -> np.ndarray:
    if scale_dtype == "float32":
        return x.astype(np.float32)
    if scale_dtype == "float16":
        return x.astype(np.float16)
    if scale_dtype == "bfloat16":
        return to_bf16_bits(x)
    raise ValueError(f"scale_dtype must be float16, bfloat16 or float32, not {scale_dtype!r}")


# -- unpacking for a matmul, column-major -----------------------------------------------------
# A unit of nb bytes holds v consecutive values (4 bits: 2 per byte; 5 bits: 8 per 5 bytes). With
# the units of all rows side by side, (units, nb, rows), value k of every row's unit u is a few
# whole-row shifts and masks, and the unpacked matrix comes out as W.T (in, rows): contiguous
# blocks of `group_size` input rows, ready for x @ W.T.

def _unit(bits: int) -> tuple[int, int]:
    """(values per unit, bytes per unit): 2 -> (4, 1), 4 -> (2, 1), 8 -> (1, 1), 3/5 -> (8, 3/5), 6 -> (4, 3)."""
    v = 8 // int(np.gcd(bits, 8))
    return v, bits * v // 8


def values_per_unit(bits: int) -> int:
    return _unit(bits)[0]


def pack_columns(w: np.ndarray, bits: int) -> np.ndarray:
    """(rows, words) uint32 packed rows -> (units, nb, rows) uint8: the same bytes, rows last."""
    v, nb = _unit(bits)
    b = np.ascontiguousarray(w).view(np.uint8).reshape(w.shape[0], -1, nb)  # (rows, units, nb)
    return np.ascontiguousarray(b.transpose(1, 2, 0))                        # (units, nb, rows)


def unpack_columns_into(bt: np.ndarray, bits: int, out: np.ndarray,
                        scratch: np.ndarray | None = None) -> np.ndarray:
    """(units, nb, cols) uint8 from `pack_columns` (or a slice) -> `out` (units * v, cols) float32,
    `unpack(w).T` for those units and columns. `scratch`: (2, units, cols) uint8 or None."""
    units, nb, cols = bt.shape
    v = _unit(bits)[0]
    o = out.reshape(units, v, cols)
    mask = (1 << bits) - 1
    if bits == 8:
        np.copyto(o[:, 0], bt[:, 0])
        return out
    if scratch is None:
        scratch = np.empty((2, units, cols), np.uint8)
    t, t2 = scratch[0].reshape(units, cols), scratch[1].reshape(units, cols)
    for k in range(v):  # value k of a unit: bits [k*bits, (k+1)*bits) of its bytes
        j, sh = divmod(k * bits, 8)
        src, dst = bt[:, j], o[:, k]
        if sh + bits == 8:
            np.right_shift(src, sh, out=dst)
        elif sh + bits < 8:
            if sh:
                src = np.right_shift(src, sh, out=t)
            np.bitwise_and(src, mask, out=dst)
        else:  # straddles bytes j and j + 1 (uint8 shifts drop the bits above)
            np.right_shift(src, sh, out=t)
            np.left_shift(bt[:, j + 1], 8 - sh, out=t2)
            np.bitwise_or(t, t2, out=t)
            np.bitwise_and(t, mask, out=dst)
    return out
