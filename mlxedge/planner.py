"""`bpwX` recipes: calibrate a source, allocate bits per tensor under the budget, refine the plan
with measured joint KL, and hand convert a finished Recipe with the weighted-search quantizer.

The allocation maths is quant/alloc.py; the measurements are mlxedge/calibrate.py. A second pass
corrects the per-tensor sum where it is least reliable (`refine`): errors spread over many
blocks compound, so the blocks' and the embedding's joint KL are measured for the plan and each
group's damages rescaled before planning again.

Quantization is MLX's affine format, with scale and bias per group searched to minimize the same
weighted error (quant/search.py); per group it is never worse than MLX's round-to-nearest.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import modelcache, pipeline, texts
from .calibrate import EMBED, Instrumented, calibrate, calibration_chunks, joint_kl
from .errors import MlxEdgeError
from .formats.source import Source
from .progress import progress
from .quant import affine
from .quant.alloc import option_cost, option_name, plan, proxy, valid_options
from .quant.recipes import Recipe, Target, is_matrix
from .quant.search import dequantize, dequantized_search, quantize_search


def effective_importance(w_rows: np.ndarray, uses: list, scale_dtype: str = "float16") -> np.ndarray:
    """Σ_u s_u · importance_u: per input column, what one unit of squared error costs in KL.

    s_u = KL_u / proxy_u(error at the probe option), the error made by the same quantizer the probe
    used (the weighted search with the use's own importance), both on the same weights (here: the
    sampled rows). So the search's gain on the proxy counts only as far as it showed in the KL."""
    total = np.zeros(w_rows.shape[1], np.float64)
    for u in uses:
        imp = np.ones(w_rows.shape[1], np.float64) if u.importance is None else u.importance.astype(np.float64)
        dw = dequantized_search(w_rows, *u.probe, u.importance, scale_dtype) - w_rows
        p = proxy(dw, imp)
        if p > 0 and u.kl > 0:
            total += (u.kl / p) * imp
    return total


# -- calibration --------------------------------------------------------------------------------

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


def _bundle_dir(source: Source):
    """A directory the NumPy backend can load with the source's values: GGUF via the model cache,
    HF checkpoints and bundles as they are, anything else converted with `keep` into a temp dir."""
    if source.format == "gguf":
        return Path(modelcache.cached_bundle(source.path, quiet=True)), None
    if source.format in ("hf", "bundle") and Path(source.path).is_dir():
        return Path(source.path), None
    tmp = tempfile.TemporaryDirectory(prefix="mlxedge-calib-")
    keep = Recipe("keep", lambda name, shape, src_type: Target("keep"))
    return pipeline.convert_source(source, Path(tmp.name) / "bundle", keep, show_progress=False), tmp


def analyze(source: Source, calib: str | None = None, seed: int = 0, tokens: int = 512, ctx: int = 256,
            probe_chunks: int = 1, positions: int = 64, max_rows: int = 256,
            show_progress: bool = False) -> Analysis:
    """Calibrate on `source` and tabulate damage per tensor and option (one analysis serves
    every budget: see `recipe`).

    `calib` is a text file (default: mlxedge.texts.calibration_text()); `seed` picks its windows;
    `tokens` in windows of `ctx` feed the input moments, the first `probe_chunks` windows the
    probes (KL at `positions` positions each); damages are estimated on `max_rows` sampled rows.
    """
    if calib is not None:
        try:
            with open(calib, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise MlxEdgeError(f"cannot read calibration text {calib}: {e}") from None
    else:
        text = texts.calibration_text()
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
        damages = [proxy(dequantized_search(sub, b, g, imp, dtype) - sub, imp) for b, g in opts]
        table[t.name] = {"numel": t.numel, "options": opts, "importance": imp.astype(np.float32),
                         "costs": [option_cost(t.numel, b, g) for b, g in opts], "damages": damages}
    meta = {"text": calib or "mlxedge.texts.calibration_text()", "seed": seed, "tokens": cal.tokens,
            "ctx": ctx, "probe_positions": cal.positions, "rows_sampled": max_rows}
    return Analysis(table, meta, directory, chunks[:probe_chunks], positions, dtype, tmp)


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


def recipe(an: Analysis, target: float, show_progress: bool = False) -> Recipe:
    """The recipe `bpw<target>` from an analysis: allocate, refine, and quantize with the weighted
    search (the tensors quantized while refining are reused by the conversion)."""
    memo: dict = {}
    choice, summary = refine(an, target, memo, show_progress)

    def rule(name: str, shape: tuple, src_type: str) -> Target:
        opt = choice.get(name)
        if opt is None:
            return Target("float", an.dtype)
        return Target("affine", an.dtype, *opt)

    def quantize(name: str, w: np.ndarray, t: Target) -> affine.Affine:
        done = memo.pop((name, (t.bits, t.group_size)), None)
        if done is not None and t.dtype == an.dtype and done[0] == _fingerprint(w):
            return done[1]  # quantized already while refining the plan, from these same values
        return quantize_search(w, t.bits, t.group_size, an.table[name]["importance"], t.dtype)

    info = {**summary, "calibration": an.meta,
            "allocation": {n: option_name(*o) for n, o in choice.items() if o is not None}}
    return Recipe(f"bpw{target:g}", rule, quantize, info)


def target_bpw(source: Source, target: float, calib: str | None = None, seed: int = 0,
               show_progress: bool = True, **calibration) -> Recipe:
    """Calibrate `source` and build its `bpw<target>` recipe."""
    return recipe(analyze(source, calib, seed, show_progress=show_progress, **calibration), target, show_progress)
