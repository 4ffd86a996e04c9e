"""`mlxedge export SRC --to coreml -o OUT.mlpackage`: a bundle as a stateful Core ML model.

SRC is anything `generate` takes (a bundle, a .gguf through the cache, a store name) or an
ONNX/HF export (converted with `keep` into a temp bundle first). Written beside OUT:
tokenizer.json, tokenizer_config.json and mlxedge.json (inputs, outputs, states, context and the
per-tensor weight report). Everything is written into a temp dir beside OUT and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import coremltools as ct
import numpy as np

from .. import __version__, modelcache
from ..convert import convert
from ..backends import numpy as numpy_backend
from ..backends.numpy.weights import read_raw
from ..errors import MlxEdgeError
from ..formats.bundle import read_config, remove_stale
from .builder import build_program, family, state_names
from .weights import WeightMaker

DEFAULT_CONTEXT = 4096  # phone-sized: the KV state grows linearly with it
SIDECARS = ("tokenizer.json", "tokenizer_config.json")
PRECISIONS = ("float16", "float32")


def default_context(config: dict) -> int:
    """min(the model's max_position_embeddings, 4096)."""
    return min(int(config.get("max_position_embeddings") or DEFAULT_CONTEXT), DEFAULT_CONTEXT)


def keep_float32(model_type: str):
    """Which ops a float16 export still computes in float32: RMSNorm's statistics everywhere
    (x*x overflows float16 past |x| = 256); for Gemma also the residual stream, whose values
    outgrow float16 (docs/coreml.md)."""
    def keep(op) -> bool:
        name = op.name or ""
        return "_rms_" in name or (model_type == "gemma3_text" and ("_resid_" in name or name == "embed_scale"))
    return keep


def export(src: str | Path, out: str | Path, *, context: int | None = None,
           compute_precision: str = "float16", last_only: bool = False, force: bool = False,
           quiet: bool = False) -> Path:
    """Export `src` as the Core ML package `out` (+ sidecar files beside it); returns `out`.

    `context` defaults to min(the model's max_position_embeddings, 4096)."""
    out = Path(out)
    if out.suffix != ".mlpackage":
        raise MlxEdgeError(f"{out}: the output must end in .mlpackage")
    if compute_precision not in PRECISIONS:
        raise MlxEdgeError(f"--compute-precision {compute_precision!r}: choose from {', '.join(PRECISIONS)}")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise MlxEdgeError(f"output folder {parent} does not exist")
    targets = [out] + [parent / n for n in SIDECARS + ("mlxedge.json",)]
    if not force:
        there = [str(t) for t in targets if t.exists()]
        if there:
            raise MlxEdgeError(f"{there[0]} exists (use --force to replace it)")
    remove_stale(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=parent))
    try:
        bundle = _bundle(src, tmp, quiet)
        config = read_config(bundle)
        family(config)  # unsupported architecture: fail before any work
        top = int(config.get("max_position_embeddings") or 0)
        ctx = default_context(config) if context is None else int(context)
        if ctx < 1 or (top and ctx > top):
            raise MlxEdgeError(f"--context {ctx} is outside 1..{top or '?'} (the model's max_position_embeddings)")
        model = numpy_backend.load(bundle, mode="lean")
        wm = WeightMaker(read_raw(bundle), config.get("quantization") or {}, compute_precision)
        prog = build_program(model, wm, ctx, last_only=last_only)
        n_kv, head_dim = model.blocks[0].self_attn.n_kv, model.blocks[0].self_attn.head_dim
        keep = keep_float32(config["model_type"])
        precision = (ct.precision.FLOAT32 if compute_precision == "float32" else
                     ct.transform.FP16ComputePrecision(op_selector=lambda op: not keep(op)))
        mlmodel = ct.convert(
            prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
            compute_precision=precision, skip_model_load=True,
            inputs=[ct.TensorType(name="input_ids", shape=(1, ct.RangeDim(1, ctx, default=1)), dtype=np.int32),
                    ct.TensorType(name="position_offset", shape=(1,), dtype=np.int32)],
            outputs=[ct.TensorType(name="logits", dtype=np.float32)])
        mlmodel.short_description = f"{config['model_type']} decoder exported by mlxedge {__version__}"
        mlmodel.save(str(tmp / out.name))
        for name in SIDECARS:
            if (Path(bundle) / name).is_file():
                shutil.copyfile(Path(bundle) / name, tmp / name)
        info = describe(config, ctx, compute_precision, last_only, len(model.blocks), n_kv, head_dim,
                        model.vocab_size, wm, tmp / out.name, bundle)
        (tmp / "mlxedge.json").write_text(json.dumps(info, indent=1) + "\n")
        _commit(tmp, out, parent, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _bundle(src: str | Path, tmp: Path, quiet: bool) -> Path:
    """A bundle for `src`: itself, the GGUF cache's, a store name's, or an ONNX/HF export
    converted with `keep` into `tmp` (removed with it)."""
    p = Path(src).expanduser()
    if p.suffix == ".onnx" or (p.is_dir() and not any(p.glob("model*.safetensors"))):
        return convert(p, tmp / "bundle", quant="keep", show_progress=not quiet)
    return modelcache.resolve(src, quiet=quiet)


def describe(config: dict, ctx: int, precision: str, last_only: bool, n_layers: int, n_kv: int,
             head_dim: int, vocab: int, wm: WeightMaker, package: Path, bundle: Path) -> dict:
    """mlxedge.json: what a Swift app needs to drive the model, and the weight report."""
    stored = sum(f.stat().st_size for f in Path(bundle).glob("model*.safetensors"))
    size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    return {
        "format": "mlxedge-coreml", "mlxedge_version": __version__, "model_type": config["model_type"],
        "context": ctx, "compute_precision": precision,
        "float32_in_float16": None if precision == "float32" else
        ["RMSNorm"] + (["residual stream", "embedding scale"] if config["model_type"] == "gemma3_text" else []),
        "inputs": [{"name": "input_ids", "shape": [1, "T"], "dtype": "int32", "T": [1, ctx]},
                   {"name": "position_offset", "shape": [1], "dtype": "int32",
                    "meaning": "position of input_ids[0]; keep position_offset + T <= context"}],
        "outputs": [{"name": "logits", "shape": [1, 1 if last_only else "T", vocab], "dtype": "float32"}],
        "states": [{"name": s, "shape": [n_kv, ctx, head_dim], "dtype": "float16"} for s in state_names(n_layers)],
        "bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id"),
        "package_bytes": size, "bundle_weight_bytes": stored,
        "weights": [r.as_dict() for r in wm.reports],
    }


def _commit(tmp: Path, out: Path, parent: Path, force: bool) -> None:
    """Sidecars first, the package last: a package in place means its files are too."""
    for name in SIDECARS + ("mlxedge.json",):
        if (tmp / name).exists():
            os.replace(tmp / name, parent / name)
        elif force and (parent / name).exists():
            (parent / name).unlink()
    if out.exists():
        old = parent / f".{out.name}.old{os.getpid()}"
        os.replace(out, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp / out.name, out)
    shutil.rmtree(tmp, ignore_errors=True)
