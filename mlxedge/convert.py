"""`mlxedge convert SRC -o OUT [--quant RECIPE]`: any supported source -> an mlx-lm bundle.

The pipeline is read -> (reader renames and fixes conventions) -> recipe picks a target per tensor
-> quantize or repack -> stream into safetensors, one tensor in memory at a time.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from . import __version__
from .errors import MlxEdgeError
from .formats.bundle import BundleWriter, to_bf16_bits
from .formats.source import FLOAT_TYPES, Source, SourceTensor
from .quant import affine, recipes
from .quant.recipes import FALLBACK, Recipe, Target
from .progress import progress

FLOAT_NP = {"float16": np.float16, "float32": np.float32}


def open_source(path: str | Path) -> Source:
    """Read any supported source: a .gguf file, an ONNX export folder/file, an HF checkpoint or a bundle."""
    path = Path(path)
    if not path.exists():
        raise MlxEdgeError(f"{path} does not exist")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            from .formats.gguf import read_gguf

            return read_gguf(path)
        if path.suffix == ".onnx":
            from .formats.onnx import read_onnx

            return read_onnx(path)
        raise MlxEdgeError(f"{path} is not a GGUF file (bad magic {magic!r}) nor an .onnx model")
    if (path / "genai_config.json").exists() or any(path.glob("*.onnx")) or (path / "onnx").is_dir():
        from .formats.onnx import read_onnx

        return read_onnx(path)
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        from .formats.hf import read_hf

        return read_hf(path)
    raise MlxEdgeError(f"{path}: no GGUF, ONNX or safetensors model found there")


def _float_array(x: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
    if dtype == "bfloat16":
        return to_bf16_bits(x), "BF16"
    return np.asarray(x, dtype=FLOAT_NP[dtype]), None


def _lossless_float(x: np.ndarray, preferred: str) -> str:
    """The smallest of (preferred dtype, float32) that holds x exactly."""
    x32 = np.asarray(x, dtype=np.float32)
    if preferred == "bfloat16":
        back = (to_bf16_bits(x32).astype(np.uint32) << 16).view(np.float32)
    else:
        back = x32.astype(np.float16).astype(np.float32)
    return preferred if np.array_equal(back, x32) else "float32"


def _resolve(t: SourceTensor, target: Target) -> Target:
    """Turn "keep" into a concrete target and make affine targets fit the tensor's shape."""
    if target.kind == "affine":
        if not recipes.is_matrix(t.name, t.shape):
            return Target("float", target.dtype if target.dtype != "float32" else "float16")
        if t.shape[-1] % target.group_size:
            g = next((g for g in (128, 64, 32) if g < target.group_size and t.shape[-1] % g == 0), None)
            return Target("affine", target.dtype, target.bits, g) if g else Target("float", "float16")
    return target


def _convert_tensor(t: SourceTensor, target: Target, float_dtype: str, quantize=None):
    """-> (list of (name, array, st_dtype)), record dict, (bits, group_size) or None.

    `quantize(name, w, target) -> Affine` replaces MLX's round-to-nearest when the recipe has one."""
    target = _resolve(t, target)
    record: dict = {"source": t.src_type}
    if target.kind == "keep":
        aff = t.affine() if t.affine is not None else None
        if (aff is not None and float_dtype == "bfloat16" and t.name == "model.embed_tokens.weight"
                and aff.scales.dtype == np.float16):  # bfloat16 scales (a bundle source) already fit
            # mlx-lm computes in the embedding's output dtype: float16 scales would run a model
            # that needs bfloat16's range (Gemma) in float16 and overflow. float32 keeps it exact.
            aff.scales, aff.biases = aff.scales.astype(np.float32), aff.biases.astype(np.float32)
        if aff is not None:
            record["target"] = f"affine{aff.bits}g{aff.group_size}"
            record["exact"] = True
            return _affine_arrays(t.name, aff), record, (aff.bits, aff.group_size)
        if t.src_type in FLOAT_TYPES or not recipes.is_matrix(t.name, t.shape):
            x = t.dense()
            dtype = _lossless_float(x, float_dtype)
            arr, st = _float_array(x, dtype)
            record["target"] = dtype
            return [(t.name, arr, st)], record, None
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
    err = np.abs(aff.dequantize() - x)
    record.update(target=f"affine{target.bits}g{target.group_size}",
                  max_abs_err=float(err.max()), rms_err=float(np.sqrt(np.mean(err * err))))
    return _affine_arrays(t.name, aff), record, (target.bits, target.group_size)


def _affine_arrays(name: str, aff: affine.Affine):
    base = name[: -len(".weight")]
    out = [(name, aff.packed(), None)]
    for suffix, arr in (("scales", aff.scales), ("biases", aff.biases)):
        if arr.dtype == np.uint16:  # bfloat16 bits
            out.append((f"{base}.{suffix}", arr, "BF16"))
        else:
            out.append((f"{base}.{suffix}", arr, None))
    return out


def convert(src: str | Path | Source, out: str | Path, quant: str | Recipe = "keep",
            force: bool = False, show_progress: bool = True, **recipe_options) -> Path:
    """Convert `src` into the bundle directory `out`; returns `out`.

    `quant` is a recipe name (keep, f16, bf16, f32, q4, q8, mixed_3_6, q4_k_m, bpw3.5, ...) or a
    recipe function; `recipe_options` go to recipes built from the source (e.g. calib=, seed=).
    """
    source = src if isinstance(src, Source) else open_source(src)
    if isinstance(quant, str):
        recipe = recipes.get(quant, source=source, show_progress=show_progress, **recipe_options)
    else:
        recipe = quant
    quantize = getattr(recipe, "quantize", None)
    recipe_name = quant if isinstance(quant, str) else getattr(quant, "__name__", "custom")
    tensors: dict[str, dict] = {}
    modules: dict[str, tuple[int, int] | None] = {}
    weight_counts: Counter = Counter()
    n_params = 0
    stored_bits = 0
    with BundleWriter(out, force=force) as w:
        stream = list(source.tensors())
        for t in progress(stream, desc="convert", unit="tensor", disable=not show_progress):
            arrays, record, qspec = _convert_tensor(t, recipe(t.name, t.shape, t.src_type), source.float_dtype,
                                                    quantize)
            for name, arr, st in arrays:
                w.add(name, arr, st)
                stored_bits += arr.nbytes * 8
            tensors[t.name] = record
            n_params += t.numel
            if recipes.is_matrix(t.name, t.shape):
                modules[t.name[: -len(".weight")]] = qspec
                if qspec:
                    weight_counts[qspec] += t.numel
        config = dict(source.config)
        if weight_counts:
            (bits, group), _ = weight_counts.most_common(1)[0]
            quant_cfg: dict = {"group_size": group, "bits": bits, "mode": "affine"}
            for mod, spec in modules.items():
                if spec is None:
                    quant_cfg[mod] = False
                elif spec != (bits, group):
                    quant_cfg[mod] = {"group_size": spec[1], "bits": spec[0], "mode": "affine"}
            config["quantization"] = quant_cfg
            config["quantization_config"] = quant_cfg
        w.write_json("config.json", config)
        for fname, obj in source.tokenizer_files.items():
            w.write_json(fname, obj)
        w.write_json("generation_config.json", source.generation_config)
        w.write_json("mlxedge.json", {
            "mlxedge_version": __version__,
            "source": {"path": str(Path(source.path).resolve()), "format": source.format,
                       "sha256": source.sha256(), **source.info},
            "recipe": recipe_name,
            "parameters": n_params,
            "bits_per_weight": round(stored_bits / max(n_params, 1), 4),
            "tensors": tensors,
            **({"recipe_info": recipe.info} if getattr(recipe, "info", None) else {}),
        })
        return w.commit()


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a .gguf file (or first split), an ONNX export, an HF checkpoint or a bundle")
    p.add_argument("-o", "--out", required=True, help="output bundle directory")
    p.add_argument("--quant", default="keep", help=f"recipe: {', '.join(recipes.names())} (default keep)")
    p.add_argument("--target-bpw", type=float, default=None, metavar="X",
                   help="allocate bits per tensor from calibration to at most X bits per weight "
                        "(same as --quant bpwX)")
    p.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration text for --target-bpw (default: installed package documentation)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing calibration windows (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def main(args: argparse.Namespace) -> int:
    quant, options = args.quant, {}
    if args.target_bpw is not None:
        quant, options = f"bpw{args.target_bpw:g}", {"calib": args.calib, "seed": args.seed}
    out = convert(args.src, args.out, quant=quant, force=args.force, show_progress=not args.quiet, **options)
    meta = json.loads((out / "mlxedge.json").read_text())
    summary = {"out": str(out), "recipe": meta["recipe"], "parameters": meta["parameters"],
               "bits_per_weight": meta["bits_per_weight"],
               "size_bytes": sum(p.stat().st_size for p in out.iterdir())}
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(f"wrote {out}: {summary['parameters'] / 1e6:.1f}M parameters, "
              f"{summary['bits_per_weight']:.2f} bits/weight, {summary['size_bytes'] / 1e6:.1f} MB")
    return 0
