"""Bits where they matter: choose per tensor one MLX affine option under a bits-per-weight budget.

Pure maths over given costs and damages; calibration (mlxedge/calibrate.py) measures the damages
and mlxedge/planner.py turns a plan into a recipe.

bits per weight (bpw) = total stored bits of all parameters (packed weights, 16-bit scales and
biases, float tensors) / number of parameters. An option (bits, group) costs bits + 32 / group.

Damage of storing tensor t with option o:

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
"""

from __future__ import annotations

import heapq
from fractions import Fraction

import numpy as np

from ..errors import MlxEdgeError
from . import affine

SCALE_BITS = 16  # scales and biases are stored in float16 or bfloat16
OPTIONS = tuple((b, g) for b in affine.BITS for g in affine.GROUP_SIZES)


def option_cost(numel: int, bits: int, group: int) -> int:
    """Stored bits of a matrix of `numel` weights: packed values + one scale and one bias per group."""
    return numel * bits + 2 * SCALE_BITS * (numel // group)


def valid_options(shape: tuple) -> list[tuple[int, int]]:
    return [(b, g) for b, g in OPTIONS if shape[-1] % g == 0]


def option_name(bits: int, group: int) -> str:
    return f"{bits}g{group}"


def proxy(dw: np.ndarray, importance: np.ndarray | None) -> float:
    col = np.einsum("ij,ij->j", dw, dw, dtype=np.float64) / len(dw)  # (in,) mean squared error per column
    return float(col.sum() if importance is None else col @ importance)


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
