"""Read a GGUF file (or a split set) into a conversion Source: mlx-lm names, HF config, tokenizer.

llama.cpp conventions undone here: reversed dimension order (gguf-py already hands numpy order),
q/k rows interleaved for RoPE in llama-family files, Gemma's (1 + w) norm weights, tied output.
Quantized tensors stay raw bytes (memory-mapped) until the pipeline asks for one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import archs
from ..errors import MlxEdgeError
from ..quant import ggml
from .gguf_file import TensorInfo, read_header
from .gguf_tokenizer import generation_config, tokenizer_files
from .source import FLOAT_TYPES, Source, SourceTensor

_SPLIT = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")
_BLK = re.compile(r"^blk\.(\d+)\.(.+)\.(weight|bias)$")
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Checkpoint entries with no parameter in mlx-lm (precomputed, or derived from config).
IGNORED = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}


def split_paths(path: Path) -> list[Path]:
    """All files of a split set (`-00001-of-0000N.gguf`), or just `path`."""
    m = _SPLIT.match(path.name)
    if not m:
        return [path]
    stem, _, n = m.groups()
    paths = [path.with_name(f"{stem}-{i:05d}-of-{n}.gguf") for i in range(1, int(n) + 1)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise MlxEdgeError(f"split GGUF is incomplete: missing {', '.join(missing)}")
    return paths


def open_gguf(path: Path) -> tuple[dict, list[TensorInfo]]:
    """Metadata (from the first file) and the tensors of all files of a (split) GGUF."""
    tensors: list[TensorInfo] = []
    meta: dict = {}
    for i, p in enumerate(split_paths(Path(path))):
        m, t = read_header(p)
        meta = m if i == 0 else meta
        tensors.extend(t)
    return meta, tensors


def _permute_back(x: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's LlamaModel.permute on rows (works on raw quantized rows too).

    GGUF row order within a head is (i, half) for i < head_dim/2; HF's is (half, i).
    """
    rows = x.shape[0]
    hd = rows // n_head
    return x.reshape(n_head, hd // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def read_rows(t: TensorInfo, a: int, b: int, n_head: int | None = None) -> np.ndarray:
    """Rows [a, b) of a matrix's stored bytes, (b - a, bytes_per_row) uint8, read into memory
    rather than mapped (mapped pages count in the process's RSS until unmapped). With `n_head`,
    rows in Hugging Face order (`_permute_back`): the whole heads around [a, b) are read."""
    row_bytes = t.n_bytes // t.shape[0]
    lo, hi = a, b
    if n_head:
        head = t.shape[0] // n_head
        lo, hi = a - a % head, -(-b // head) * head
    out = np.empty((hi - lo, row_bytes), np.uint8)
    with open(t.path, "rb") as f:
        f.seek(t.offset + lo * row_bytes)
        if f.readinto(out.reshape(-1)) != out.nbytes:
            raise MlxEdgeError(f"{t.path}: truncated GGUF file (tensor {t.name} ends early)")
    if n_head:
        out = _permute_back(out, (hi - lo) // head)[a - lo: b - lo]
    return out


def mlx_name(arch, gguf_name: str) -> str | None:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; None if unknown."""
    m = _BLK.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        target = arch.GGUF_BLOCK.get(part)
        return f"model.layers.{layer}.{target}.{kind}" if target else None
    base, _, kind = gguf_name.rpartition(".")
    target = GLOBAL.get(base)
    return f"{target}.{kind}" if target else None


def read_gguf(path: str | Path) -> Source:
    path = Path(path)
    meta, tensor_list = open_gguf(path)
    name = meta.get("general.architecture")
    if name is None:
        raise MlxEdgeError(f"{path} has no general.architecture")
    try:
        arch = archs.from_gguf(name)
    except MlxEdgeError as e:
        raise MlxEdgeError(f"{e} in {path.name}") from None
    gtensors = {t.name: t for t in tensor_list}
    if len(gtensors) != len(tensor_list):  # names repeat across the files of a split set
        dup = next(t.name for i, t in enumerate(tensor_list) if t.name in {u.name for u in tensor_list[:i]})
        raise MlxEdgeError(f"{path}: tensor {dup} appears in more than one file of the split set")
    if "tokenizer.ggml.tokens" not in meta:
        raise MlxEdgeError(f"{path.name} carries no tokenizer (tokenizer.ggml.tokens missing)")
    vocab = len(meta["tokenizer.ggml.tokens"])
    blocks = meta.get(f"{name}.block_count")
    if isinstance(blocks, int) and blocks > len(tensor_list):
        raise MlxEdgeError(f"{path}: metadata {name}.block_count is {blocks}, more blocks than the file has "
                           f"tensors ({len(tensor_list)})")
    config = hf_config(arch, meta, set(gtensors), vocab, where=str(path))
    _extra_rope_config(name, config, gtensors)

    names = {}
    for gname in gtensors:
        if gname in IGNORED:
            continue
        mname = mlx_name(arch, gname)
        if mname is None:
            raise MlxEdgeError(f"unexpected tensor {gname!r} for architecture {name}")
        names[gname] = mname
    archs.check(config, {n: gtensors[g].shape for g, n in names.items()}, path.name)

    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    def make(gname: str, mname: str) -> SourceTensor:
        t = gtensors[gname]
        gtype, shape = t.type, t.shape
        perm = None
        if arch.PERMUTED_QK and ".self_attn.q_proj." in mname:
            perm = n_heads
        elif arch.PERMUTED_QK and ".self_attn.k_proj." in mname:
            perm = n_kv
        plus_one = arch.NORM_PLUS_ONE and mname.endswith("norm.weight")

        def raw() -> np.ndarray:
            data = t.raw()
            return _permute_back(data, perm) if perm else data

        def dense() -> np.ndarray:
            x = ggml.dequantize(raw(), gtype, shape)
            return x - np.float32(1.0) if plus_one else x

        def exact():
            if len(shape) != 2 or gtype in FLOAT_TYPES:
                return None
            return ggml.repack(raw(), gtype, shape)

        def rows(a: int, b: int) -> SourceTensor:
            data = read_rows(t, a, b, perm)
            part = (b - a, shape[1])

            def part_dense() -> np.ndarray:
                x = ggml.dequantize(data, gtype, part)
                return x - np.float32(1.0) if plus_one else x

            def part_exact():
                return None if gtype in FLOAT_TYPES else ggml.repack(data, gtype, part)

            return SourceTensor(mname, part, gtype, part_dense, part_exact, data.nbytes)

        return SourceTensor(mname, shape, gtype, dense, exact, t.n_bytes, rows if len(shape) == 2 else None)

    order = sorted(names.items(), key=lambda kv: archs.sort_key(kv[1]))

    def stream():
        for gname, mname in order:
            yield make(gname, mname)

    info = {"architecture": name, "name": meta.get("general.name"), "file_type": meta.get("general.file_type"),
            "files": [p.name for p in split_paths(path)],
            "tokenizer": meta.get("tokenizer.ggml.model")}
    return Source(path=path, format="gguf", config=config, tensors=stream,
                  tokenizer_files=tokenizer_files(meta), generation_config=generation_config(meta),
                  info=info, float_dtype=arch.FLOAT_DTYPE)


def hf_config(arch, meta: dict, tensor_names: set[str], vocab_size: int, where: str = "GGUF") -> dict:
    """Hugging Face config.json (with every field mlx-lm reads) from GGUF metadata (whose types and
    ranges gguf_file checked as it parsed them)."""
    prefix = arch.GGUF_ARCH

    def get(key, default=None, required=False):
        value = meta.get(f"{prefix}.{key}", default)
        if required and value is None:
            raise MlxEdgeError(f"{where}: metadata lacks {prefix}.{key}")
        return value

    def uniform(key, default=None):
        value = get(key, default, required=default is None)
        if isinstance(value, list):  # per-layer counts (some newer files): ours are uniform
            if len(set(value)) != 1:
                raise MlxEdgeError(f"{where}: per-layer values of {prefix}.{key} are not supported")
            value = value[0]
        return int(value)

    hidden = int(get("embedding_length", required=True))
    n_heads = uniform("attention.head_count")
    n_kv = uniform("attention.head_count_kv", n_heads)
    if n_heads % n_kv:
        raise MlxEdgeError(f"{where}: metadata {prefix}.attention.head_count {n_heads} is not a multiple of "
                           f"{prefix}.attention.head_count_kv {n_kv}")
    if get("attention.key_length") is None and hidden % n_heads:
        raise MlxEdgeError(f"{where}: metadata {prefix}.embedding_length {hidden} is not a multiple of "
                           f"{prefix}.attention.head_count {n_heads}")
    head_dim = int(get("attention.key_length", hidden // n_heads))
    ffn = uniform("feed_forward_length")
    config = {
        "architectures": [arch.HF_CLASS],
        "model_type": arch.MODEL_TYPE,
        "hidden_size": hidden,
        "intermediate_size": int(ffn),
        "num_hidden_layers": int(get("block_count", required=True)),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(n_kv),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    scaling = _rope_scaling(prefix, get)
    if scaling:
        config["rope_scaling"] = scaling
    arch.gguf_config(config, get, tensor_names)
    return config


def _rope_scaling(prefix: str, get) -> dict | None:
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if kind in (None, "none") and not factor:
        return None
    if kind in ("linear", None) and factor:
        return {"type": "linear", "rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out = {"type": "yarn", "rope_type": "yarn", "factor": float(factor)}
        orig = get("rope.scaling.original_context_length")
        if orig:
            out["original_max_position_embeddings"] = int(orig)
        return out
    raise MlxEdgeError(f"{prefix}: rope scaling type {kind!r} is not supported")


def _extra_rope_config(arch: str, config: dict, gtensors: dict) -> None:
    """RoPE scaling that llama.cpp stores as tensors rather than metadata."""
    for t in gtensors.values():
        if t.name in IGNORED and t.type != "F32":
            raise MlxEdgeError(f"{t.path}: tensor {t.name} is {t.type}, expected F32")
    if arch == "phi3" and "rope_factors_long.weight" in gtensors:
        if "rope_factors_short.weight" not in gtensors:
            raise MlxEdgeError("GGUF has rope_factors_long.weight but no rope_factors_short.weight")
        long = gtensors["rope_factors_long.weight"].raw().view(np.float32).tolist()
        short = gtensors["rope_factors_short.weight"].raw().view(np.float32).tolist()
        config["rope_scaling"] = {"type": "longrope", "long_factor": long, "short_factor": short}
    if arch == "llama" and "rope_freqs.weight" in gtensors:
        freqs = gtensors["rope_freqs.weight"].raw().view(np.float32)
        config["rope_scaling"] = _llama3_scaling(freqs, config["rope_theta"], config["head_dim"])


def _llama3_scaling(freqs: np.ndarray, base: float, head_dim: int) -> dict:
    """Recover Llama 3.1-style rope_scaling from llama.cpp's rope_freqs divisors.

    llama.cpp stores per-frequency divisors (1 at high frequency, `factor` at low, smooth between);
    the HF parameters are not in the metadata, so try the published ones and verify they reproduce
    the stored divisors.
    """
    factor = float(freqs.max())
    inv = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * np.pi / inv
    for low, high, orig in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 131072)):
        lo_wl, hi_wl = orig / low, orig / high
        smooth = (orig / wavelen - low) / (high - low)
        div = np.where(wavelen < hi_wl, 1.0,
                       np.where(wavelen > lo_wl, factor, 1.0 / ((1 - smooth) / factor + smooth)))
        if np.allclose(div, freqs, rtol=1e-4):
            return {"rope_type": "llama3", "type": "llama3", "factor": factor,
                    "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": orig}
    raise MlxEdgeError("rope_freqs in this GGUF match no known Llama 3 rope scaling")
