"""GGML block types -> MLX affine form, exactly, where MLX can express the stored values.

A GGML tensor row is a run of blocks; each block holds `block_size` values in `type_size` bytes.
Every function below takes the blocks of a tensor as a (n_blocks, type_size) uint8 array and
returns the MLX levels q (n_blocks, block_size) uint8 plus one float32 scale and bias per MLX
group of that block, such that q * scale + bias reproduces `gguf.quants.dequantize` bit for bit.

Why the float32 arithmetic is exact: in every repacked type the product q * scale is an integer of
at most 22 bits times a power of two, so it is exact in float32 (24-bit significand), and the bias
is either exact too (then q * scale + bias is the exact, representable GGML value) or it is the very
addend GGML itself adds after the same exact product (Q4_1, Q5_1, Q4_K, Q5_K: one rounding in both).
Either way MLX's dequantize gives the same float32 result whether it fuses into an FMA or not.

Types MLX cannot express exactly (16-value sub-blocks: Q2_K, Q3_K, Q6_K; non-uniform grids: IQ*
but IQ4_NL, whose levels are integers an 8-bit grid holds; MXFP4, ...) give None from `repack`;
the caller dequantizes and requantizes them (the smallest form within `quant.lowbit`'s criterion,
or `quant.recipes.FALLBACK` with `--exact`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from ..errors import MlxEdgeError
from .affine import Affine

F16 = np.float16
F32 = np.float32

# (values per block, bytes per block), as in ggml.h / gguf.constants.GGML_QUANT_SIZES.
BLOCKS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "TQ1_0": (256, 54),
    "TQ2_0": (256, 66),
    "IQ4_NL": (32, 18),
}

Repacked = tuple[np.ndarray, np.ndarray, np.ndarray]  # q (n, block), scales, biases (n, block // group)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 field at byte `at` of each block, as float32 (n_blocks, 1)."""
    return np.ascontiguousarray(blocks[:, at : at + 2]).view(F16).astype(F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., R) bytes -> (..., 2R) values: byte j carries value j (low nibble) and j + R (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits_le(word_bytes: np.ndarray, count: int) -> np.ndarray:
    """(n, count // 8) bytes -> (n, count) bits, bit i of the little-endian bit stream at i."""
    return np.unpackbits(word_bytes, axis=-1, count=count, bitorder="little")


# ---------------------------------------------------------------------------------------------
# 32-value blocks, one float16 step d (and minimum m): group 32, float16 scales/biases suffice.


def q4_0(blocks: np.ndarray) -> Repacked:
    """x = d * (q - 8).

    byte 0-1   d (f16)
    byte 2-17  qs[j] = q[j] | q[j + 16] << 4
    MLX: q as is, scale d, bias -8d (q * d has <= 15 bits: exact; -8d is a power-of-two multiple).
    """
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 2:18])
    return q, d, -8 * d


def q4_1(blocks: np.ndarray) -> Repacked:
    """x = d * q + m.

    byte 0-1 d (f16) | 2-3 m (f16) | 4-19 qs as in Q4_0
    MLX: scale d, bias m: the same product and the same single rounding as GGML.
    """
    return _nibbles(blocks[:, 4:20]), _f16(blocks, 0), _f16(blocks, 2)


def _q5_levels(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """5-bit levels: low 4 bits as in Q4_0, bit 4 of value j is bit j of the uint32 qh."""
    return _nibbles(qs) | (_bits_le(qh, 32) << 4)


def q5_0(blocks: np.ndarray) -> Repacked:
    """x = d * (q - 16).

    byte 0-1 d (f16) | 2-5 qh (u32 LE, bit j = bit 4 of q[j]) | 6-21 qs as in Q4_0
    MLX: scale d, bias -16d (q * d <= 16 bits: exact).
    """
    d = _f16(blocks, 0)
    return _q5_levels(blocks[:, 2:6], blocks[:, 6:22]), d, -16 * d


def q5_1(blocks: np.ndarray) -> Repacked:
    """x = d * q + m.

    byte 0-1 d (f16) | 2-3 m (f16) | 4-7 qh | 8-23 qs, as in Q5_0
    """
    return _q5_levels(blocks[:, 4:8], blocks[:, 8:24]), _f16(blocks, 0), _f16(blocks, 2)


def q8_0(blocks: np.ndarray) -> Repacked:
    """x = d * i, i int8.

    byte 0-1 d (f16) | 2-33 i[j] (int8)
    MLX: q = i + 128 (flipping the sign bit of the byte), scale d, bias -128d. q * d has <= 19 bits,
    so it is exact, and q * d - 128d is the exact value d * i.
    """
    d = _f16(blocks, 0)
    return blocks[:, 2:34] ^ np.uint8(0x80), d, -128 * d


# ---------------------------------------------------------------------------------------------
# K-quants: 256-value super-blocks, 8 sub-blocks of 32 with 6-bit scale and min: group 32.
# The sub-block step d * sc needs 11 + 6 = 17 significant bits, so scales/biases are float32.


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes -> 8 six-bit (scale, min) pairs, as float32 (n, 8) each.

    byte 0-3   EEaaaaaa   a: scale j (j < 4), E: bits 4-5 of scale j + 4
    byte 4-7   FFbbbbbb   b: min j   (j < 4), F: bits 4-5 of min j + 4
    byte 8-11  ffffeeee   e: bits 0-3 of scale j + 4, f: bits 0-3 of min j + 4
    """
    lo_sc, lo_mn, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 6) << 4)], axis=-1)
    mn = np.concatenate([lo_mn & 0x3F, (hi >> 4) | ((lo_mn >> 6) << 4)], axis=-1)
    return sc.astype(F32), mn.astype(F32)


def _k_low_nibbles(qs: np.ndarray) -> np.ndarray:
    """128 bytes in 4 runs of 32: run c holds sub-block 2c (low nibbles) and 2c + 1 (high)."""
    n = qs.shape[0]
    return _nibbles(qs.reshape(n, 4, 32)).reshape(n, 256)


def _k_params(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sub-block scale d * sc and bias -(dmin * mn), both exact float32 (n, 8)."""
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scales(blocks[:, 4:16])
    return d * sc, -(dmin * mn)


def q4_k(blocks: np.ndarray) -> Repacked:
    """x = (d * sc) * q - dmin * mn per 32-value sub-block.

    byte 0-1 d (f16) | 2-3 dmin (f16) | 4-15 scales (see _k_scales) | 16-143 qs (_k_low_nibbles)
    (d * sc) * q has <= 21 bits: exact; subtracting dmin * mn rounds once, as GGML does.
    """
    scale, bias = _k_params(blocks)
    return _k_low_nibbles(blocks[:, 16:144]), scale, bias


def q5_k(blocks: np.ndarray) -> Repacked:
    """As Q4_K with a fifth bit: bit 4 of value 32i + j is bit i of qh[j].

    byte 0-1 d | 2-3 dmin | 4-15 scales | 16-47 qh | 48-175 qs
    (d * sc) * q has <= 22 bits: exact.
    """
    n = blocks.shape[0]
    scale, bias = _k_params(blocks)
    high = _bits_le(blocks[:, 16:48, None], 8)  # (n, 32 values j, 8 sub-blocks i)
    high = high.transpose(0, 2, 1).reshape(n, 256)
    return _k_low_nibbles(blocks[:, 48:176]) | (high << 4), scale, bias


# ---------------------------------------------------------------------------------------------
# Ternary: x = d * t, t in {-1, 0, 1} (TQ2_0 can also store 2), one d per 256 values: 2 bits,
# scale d, bias -d. A 256-block with one d is exact for any MLX group; 128 is the largest.


def tq1_0(blocks: np.ndarray) -> Repacked:
    """Base-3 digits, five per byte, read as the top "digit" after multiplying by 3**k.

    byte 0-31   qs0: digit k of byte j -> value 32k + j        (k < 5)
    byte 32-47  qs1: digit k of byte j -> value 160 + 16k + j  (k < 5)
    byte 48-51  qh:  digit k of byte j -> value 240 + 4k + j   (k < 4)
    byte 52-53  d (f16)
    digit k of byte b = ((b * 3**k mod 256) * 3) >> 8, in 0..2 = t + 1.
    """
    n = blocks.shape[0]

    def digits(b: np.ndarray, k: int) -> np.ndarray:  # (n, m) -> (n, k, m)
        powers = (3 ** np.arange(k)).astype(np.uint8)[:, None]
        shifted = (b[:, None, :] * powers).astype(np.uint16)  # uint8 product wraps mod 256
        return ((shifted * 3) >> 8).astype(np.uint8)

    q = np.concatenate(
        [
            digits(blocks[:, 0:32], 5).reshape(n, 160),
            digits(blocks[:, 32:48], 5).reshape(n, 80),
            digits(blocks[:, 48:52], 4).reshape(n, 16),
        ],
        axis=-1,
    )
    d = _f16(blocks, 52)
    return q, np.repeat(d, 2, axis=-1), np.repeat(-d, 2, axis=-1)


def tq2_0(blocks: np.ndarray) -> Repacked:
    """2-bit fields, t = field - 1.

    byte 0-63   run c of 32 bytes: bits 2k..2k+1 of byte j -> value 128c + 32k + j
    byte 64-65  d (f16)
    """
    n = blocks.shape[0]
    qs = blocks[:, 0:64].reshape(n, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]  # (4, 1)
    q = ((qs >> shifts) & 0x03).reshape(n, 256)
    d = _f16(blocks, 64)
    return q, np.repeat(d, 2, axis=-1), np.repeat(-d, 2, axis=-1)


# IQ4_NL's 16 levels (ggml-common.h kvalues_iq4nl): integers, so every value is a multiple of d.
IQ4_NL_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int16)


def iq4_nl(blocks: np.ndarray) -> Repacked:
    """IQ4_NL: d (f16) | 16 bytes of nibbles (low: values 0-15, high: 16-31); x = d * k[nibble] on a
    non-uniform 16-level grid of integers in -127..113 (a 4-bit MLX grid cannot follow it). As an
    8-bit grid of step d it is exact: q = k + 128 (1..241), scale d, bias -128 d."""
    d = _f16(blocks, 0)
    q = (IQ4_NL_LEVELS[_nibbles(blocks[:, 2:18])] + 128).astype(np.uint8)  # (n, 32)
    return q, d, -128 * d


# name -> (block function, bits, MLX group size, float32 scales always)
REPACK: dict[str, tuple[Callable[[np.ndarray], Repacked], int, int, bool]] = {
    "Q4_0": (q4_0, 4, 32, False),
    "Q4_1": (q4_1, 4, 32, False),
    "Q5_0": (q5_0, 5, 32, False),
    "Q5_1": (q5_1, 5, 32, False),
    "Q8_0": (q8_0, 8, 32, False),
    "Q4_K": (q4_k, 4, 32, True),
    "Q5_K": (q5_k, 5, 32, True),
    "TQ1_0": (tq1_0, 2, 128, False),
    "TQ2_0": (tq2_0, 2, 128, False),
    # exact at 9 bits/weight, in both modes: lowbit's 8-bit group 128 saves 0.75 of them at a cost
    # (Gemma 3 Q3_K_M: KL 9.5e-3 against ~0, docs/gguf.md)
    "IQ4_NL": (iq4_nl, 8, 32, False),
}


def _blocks(raw: np.ndarray, ggml_type: str, shape: tuple[int, int]) -> np.ndarray:
    block_size, type_size = BLOCKS[ggml_type]
    rows, cols = shape
    if cols % block_size:
        raise MlxEdgeError(f"{ggml_type} row of {cols} values is not a whole number of {block_size}-value blocks")
    raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.size != rows * cols // block_size * type_size:
        raise MlxEdgeError(f"{ggml_type} data of {raw.size} bytes does not hold a {rows}x{cols} tensor")
    return raw.reshape(-1, type_size)


def repack(raw: np.ndarray, ggml_type: str, shape: tuple[int, int]) -> Affine | None:
    """The exact MLX affine form of a GGML-quantized matrix, or None if MLX cannot express it.

    raw: the bytes gguf.GGUFReader gives (uint8, (rows, bytes_per_row)); shape: (rows, cols).
    Scales/biases are float16 for the 16-bit-parameter types (float32 only if some bias such as
    -128 * d overflows float16) and float32 for Q4_K/Q5_K, whose sub-block steps need 17 bits.
    """
    if ggml_type not in REPACK:
        return None
    fn, bits, group_size, wide = REPACK[ggml_type]
    rows, cols = shape
    q, scales, biases = fn(_blocks(raw, ggml_type, shape))
    q = q.reshape(rows, cols)  # (rows, cols)
    scales = scales.reshape(rows, cols // group_size)  # (rows, cols // group_size)
    biases = biases.reshape(rows, cols // group_size)
    if not wide:
        scales, biases = _narrow(scales, biases)
    return Affine(q, scales, biases, bits, group_size)


def _narrow(scales: np.ndarray, biases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float16 copies when both survive the cast exactly, else the float32 originals."""
    with np.errstate(over="ignore"):
        s16, b16 = scales.astype(F16), biases.astype(F16)
    if np.array_equal(s16.astype(F32), scales) and np.array_equal(b16.astype(F32), biases):
        return s16, b16
    return scales, biases


def dequantize(raw: np.ndarray, ggml_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values of a GGUF tensor of any type gguf-py can decode (F32, F16, BF16, Q*, IQ*...)."""
    try:
        qtype = GGMLQuantizationType[ggml_type]
    except KeyError:
        raise MlxEdgeError(f"unknown GGML tensor type {ggml_type}") from None
    data = np.ascontiguousarray(raw)
    if ggml_type == "F32":
        data = data.view(F32)
    elif ggml_type == "F16":
        data = data.view(F16)
    else:
        data = data.view(np.uint8)
    try:
        values = gguf_dequantize(data, qtype)
    except NotImplementedError:
        raise MlxEdgeError(f"GGML tensor type {ggml_type} cannot be decoded by gguf-py") from None
    return np.array(values, dtype=F32).reshape(shape)  # a writable copy, never a view of the file
