"""Bits where they matter: per-tensor MLX affine options chosen under a bits-per-weight budget.

bits per weight (bpw) = total stored bits of all parameters (packed weights, 16-bit scales and
biases, float tensors) / number of parameters. An option (bits, group) costs bits + 32 / group.

Damage of storing tensor t with option o, from calibration (mlxedge/calibrate.py):

    damage(t, o) = Σ_uses s_u · proxy_u(ΔW_o),   proxy_u(ΔW) = Σ_j E[x_j²] · ‖ΔW[:, j]‖² / rows

where x is the input of that use (rows weighted alike for an embedding lookup) and
s_u = KL(P_source || P_probe) / proxy_u(ΔW_probe) converts a layer's weighted error into output KL,
measured by quantizing t alone at the probe option. Damages add over tensors (errors in different
tensors are nearly independent, so the cross terms of a second-order expansion of KL average out).

Allocation: each tensor's options are reduced to the lower convex hull of (cost, damage); then
upgrades are taken greedily by damage removed per bit until the budget is spent. On convex hulls
this greedy walk is the Lagrangian solution (the optimum of the relaxed problem for the budget it
reaches); it is within one upgrade step of the integer optimum, and with hundreds of tensors one
step is a tiny part of the budget. An exact knapsack over ~10^9 bit budgets is out of reach, and
coarse bins would lose the exactness of the budget, which the greedy walk keeps.

Quantization is MLX's affine format, with scale and bias per group searched to minimize the same
weighted error (range shrinking, then weighted least-squares refits); it falls back per group to
MLX's own round-to-nearest result wherever that is better.
"""

from __future__ import annotations

import hashlib
import heapq
from fractions import Fraction
from typing import Callable

import numpy as np

from ..errors import MlxEdgeError
from . import affine
from .recipes import Recipe, Target, is_matrix

SCALE_BITS = 16  # scales and biases are stored in float16 or bfloat16
OPTIONS = tuple((b, g) for b in affine.BITS for g in affine.GROUP_SIZES)
SHRINK = (0.95, 0.9, 0.85, 0.8, 0.7)  # range fractions tried per group (1.0 is MLX's own choice)
BLOCK_ROWS = 8192  # rows quantized at a time (bounds memory on large embeddings)


def option_cost(numel: int, bits: int, group: int) -> int:
    """Stored bits of a matrix of `numel` weights: packed values + one scale and one bias per group."""
    return numel * bits + 2 * SCALE_BITS * (numel // group)


def valid_options(shape: tuple) -> list[tuple[int, int]]:
    return [(b, g) for b, g in OPTIONS if shape[-1] % g == 0]


def option_name(bits: int, group: int) -> str:
    return f"{bits}g{group}"


# -- quantization: weighted search over scale and bias per group ---------------------------------

def _stored(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(array as stored, its float32 value) for scales/biases in `dtype`."""
    from ..formats.bundle import from_bf16_bits, to_bf16_bits

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
    err = np.sum(imp * (q * s0[..., None] + b0[..., None] - x) ** 2, axis=-1)  # (rows, groups)

    def consider(s: np.ndarray, b: np.ndarray) -> None:
        nonlocal err
        s_st, s_f = _stored(s, scale_dtype)
        b_st, b_f = _stored(b, scale_dtype)
        safe = np.where(s_f == 0, np.float32(1), s_f)
        qc = np.clip(np.rint((x - b_f[..., None]) / safe[..., None]), 0, top)
        qc = np.where((s_f == 0)[..., None], 0, qc)
        e = np.sum(imp * (qc * s_f[..., None] + b_f[..., None] - x) ** 2, axis=-1)
        better = e < err
        if better.any():
            q[better], scales[better], biases[better] = qc[better], s_st[better], b_st[better]
            err = np.where(better, e, err)

    lo, hi = x.min(-1), x.max(-1)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    for frac in SHRINK:
        s = np.maximum(2 * half * frac / top, np.float32(1e-7))
        consider(s, mid - half * frac)
    for _ in range(refits):  # weighted least squares for (scale, bias) given the current levels
        s_f = _value(scales, scale_dtype)
        sw, swq = imp.sum(-1), (imp * q).sum(-1)
        swqq, swx, swqx = (imp * q * q).sum(-1), (imp * x).sum(-1), (imp * q * x).sum(-1)
        det = sw * swqq - swq * swq
        ok = det > 1e-12 * np.maximum(sw * swqq, 1e-30)
        det = np.where(ok, det, 1)
        s = np.where(ok, (sw * swqx - swq * swx) / det, s_f)
        b = np.where(ok, (swqq * swx - swq * swqx) / det, _value(biases, scale_dtype))
        consider(s.astype(np.float32), b.astype(np.float32))
    return affine.Affine(q.reshape(rows, cols).astype(np.uint8), scales, biases, bits, group)


def _bf16_value(x: np.ndarray) -> np.ndarray:
    from ..formats.bundle import from_bf16_bits

    return from_bf16_bits(x)


def _value(stored: np.ndarray, dtype: str) -> np.ndarray:
    return _bf16_value(stored) if dtype == "bfloat16" else stored.astype(np.float32)


def dequantize(aff: affine.Affine) -> np.ndarray:
    """float32 values of `aff`, bfloat16 scales/biases (uint16 bit patterns) included."""
    dtype = "bfloat16" if aff.scales.dtype == np.uint16 else "float32"
    return affine.dequantize_unpacked(aff.q, _value(aff.scales, dtype), _value(aff.biases, dtype), aff.group_size)


def dequantized_search(w, bits, group, importance=None, scale_dtype="float16") -> np.ndarray:
    return dequantize(quantize_search(w, bits, group, importance, scale_dtype))


def dequantized_rtn(w, bits, group, importance=None, scale_dtype="float16") -> np.ndarray:
    """MLX's round-to-nearest (mx.quantize), dequantized."""
    return dequantize(affine.quantize(w, bits, group, scale_dtype))


# -- damage and allocation ------------------------------------------------------------------------

def _proxy(dw: np.ndarray, importance: np.ndarray | None) -> float:
    col = np.einsum("ij,ij->j", dw, dw, dtype=np.float64) / len(dw)  # (in,) mean squared error per column
    return float(col.sum() if importance is None else col @ importance)


def effective_importance(w_rows: np.ndarray, uses: list, scale_dtype: str = "float16") -> np.ndarray:
    """Σ_u s_u · importance_u: per input column, what one unit of squared error costs in KL.

    s_u = KL_u / proxy_u(error at the probe option), the error made by the same quantizer the probe
    used (the weighted search with the use's own importance), both on the same weights (here: the
    sampled rows). So the search's gain on the proxy counts only as far as it showed in the KL."""
    total = np.zeros(w_rows.shape[1], np.float64)
    for u in uses:
        imp = np.ones(w_rows.shape[1], np.float64) if u.importance is None else u.importance.astype(np.float64)
        dw = dequantized_search(w_rows, *u.probe, u.importance, scale_dtype) - w_rows
        p = _proxy(dw, imp)
        if p > 0 and u.kl > 0:
            total += (u.kl / p) * imp
    return total


def hull(costs: list[int], damages: list[float]) -> list[int]:
    """Indices of the lower convex hull of (cost, damage), cheapest first, damage decreasing."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], damages[i], i))
    pareto = []
    for i in order:  # keep options that beat every cheaper one
        if not pareto or damages[i] < damages[pareto[-1]]:
            if pareto and costs[i] == costs[pareto[-1]]:
                pareto[-1] = i
            else:
                pareto.append(i)
    out: list[int] = []
    for i in pareto:
        while len(out) >= 2:
            a, b = out[-2], out[-1]
            # drop b if it lies on or above the segment a -> i
            if (damages[b] - damages[a]) * (costs[i] - costs[a]) >= (damages[i] - damages[a]) * (costs[b] - costs[a]):
                out.pop()
            else:
                break
        out.append(i)
    return out


def allocate(costs: list[list[int]], damages: list[list[float]], budget: int) -> list[int]:
    """Choose one option per tensor (index into its lists), total cost <= budget, damage small.

    Greedy by damage removed per bit along each tensor's convex hull; ties go to the lower
    tensor index, so the result is deterministic."""
    hulls = [hull(c, d) for c, d in zip(costs, damages)]
    choice = [h[0] for h in hulls]
    spent = sum(c[i] for c, i in zip(costs, choice))
    if spent > budget:
        raise MlxEdgeError("budget below the smallest possible size")
    step = [0] * len(hulls)
    heap = []

    def push(t: int) -> None:
        h = hulls[t]
        if step[t] + 1 < len(h):
            a, b = h[step[t]], h[step[t] + 1]
            gain = (damages[t][a] - damages[t][b]) / (costs[t][b] - costs[t][a])
            heapq.heappush(heap, (-gain, t))

    for t in range(len(hulls)):
        push(t)
    while heap:
        _, t = heapq.heappop(heap)
        a, b = hulls[t][step[t]], hulls[t][step[t] + 1]
        extra = costs[t][b] - costs[t][a]
        if spent + extra > budget:
            continue  # this tensor's later steps cost more still; others may fit
        spent += extra
        step[t] += 1
        choice[t] = b
        push(t)
    return choice


# -- the recipe --------------------------------------------------------------------------------

_CACHE: dict[tuple, tuple] = {}  # calibration + damage table per (source, calibration settings)


def _bundle_dir(source):
    """A directory the NumPy backend can load with the source's values: GGUF via the model cache,
    HF checkpoints and bundles as they are, anything else converted with `keep` into a temp dir."""
    from pathlib import Path

    if source.format == "gguf":
        from ..modelcache import cached_bundle

        return Path(cached_bundle(source.path, quiet=True)), None
    if source.format in ("hf", "bundle") and Path(source.path).is_dir():
        return Path(source.path), None
    import tempfile

    from ..convert import convert

    tmp = tempfile.TemporaryDirectory(prefix="mlxedge-calib-")
    return convert(source, Path(tmp.name) / "bundle", show_progress=False), tmp


def analyze(source, calib: str | None = None, seed: int = 0, tokens: int = 512, ctx: int = 256,
            probe_chunks: int = 1, positions: int = 64, max_rows: int = 256,
            show_progress: bool = False) -> tuple[dict, dict]:
    """Calibrate on `source` and tabulate damage per tensor and option.

    Returns (table, meta): table[name] = {"numel", "options", "costs", "damages", "importance"}
    (an empty "options" list marks a tensor stored as float); meta describes the calibration.
    `calib` is a text file (default: mlxedge.texts.calibration_text()).
    """
    from .. import texts
    from ..calibrate import calibrate, calibration_chunks
    from ..progress import progress

    if calib is not None:
        try:
            with open(calib, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise MlxEdgeError(f"cannot read calibration text {calib}: {e}") from None
    else:
        text = texts.calibration_text()
    key = (str(source.path), source.format, hashlib.sha256(text.encode()).hexdigest(), seed, tokens, ctx,
           probe_chunks, positions, max_rows)
    if key in _CACHE:
        return _CACHE[key]
    dtype = source.float_dtype if source.float_dtype in ("float16", "bfloat16") else "float16"
    directory, tmp = _bundle_dir(source)
    try:
        chunks = calibration_chunks(directory, text, tokens, ctx, seed)
        cal = calibrate(directory, chunks, lambda w, b, g, imp: dequantized_search(w, b, g, imp, dtype),
                        positions=positions, probe_chunks=probe_chunks, show_progress=show_progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    table = {}
    stream = list(source.tensors())
    for t in progress(stream, desc="damage", unit="tensor", disable=not show_progress):
        opts = valid_options(t.shape) if is_matrix(t.name, t.shape) else []
        if not opts:
            table[t.name] = {"numel": t.numel, "options": [], "costs": [], "damages": [], "importance": None}
            continue
        if t.name not in cal.uses:
            raise MlxEdgeError(f"calibration saw no use of {t.name}")
        w = t.dense()
        rows = np.unique(np.linspace(0, len(w) - 1, min(len(w), max_rows)).astype(np.int64))
        sub = np.ascontiguousarray(w[rows], dtype=np.float32)
        imp = effective_importance(sub, cal.uses[t.name], dtype)
        damages = [_proxy(dequantized_search(sub, b, g, imp, dtype) - sub, imp) for b, g in opts]
        table[t.name] = {"numel": t.numel, "options": opts, "importance": imp.astype(np.float32),
                         "costs": [option_cost(t.numel, b, g) for b, g in opts], "damages": damages}
    meta = {"text": calib or "mlxedge.texts.calibration_text()", "seed": seed, "tokens": cal.tokens,
            "ctx": ctx, "probe_positions": cal.positions, "rows_sampled": max_rows}
    _CACHE[key] = (table, meta)
    return table, meta


def plan(table: dict, target: float) -> tuple[dict, dict]:
    """-> ({name: (bits, group) or None for float}, summary) for a `target` bits-per-weight budget."""
    names = list(table)
    n_params = sum(table[n]["numel"] for n in names)
    fixed = sum(table[n]["numel"] * SCALE_BITS for n in names if not table[n]["options"])
    budget = int(Fraction(str(target)) * n_params) - fixed  # exact: no float rounding past the target
    quant = [n for n in names if table[n]["options"]]
    least = sum(min(table[n]["costs"]) for n in quant)
    if budget < least:
        raise MlxEdgeError(f"--target-bpw {target} is below the smallest size possible for this model "
                           f"({(least + fixed) / n_params:.3f} bits per weight)")
    choice = allocate([table[n]["costs"] for n in quant], [table[n]["damages"] for n in quant], budget)
    out = {n: None for n in names if not table[n]["options"]}
    bits = fixed
    damage = 0.0
    for n, i in zip(quant, choice):
        out[n] = table[n]["options"][i]
        bits += table[n]["costs"][i]
        damage += table[n]["damages"][i]
    return out, {"target_bpw": target, "bpw": bits / n_params, "predicted_kl": damage, "parameters": n_params}


def target_bpw(source, target: float, calib: str | None = None, seed: int = 0, show_progress: bool = True,
               **calibration) -> Recipe:
    """The recipe `bpw<target>`: calibrate, allocate, and quantize with the weighted search.

    The returned function carries `.quantize(name, w, target) -> Affine` (used by convert) and
    `.info` (the allocation, for mlxedge.json)."""
    table, meta = analyze(source, calib, seed, show_progress=show_progress, **calibration)
    choice, summary = plan(table, target)
    dtype = source.float_dtype if source.float_dtype in ("float16", "bfloat16") else "float16"

    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        opt = choice.get(name)
        if opt is None:
            return Target("float", dtype)
        return Target("affine", dtype, *opt)

    def quantize(name: str, w: np.ndarray, t: Target) -> affine.Affine:
        return quantize_search(w, t.bits, t.group_size, table[name]["importance"], t.dtype)

    recipe.__name__ = f"bpw{target:g}"
    recipe.quantize = quantize
    recipe.info = {**summary, "calibration": meta,
                   "allocation": {n: option_name(*o) for n, o in choice.items() if o is not None}}
    return recipe
