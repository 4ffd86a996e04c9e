"""The conversion pipeline: Source -> bundle directory, one tensor in memory at a time.

read (formats/: the reader renames and fixes conventions) -> the recipe picks a target per
tensor -> quantize or repack (quant/) -> stream into safetensors (formats/bundle.py). Recipes
arrive finished (mlxedge/convert.py resolves names, mlxedge/planner.py calibrates `bpwX`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from . import __version__, rowblocks
from .dtypes import NUMPY, as_float32, round_bf16, to_bf16_bits
from .formats.bundle import BundleWriter
from .formats.source import FLOAT_TYPES, Source, SourceTensor
from .progress import progress, stage
from .quant import affine, lowbit
from .quant.recipes import FALLBACK, Recipe, Target, is_matrix
from .safetensors import bits_per_weight


K_QUANTS = ("Q4_K", "Q5_K")  # repacked with float32 scales (ggml.REPACK): float16 unless `exact`


def _float_array(x: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
    if dtype == "bfloat16":
        return to_bf16_bits(x), "BF16"
    return np.asarray(x, dtype=NUMPY[dtype]), None


def _lossless_float(x: np.ndarray, preferred: str) -> str:
    """The smallest of (preferred dtype, float32) that holds x exactly."""
    x32 = np.asarray(x, dtype=np.float32)
    if preferred == "bfloat16":
        back = round_bf16(x32)
    else:
        back = x32.astype(np.float16).astype(np.float32)
    return preferred if np.array_equal(back, x32) else "float32"


def _resolve(t: SourceTensor, target: Target) -> Target:
    """Turn "keep" into a concrete target and make affine targets fit the tensor's shape."""
    if target.kind == "affine":
        if not is_matrix(t.name, t.shape):
            return Target("float", target.dtype if target.dtype != "float32" else "float16")
        if t.shape[-1] % target.group_size:
            g = next((g for g in (128, 64, 32) if g < target.group_size and t.shape[-1] % g == 0), None)
            return Target("affine", target.dtype, target.bits, g) if g else Target("float", "float16")
    return target


def _convert_tensor(t: SourceTensor, target: Target, float_dtype: str, quantize=None, exact: bool = True,
                    errors=None, tau: float = lowbit.TAU):
    """-> (list of (name, array, st_dtype)), record dict, (bits, group_size) or None.

    `errors(err)`, if given, receives the error array behind the record's max_abs_err / rms_err,
    which rowblocks computes once it has every row block's (the record holds None until then).

    `quantize(name, w, target) -> Affine` replaces MLX's round-to-nearest when the recipe has one.
    `exact=False` lets "keep" trade exactness for size (docs/gguf.md): K-quant scales in float16,
    types MLX cannot express in the smallest form within lowbit's criterion, not 8-bit."""
    target = _resolve(t, target)
    record: dict = {"source": t.src_type}
    if target.kind == "keep":
        aff = t.affine() if t.affine is not None else None
        # mlx-lm computes in the embedding's output dtype: float16 scales would run a model that
        # needs bfloat16's range (Gemma) in float16 and overflow. float32 keeps it exact; the
        # compact default rounds them to bfloat16 (docs/gguf.md: what that costs).
        wide_embedding = float_dtype == "bfloat16" and t.name == "model.embed_tokens.weight"
        if aff is not None and wide_embedding and aff.scales.dtype == np.float16:
            # (bfloat16 scales, from a bundle source, already fit)
            aff.scales, aff.biases = aff.scales.astype(np.float32), aff.biases.astype(np.float32)
        if aff is not None:
            record["target"] = f"affine{aff.bits}g{aff.group_size}"
            record["exact"] = True
            if not exact and aff.scales.dtype == np.float32 and (wide_embedding or t.src_type in K_QUANTS):
                _narrow_scales(aff, record, errors, "bfloat16" if wide_embedding else "float16")
            return _affine_arrays(t.name, aff), record, (aff.bits, aff.group_size)
        if t.src_type in FLOAT_TYPES or not is_matrix(t.name, t.shape):
            x = t.dense()
            dtype = _lossless_float(x, float_dtype)
            arr, st = _float_array(x, dtype)
            record["target"] = dtype
            return [(t.name, arr, st)], record, None
        if not exact and lowbit.supported(t.src_type) and len(t.shape) == 2:
            choice = lowbit.choose(t.dense(), t.src_type, tau, "bfloat16" if wide_embedding else "float16")
            aff = choice.aff
            record.update(target=f"affine{aff.bits}g{aff.group_size}", max_abs_err=choice.max_abs_err,
                          rms_err=choice.rms_err, source_noise=choice.source_noise,
                          err_ratio=round(choice.ratio, 4), tau=tau)
            return _affine_arrays(t.name, aff), record, (aff.bits, aff.group_size)
        target = _resolve(t, FALLBACK)
    x = t.dense()
    if target.kind == "float":
        arr, st = _float_array(x, target.dtype)
        record["target"] = target.dtype
        return [(t.name, arr, st)], record, None
    if quantize is not None:
        aff = quantize(t.name, x, target)
    else:
        aff = affine.quantize(x, target.bits, target.group_size, scale_dtype=target.dtype)
    record["target"] = f"affine{target.bits}g{target.group_size}"
    _error_stats(np.abs(aff.dequantize() - x), record, errors)
    return _affine_arrays(t.name, aff), record, (target.bits, target.group_size)


def _narrow_scales(aff: affine.Affine, record: dict, errors=None, dtype: str = "float16") -> None:
    """float32 scales/biases (K-quant sub-blocks, a wide embedding) -> `dtype` (float16 or
    bfloat16, rounded to nearest), unless one overflows; the error it makes against the exact
    form goes into `record`."""
    if dtype == "bfloat16":
        s16, b16 = to_bf16_bits(aff.scales), to_bf16_bits(aff.biases)
    else:
        with np.errstate(over="ignore"):
            s16, b16 = aff.scales.astype(np.float16), aff.biases.astype(np.float16)
    if not (np.isfinite(as_float32(s16)).all() and np.isfinite(as_float32(b16)).all()):
        return
    q = aff.q.reshape(*aff.scales.shape, aff.group_size).astype(np.float32)  # (rows, groups, group)
    err = q * as_float32(s16)[..., None]  # the narrowed form minus the exact one, as MLX computes each
    err += as_float32(b16)[..., None]
    q *= aff.scales[..., None]
    q += aff.biases[..., None]
    err -= q
    err = np.abs(err, out=err).reshape(aff.q.shape)
    aff.scales, aff.biases = s16, b16
    record["exact"] = False
    _error_stats(err, record, errors)


def _error_stats(err: np.ndarray, record: dict, errors=None) -> None:
    """max_abs_err / rms_err of `err` into `record`; with `errors` (row blocks), `err` goes there
    instead and the keys wait for the whole tensor's values (rowblocks merges them)."""
    if errors is not None:
        errors(err)
        record.update(max_abs_err=None, rms_err=None)
    else:
        record.update(max_abs_err=float(err.max()), rms_err=float(np.sqrt(np.mean(err * err))))


def _affine_arrays(name: str, aff: affine.Affine):
    base = name[: -len(".weight")]
    out = [(name, aff.packed(), None)]
    for suffix, arr in (("scales", aff.scales), ("biases", aff.biases)):
        if arr.dtype == np.uint16:  # bfloat16 bits
            out.append((f"{base}.{suffix}", arr, "BF16"))
        else:
            out.append((f"{base}.{suffix}", arr, None))
    return out


def convert_source(source: Source, out: str | Path, recipe: Recipe, force: bool = False,
                   show_progress: bool = True, exact: bool = True, tau: float = lowbit.TAU) -> Path:
    """Write `source` as a bundle at `out` with a finished `recipe`; returns `out`.

    exact: "keep" carries GGML types over exactly (float32 K-quant scales, 8-bit for types MLX
    cannot express); False is `mlxedge convert`'s default, the compact forms of docs/gguf.md."""
    tensors: dict[str, dict] = {}
    modules: dict[str, tuple[int, int] | None] = {}
    weight_counts: Counter = Counter()
    n_params = 0
    stored_bits = 0
    with BundleWriter(out, force=force) as w:
        stream = list(source.tensors())
        for t in progress(stream, desc="convert", unit="tensor", disable=not show_progress):
            target = recipe(t.name, t.shape, t.src_type)
            blocked = None
            if recipe.quantize is None:  # (a recipe's own quantizer is given whole tensors)
                blocked = rowblocks.convert(t, w, lambda part, errors: _convert_tensor(
                    part, target, source.float_dtype, None, exact, errors, tau))
            if blocked is not None:
                record, qspec, nbytes = blocked
                stored_bits += nbytes * 8
            else:
                arrays, record, qspec = _convert_tensor(t, target, source.float_dtype, recipe.quantize, exact,
                                                        tau=tau)
                for name, arr, st in arrays:
                    w.add(name, arr, st)
                    stored_bits += arr.nbytes * 8
                del arrays
            tensors[t.name] = record
            n_params += t.numel
            if is_matrix(t.name, t.shape):
                modules[t.name[: -len(".weight")]] = qspec
                if qspec:
                    weight_counts[qspec] += t.numel
        with stage("convert: writing config, tokenizer and mlxedge.json", disable=not show_progress):
            config = dict(source.config)
            if weight_counts:
                config["quantization"] = config["quantization_config"] = quantization_config(modules, weight_counts)
            w.write_json("config.json", config)
            for fname, obj in source.tokenizer_files.items():
                w.write_json(fname, obj)
            w.write_json("generation_config.json", source.generation_config)
            w.write_json("mlxedge.json", {
                "mlxedge_version": __version__,
                "source": {"path": str(Path(source.path).resolve()), "format": source.format,
                           "sha256": source.sha256(), **source.info},
                "recipe": recipe.name,
                "parameters": n_params,
                "bits_per_weight": round(bits_per_weight(stored_bits, n_params), 4),
                "tensors": tensors,
                **({"recipe_info": recipe.info} if recipe.info else {}),
            })
            return w.commit()


def quantization_config(modules: dict[str, tuple[int, int] | None], weight_counts: Counter) -> dict:
    """mlx-lm's config["quantization"]: the most common (bits, group) on top, other modules by path
    (`False` keeps one in float)."""
    (bits, group), _ = weight_counts.most_common(1)[0]
    quant_cfg: dict = {"group_size": group, "bits": bits, "mode": "affine"}
    for mod, spec in modules.items():
        if spec is None:
            quant_cfg[mod] = False
        elif spec != (bits, group):
            quant_cfg[mod] = {"group_size": spec[1], "bits": spec[0], "mode": "affine"}
    return quant_cfg
