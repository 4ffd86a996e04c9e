"""The smallest MLX affine form for a GGML tensor MLX cannot express exactly (Q2_K, Q3_K, Q6_K, IQ4_XS;
IQ4_NL has an exact 8-bit form, quant/ggml.py, which the pipeline takes first).

Criterion (docs/gguf.md): with w the exact dequantization of the source and ŵ an MLX form,

    RMS(ŵ − w) ≤ TAU · σ_src,     σ_src = sqrt(mean over source sub-blocks of Δ̂² / 12)

σ_src is the RMS error the source's own grid makes when it rounds (a step Δ rounds a value spread
evenly within a step with RMS error Δ/√12), Δ̂ the step of each source sub-block estimated from
its dequantized values alone: every value of a sub-block lies within `reach` steps of its centre
(Q6_K: |x| ≤ 32 d; Q2_K: max − min ≤ 3 d), so Δ̂ = extent / reach never exceeds the true step and
the criterion is never looser than stated. The MLX error is independent of the rounding the
source made, so the total error against the original weights grows by at most √(1 + TAU²) − 1.

Candidates are tried from the fewest stored bits per weight up (bits 2-8 x group 128/64/32,
float16 scale and bias per group); each is quantized with the unweighted scale search
(`search.quantize_search`, never worse than MLX's round-to-nearest) and the first that meets the
criterion wins. A cheap pass on a row sample (`shortlist`) skips candidates that are clearly too
coarse: it first finds the fewest bits whose finest group passes on the sample (bisecting over
the bit widths), since fewer bits or larger groups only add error, then samples the rest in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import affine
from .search import dequantize as dequantize_affine
from .search import quantize_search

# RMS(MLX form − source) ≤ TAU · σ_src: the total error against the original weights grows by at
# most 0.5 %; the KL the conversion adds scales with TAU² (measured on Gemma 3 Q2_K/Q3_K_M,
# docs/gguf.md), and 0.1 is the largest of the values measured that keeps Gemma Q3_K_M within the
# issue's KL 0.01.
TAU = 0.1

# source type -> (values per sub-block, reach in steps, centred on the minimum?)
GRIDS: dict[str, tuple[int, float, bool]] = {
    "Q2_K": (16, 3.0, True),  # x = (d·sc)·q − dmin·m, q in 0..3: max − min ≤ 3 steps
    "Q3_K": (16, 4.0, False),  # x = (d·sc)·(q − 4), q in 0..7: |x| ≤ 4 steps
    "Q6_K": (16, 32.0, False),  # x = (d·sc)·(q − 32), q in 0..63: |x| ≤ 32 steps
    "IQ4_XS": (32, 127 / 16, False),  # x = (d·ls)·k[q], k in -127..113: IQ4_NL's 16 levels (mean spacing 16)
}

# (bits, group) by stored bits per weight, bits + 32 / group (a float16 scale and bias per group);
# at equal size the larger group with more bits first.
CANDIDATES: tuple[tuple[int, int], ...] = tuple(sorted(
    ((b, g) for b in affine.BITS for g in (128, 64, 32)), key=lambda bg: (bg[0] + 32 / bg[1], -bg[0])))
SAMPLE_ROWS = 256  # rows of the pruning pass
PRUNE = 1.5  # a candidate whose sample error exceeds PRUNE x the limit is not tried in full


@dataclass
class Choice:
    """The chosen form: its quantization, RMS / max error against the source and σ_src."""

    aff: affine.Affine
    rms_err: float
    max_abs_err: float
    source_noise: float

    @property
    def ratio(self) -> float:
        """RMS(MLX − source) / σ_src: the criterion holds when this is ≤ TAU (8-bit group 32, the
        last candidate, is taken even when it does not: Q6_K, only 2 bits coarser, needs ≈ 0.2)."""
        return self.rms_err / self.source_noise if self.source_noise > 0 else (0.0 if self.rms_err == 0 else np.inf)


def supported(src_type: str) -> bool:
    return src_type in GRIDS


def source_noise(w: np.ndarray, src_type: str) -> float:
    """σ_src of `w` (rows, cols), the exact dequantization of a `src_type` tensor (see module doc)."""
    size, reach, with_min = GRIDS[src_type]
    rows, cols = w.shape
    x = np.asarray(w, np.float32).reshape(rows, cols // size, size)
    # max and min are exact in float32; their difference is taken in float64
    extent = (x.max(-1).astype(np.float64) - x.min(-1)) if with_min else np.abs(x).max(-1).astype(np.float64)
    step = extent / reach  # (rows, sub-blocks)
    return float(np.sqrt(np.mean(step * step) / 12))


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    d = (a - b).astype(np.float64)
    return float(np.sqrt(np.mean(d * d)))


def row_sample(rows: int) -> slice:
    """The rows of the pruning pass: every k-th row, about SAMPLE_ROWS of them."""
    return slice(None, None, max(1, rows // SAMPLE_ROWS))


def shortlist(sample: np.ndarray, limit: float, scale_dtype: str = "float16"):
    """The candidates worth quantizing in full, in CANDIDATES order, as (bits, group, last):
    those whose error on `sample` (rows of the tensor) is within PRUNE x `limit`, then the finest
    (`last`, taken whatever its error). Lazy: a candidate is sampled only when the caller asks for
    the next one after a full trial missed."""
    cols = sample.shape[1]
    fitting = [(b, g) for b, g in CANDIDATES if cols % g == 0]
    finest_group = min(g for _, g in fitting)
    memo: dict[tuple[int, int], bool] = {}

    def passes(bits: int, group: int) -> bool:
        if (bits, group) not in memo:
            trial = dequantize_affine(quantize_search(sample, bits, group, None, scale_dtype))
            memo[bits, group] = _rms(trial, sample) <= PRUNE * limit
        return memo[bits, group]

    # fewest bits whose finest group passes (fewer bits or a larger group only add error); the
    # widest is tried first since Q6_K misses even there and then nothing else needs sampling
    widths = sorted({b for b, _ in fitting})
    lo, hi = 0, len(widths)  # widths[hi:] pass, widths[:lo] fail
    if passes(widths[-1], finest_group):
        hi = len(widths) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if passes(widths[mid], finest_group):
                hi = mid
            else:
                lo = mid + 1
    fewest = widths[hi] if hi < len(widths) else None
    for k, (bits, group) in enumerate(fitting):
        last = k == len(fitting) - 1
        if last or (fewest is not None and bits >= fewest and passes(bits, group)):
            yield bits, group, last


def choose(w: np.ndarray, src_type: str, tau: float = TAU, scale_dtype: str = "float16") -> Choice:
    """The first of CANDIDATES whose error meets `RMS ≤ tau · σ_src`; 8-bit group 32 (the
    finest) when none does, its error recorded all the same. `scale_dtype`: of scales and biases
    (the candidates' order assumes float16; float32 keeps it, as it doubles every group's cost)."""
    w = np.asarray(w, np.float32)
    rows, cols = w.shape
    noise = source_noise(w, src_type)
    limit = tau * noise
    for bits, group, last in shortlist(w[row_sample(rows)], limit, scale_dtype):
        aff = quantize_search(w, bits, group, None, scale_dtype)
        back = dequantize_affine(aff)
        err = _rms(back, w)
        if err <= limit or last:
            return Choice(aff, err, float(np.abs(back - w).max()), noise)
    raise AssertionError("unreachable: the last candidate always returns")
