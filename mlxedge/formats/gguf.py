"""Read a GGUF file (or a split set) into a conversion Source: mlx-lm names, HF config, tokenizer.

llama.cpp conventions undone here: reversed dimension order (gguf-py already hands numpy order),
q/k rows interleaved for RoPE in llama-family files, Gemma's (1 + w) norm weights, tied output.
Quantized tensors stay raw bytes (memory-mapped) until the pipeline asks for one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import MlxEdgeError
from ..quant import ggml
from .gguf_file import TensorInfo, read_header
from .gguf_arch import BLOCK, IGNORED, MODEL_TYPE, NORM_PLUS_ONE, PERMUTED_QK, hf_config, mlx_name
from .source import Source, SourceTensor

_SPLIT = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")


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


def read_gguf(path: str | Path) -> Source:
    path = Path(path)
    meta, tensor_list = open_gguf(path)
    arch = meta.get("general.architecture")
    if arch is None:
        raise MlxEdgeError(f"{path} has no general.architecture")
    if arch not in MODEL_TYPE:
        raise MlxEdgeError(f"unsupported architecture {arch!r} in {path.name} "
                           f"(supported: {', '.join(MODEL_TYPE)})")
    gtensors = {t.name: t for t in tensor_list}
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens else int(meta.get(f"{arch}.vocab_size", 0))
    if not vocab:
        vocab = int(gtensors["token_embd.weight"].shape[0])
    config = hf_config(arch, meta, set(gtensors), vocab)
    _extra_rope_config(arch, config, gtensors)

    names = {}
    for gname in gtensors:
        if gname in IGNORED:
            continue
        name = mlx_name(arch, gname)
        if name is None:
            raise MlxEdgeError(f"unexpected tensor {gname!r} for architecture {arch}")
        names[gname] = name
    _check_complete(arch, config, set(names.values()))

    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    def make(gname: str, name: str) -> SourceTensor:
        t = gtensors[gname]
        gtype, shape = t.type, t.shape
        perm = None
        if arch in PERMUTED_QK and ".self_attn.q_proj." in name:
            perm = n_heads
        elif arch in PERMUTED_QK and ".self_attn.k_proj." in name:
            perm = n_kv
        plus_one = arch in NORM_PLUS_ONE and name.endswith("norm.weight")

        def raw() -> np.ndarray:
            data = t.raw()
            return _permute_back(data, perm) if perm else data

        def dense() -> np.ndarray:
            x = ggml.dequantize(raw(), gtype, shape)
            return x - np.float32(1.0) if plus_one else x

        def exact():
            if len(shape) != 2 or gtype in ("F32", "F16", "BF16"):
                return None
            return ggml.repack(raw(), gtype, shape)

        return SourceTensor(name, shape, gtype, dense, exact, t.n_bytes)

    order = sorted(names.items(), key=lambda kv: _sort_key(kv[1]))

    def stream():
        for gname, name in order:
            yield make(gname, name)

    from .gguf_tokenizer import generation_config, tokenizer_files

    if "tokenizer.ggml.tokens" not in meta:
        raise MlxEdgeError(f"{path.name} carries no tokenizer (tokenizer.ggml.tokens missing)")
    file_type = meta.get("general.file_type")
    info = {"architecture": arch, "name": meta.get("general.name"), "file_type": file_type,
            "files": [p.name for p in split_paths(path)],
            "tokenizer": meta.get("tokenizer.ggml.model")}
    return Source(path=path, format="gguf", config=config, tensors=stream,
                  tokenizer_files=tokenizer_files(meta), generation_config=generation_config(meta),
                  info=info, float_dtype="bfloat16" if arch == "gemma3" else "float16")


def _sort_key(name: str):
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    return (1, int(m.group(1)), m.group(2)) if m else (0 if "embed" in name else 2, 0, name)


def _check_complete(arch: str, config: dict, have: set[str]) -> None:
    """Every parameter mlx-lm will ask for is there (lm_head only when untied)."""
    need = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        need.add("lm_head.weight")
    optional = {"attn_q_norm", "attn_k_norm"} if arch != "qwen3" and arch != "gemma3" else set()
    for i in range(config["num_hidden_layers"]):
        for part, target in BLOCK[arch].items():
            if part not in optional:
                need.add(f"model.layers.{i}.{target}.weight")
    missing = sorted(need - have)
    if missing:
        raise MlxEdgeError(f"GGUF is missing {len(missing)} tensors for {arch}, e.g. {missing[0]}")


def _extra_rope_config(arch: str, config: dict, gtensors: dict) -> None:
    """RoPE scaling that llama.cpp stores as tensors rather than metadata."""
    if arch == "phi3" and "rope_factors_long.weight" in gtensors:
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
