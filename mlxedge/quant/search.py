"""MLX affine quantization with scale and bias searched per group to minimize a weighted error.

The format is MLX's (same packing, same dequantization w = scale * q + bias); only the choice of
scale, bias and levels differs from mx.quantize's round-to-nearest over the full range:
shrunken ranges are tried (clipping a few outliers buys a finer step for the rest), then
weighted least-squares refits of (scale, bias) for the chosen levels. The weight of input column
j is its importance (E[x_j²] from calibration), as in llama.cpp's imatrix quantization. Per
group the best candidate wins, MLX's own result included, so the error is never worse.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import from_bf16_bits, to_bf16_bits
from . import affine

SHRINK = (0.95, 0.9, 0.85, 0.8, 0.7)  # range fractions tried per group (1.0 is MLX's own choice)
BLOCK_ROWS = 8192  # rows quantized at a time (bounds memory on large embeddings)


def _stored(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(array as stored, its float32 value) for scales/biases in `dtype`."""
    if dtype == "bfloat16":
        bits = to_bf16_bits(x)
        return bits, from_bf16_bits(bits)
    if dtype == "float16":
        h = x.astype(np.float16)
        return h, h.astype(np.float32)
    return x.astype(np.float32), x.astype(np.float32)


def quantize_search(w: np.ndarray, bits: int, group: int, importance: np.ndarray | None = None,
                    scale_dtype: str = "float16", refits: int = 2) -> affine.Affine:
    """MLX affine quantization minimizing Σ_j importance_j (w_j - ŵ_j)² per group.

    Starts from MLX's round-to-nearest (`affine.quantize`, bit-identical to mx.quantize), tries
    shrunken ranges (clipping outliers buys finer steps for the rest), then refits scale and bias
    by weighted least squares for the chosen levels; per group the best candidate wins, so the
    result is never worse than MLX's own.
    """
    w = np.asarray(w, dtype=np.float32)
    if len(w) > BLOCK_ROWS:
        parts = [quantize_search(w[i: i + BLOCK_ROWS], bits, group, importance, scale_dtype, refits)
                 for i in range(0, len(w), BLOCK_ROWS)]
        return affine.Affine(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("q", "scales", "biases")),
                             bits, group)
    rows, cols = w.shape
    x = w.reshape(rows, cols // group, group)  # (rows, groups, group)
    imp = np.ones(cols, np.float32) if importance is None else np.asarray(importance, np.float32)
    imp = (imp + 1e-6 * max(float(imp.mean()), 1e-30)).reshape(1, cols // group, group)
    top = np.float32((1 << bits) - 1)

    best = affine.quantize(w, bits, group, scale_dtype)
    q = best.q.reshape(x.shape).astype(np.float32)
    scales, biases = best.scales.copy(), best.biases.copy()
    s0, b0 = _value(scales, scale_dtype), _value(biases, scale_dtype)
    r = q * s0[..., None]  # the weighted squared residual, in place (as `consider` computes it)
    r += b0[..., None]
    r -= x
    r *= r
    r *= imp
    err = np.sum(r, axis=-1)  # (rows, groups)
    del r
    own = np.zeros(err.shape, bool)  # the group's best levels come from `consider`

    def consider(s: np.ndarray, b: np.ndarray, ends: tuple | None = None) -> None:
        """Take (s, b) for the groups where it has the smaller error. `ends`, the groups' (min,
        max) for a candidate whose levels are clipped (s ≥ 0): a group whose extreme value alone
        already errs as much as its best so far cannot gain, and is not computed."""
        nonlocal err
        s_st, s_f = _stored(s, scale_dtype)
        b_st, b_f = _stored(b, scale_dtype)
        # a group whose best came from this function with this stored (scale, bias) would get the
        # same levels and error again: not computed (RTN's levels come from its unrounded step)
        todo = ~own | (s_st != scales) | (b_st != biases)  # (rows, groups)
        if ends is not None:
            todo &= _clip_floor(s_f, b_f, *ends, top, imp_min) < err
        at = np.nonzero(todo)  # (row, group) indices of the groups computed (None below: all)
        if not len(at[0]):
            return
        if 2 * len(at[0]) > err.size:  # (most groups: the gather costs more than it saves)
            at = None
        xs, ims, es = (x, imp, err) if at is None else (x[at], imp[0, at[1]], err[at])
        s_f, b_f = (s_f, b_f) if at is None else (s_f[at], b_f[at])
        zero = s_f == 0
        safe = np.where(zero, np.float32(1), s_f)[..., None]
        s_f, b_f = s_f[..., None], b_f[..., None]
        qc = np.subtract(xs, b_f)  # the levels, in place: (..., group)
        qc /= safe
        np.rint(qc, out=qc)
        np.clip(qc, 0, top, out=qc)
        if zero.any():
            qc[zero] = 0
        r = qc * s_f  # the squared weighted residual, in place
        r += b_f
        r -= xs
        r *= r
        r *= ims
        e = np.sum(r, axis=-1)
        better = e < es
        if not better.any():
            return
        if at is None:
            q[better], scales[better], biases[better] = qc[better], s_st[better], b_st[better]
            err = np.where(better, e, err)
            own[better] = True
        else:
            won = (at[0][better], at[1][better])
            q[won], scales[won], biases[won], err[won] = qc[better], s_st[won], b_st[won], e[better]
            own[won] = True

    lo, hi = x.min(-1), x.max(-1)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    imp_min = imp.min(-1)  # (1, groups)
    for frac in SHRINK:
        s = np.maximum(2 * half * frac / top, np.float32(1e-7))
        consider(s, mid - half * frac, (lo, hi))
    sw, swx = imp.sum(-1), (imp * x).sum(-1)  # (1, groups), (rows, groups): independent of the levels
    for _ in range(refits):  # weighted least squares for (scale, bias) given the current levels
        s_f = _value(scales, scale_dtype)
        iq = imp * q
        swq, swqq, swqx = iq.sum(-1), (iq * q).sum(-1), (iq * x).sum(-1)
        det = sw * swqq - swq * swq
        ok = det > 1e-12 * np.maximum(sw * swqq, 1e-30)
        det = np.where(ok, det, 1)
        s = np.where(ok, (sw * swqx - swq * swx) / det, s_f)
        b = np.where(ok, (swqq * swx - swq * swqx) / det, _value(biases, scale_dtype))
        consider(s.astype(np.float32), b.astype(np.float32))
    return affine.Affine(q.reshape(rows, cols).astype(np.uint8), scales, biases, bits, group)


def _clip_floor(s_f, b_f, lo, hi, top, imp_min) -> np.ndarray:
    """A lower bound of each group's weighted squared error under stored (s_f, b_f) ≥ 0, from its
    extreme values alone, in the float32 steps `consider` takes: levels are clipped to [0, top],
    so the group's max is rebuilt at most as top·s + b and its min at least as b. A sum of
    non-negative float32 terms is at least its largest term, so this never exceeds `consider`'s e."""
    over = np.minimum(top * s_f + b_f - hi, 0)  # (rows, groups): how far below the max the grid ends
    under = np.maximum(b_f - lo, 0)  # how far above the min it starts
    return np.maximum(over * over * imp_min, under * under * imp_min)


def _value(stored: np.ndarray, dtype: str) -> np.ndarray:
    return from_bf16_bits(stored) if dtype == "bfloat16" else stored.astype(np.float32)


def dequantize(aff: affine.Affine) -> np.ndarray:
    """float32 values of `aff`, bfloat16 scales/biases (uint16 bit patterns) included."""
    dtype = "bfloat16" if aff.scales.dtype == np.uint16 else "float32"
    return affine.dequantize_unpacked(aff.q, _value(aff.scales, dtype), _value(aff.biases, dtype), aff.group_size)


def dequantized_search(w, bits, group, importance=None, scale_dtype="float16") -> np.ndarray:
    return dequantize(quantize_search(w, bits, group, importance, scale_dtype))


def dequantized_rtn(w, bits, group, importance=None, scale_dtype="float16") -> np.ndarray:
    """MLX's round-to-nearest (mx.quantize), dequantized."""
    return dequantize(affine.quantize(w, bits, group, scale_dtype))
