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

A second pass corrects the sum where it is least reliable (`refine`): errors spread over many
blocks compound, so the blocks' and the embedding's joint KL are measured for the plan and each
group's damages rescaled before planning again.

Quantization is MLX's affine format, with scale and bias per group searched to minimize the same
weighted error (quant/search.py); per group it is never worse than MLX's round-to-nearest.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import MlxEdgeError
from . import affine
from .recipes import Recipe, Target, is_matrix
from .search import dequantize, dequantized_search, quantize_search

SCALE_BITS = 16  # scales and biases are stored in float16 or bfloat16
OPTIONS = tuple((b, g) for b in affine.BITS for g in affine.GROUP_SIZES)


def option_cost(numel: int, bits: int, group: int) -> int:
    """Stored bits of a matrix of `numel` weights: packed values + one scale and one bias per group."""
    return numel * bits + 2 * SCALE_BITS * (numel // group)


def valid_options(shape: tuple) -> list[tuple[int, int]]:
    return [(b, g) for b, g in OPTIONS if shape[-1] % g == 0]


def option_name(bits: int, group: int) -> str:
    return f"{bits}g{group}"


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

@dataclass
class Analysis:
    """Calibration and damage table for one source (shared by every budget)."""

    table: dict  # name -> {"numel", "options", "costs", "damages", "importance"}; no options: float
    meta: dict  # what the calibration used, for mlxedge.json
    directory: Path  # the bundle the NumPy backend ran
    chunks: list  # the probe chunks (token ids)
    positions: int
    dtype: str  # scale/bias dtype
    keepalive: object = None  # a temporary directory, when the source had to be converted first


_CACHE: dict[tuple, Analysis] = {}  # per (source, calibration settings)


def _bundle_dir(source):
    """A directory the NumPy backend can load with the source's values: GGUF via the model cache,
    HF checkpoints and bundles as they are, anything else converted with `keep` into a temp dir."""
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
            show_progress: bool = False) -> Analysis:
    """Calibrate on `source` and tabulate damage per tensor and option (cached per source).

    `calib` is a text file (default: mlxedge.texts.calibration_text()); `seed` picks its windows;
    `tokens` in windows of `ctx` feed the input moments, the first `probe_chunks` windows the
    probes (KL at `positions` positions each); damages are estimated on `max_rows` sampled rows.
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
    chunks = calibration_chunks(directory, text, tokens, ctx, seed)
    cal = calibrate(directory, chunks, lambda w, b, g, imp: dequantized_search(w, b, g, imp, dtype),
                    positions=positions, probe_chunks=probe_chunks, show_progress=show_progress)
    table = {}
    for t in progress(list(source.tensors()), desc="damage", unit="tensor", disable=not show_progress):
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
    _CACHE[key] = Analysis(table, meta, directory, chunks[:probe_chunks], positions, dtype, tmp)
    return _CACHE[key]


def plan(table: dict, target: float, scale: dict[str, float] | None = None) -> tuple[dict, dict]:
    """-> ({name: (bits, group) or None for float}, summary) for a `target` bits-per-weight budget.

    `scale` multiplies the damages of some tensors (see `refine`)."""
    names = list(table)
    n_params = sum(table[n]["numel"] for n in names)
    fixed = sum(table[n]["numel"] * SCALE_BITS for n in names if not table[n]["options"])
    budget = int(Fraction(str(target)) * n_params) - fixed  # exact: no float rounding past the target
    quant = [n for n in names if table[n]["options"]]
    least = sum(min(table[n]["costs"]) for n in quant)
    if budget < least:
        raise MlxEdgeError(f"--target-bpw {target} is below the smallest size possible for this model "
                           f"({(least + fixed) / n_params:.3f} bits per weight)")
    scale = scale or {}
    damages = [[d * scale.get(n, 1.0) for d in table[n]["damages"]] for n in quant]
    choice = allocate([table[n]["costs"] for n in quant], damages, budget)
    out = {n: None for n in names if not table[n]["options"]}
    bits = fixed
    damage = 0.0
    for k, (n, i) in enumerate(zip(quant, choice)):
        out[n] = table[n]["options"][i]
        bits += table[n]["costs"][i]
        damage += damages[k][i]
    return out, {"target_bpw": target, "bpw": bits / n_params, "predicted_kl": damage, "parameters": n_params}


def _fingerprint(w: np.ndarray) -> str:
    return hashlib.blake2b(memoryview(np.ascontiguousarray(w, dtype=np.float32)).cast("B"),
                           digest_size=16).hexdigest()


def refine(an: Analysis, target: float, memo: dict, show_progress: bool = False) -> tuple[dict, dict]:
    """Plan, then correct the plan with measured joint damage, and measure the result.

    Per-tensor damages add up well within the transformer blocks' group and within the
    embedding/head group, but errors in many blocks compound, so the blocks' sum underestimates
    their joint KL more than the embedding's does. One round: quantize per the plan, measure the
    KL of the blocks quantized together and of the embedding/head quantized together, scale each
    group's damages by measured / predicted, plan again. The final plan's joint KL on the
    calibration text is recorded as `calibration_kl`. `memo` keeps the quantized tensors, keyed
    by (name, option), for the conversion."""
    from ..calibrate import EMBED, Instrumented, joint_kl

    net = Instrumented(an.directory)

    def quantized(name: str, opt: tuple[int, int]) -> tuple[str, np.ndarray]:
        if (name, opt) not in memo:
            w = net.weight(name)
            memo[(name, opt)] = (_fingerprint(w), quantize_search(w, *opt, an.table[name]["importance"], an.dtype))
        return name, dequantize(memo[(name, opt)][1])

    def weights(choice: dict, names) -> object:
        return (quantized(n, choice[n]) for n in names if choice.get(n) is not None)

    head = {EMBED, net.head_name}
    blocks = [n for n in net.names() if n not in head]
    choice, summary = plan(an.table, target)
    predicted = {g: sum(an.table[n]["damages"][an.table[n]["options"].index(choice[n])] for n in names)
                 for g, names in (("blocks", blocks), ("embedding", head))}
    measured = dict(zip(predicted, joint_kl(an.directory, an.chunks, [weights(choice, blocks), weights(choice, head)],
                                            an.positions, net)))
    factor = {g: measured[g] / predicted[g] if predicted[g] > 0 and measured[g] > 0 else 1.0 for g in predicted}
    scale = {n: factor["blocks"] for n in blocks} | {n: factor["embedding"] for n in head}
    choice, summary = plan(an.table, target, scale)
    (final,) = joint_kl(an.directory, an.chunks, [weights(choice, net.names())], an.positions, net)
    summary.update(calibration_kl=final, joint_factors=factor)
    return choice, summary


def target_bpw(source, target: float, calib: str | None = None, seed: int = 0, show_progress: bool = True,
               **calibration) -> Recipe:
    """The recipe `bpw<target>`: calibrate, allocate, and quantize with the weighted search.

    The returned function carries `.quantize(name, w, target) -> Affine` (used by convert) and
    `.info` (the allocation, for mlxedge.json)."""
    an = analyze(source, calib, seed, show_progress=show_progress, **calibration)
    memo: dict = {}
    choice, summary = refine(an, target, memo, show_progress)

    def recipe(name: str, shape: tuple, src_type: str) -> Target:
        opt = choice.get(name)
        if opt is None:
            return Target("float", an.dtype)
        return Target("affine", an.dtype, *opt)

    def quantize(name: str, w: np.ndarray, t: Target) -> affine.Affine:
        done = memo.pop((name, (t.bits, t.group_size)), None)
        if done is not None and t.dtype == an.dtype and done[0] == _fingerprint(w):
            return done[1]  # quantized already while refining the plan, from these same values
        return quantize_search(w, t.bits, t.group_size, an.table[name]["importance"], t.dtype)

    recipe.__name__ = f"bpw{target:g}"
    recipe.quantize = quantize
    recipe.info = {**summary, "calibration": an.meta,
                   "allocation": {n: option_name(*o) for n, o in choice.items() if o is not None}}
    return recipe
