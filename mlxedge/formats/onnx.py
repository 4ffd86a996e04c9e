"""Read ONNX decoder exports: Hugging Face optimum / transformers.js folders (`model.onnx`,
`model_q4.onnx`, ... beside `config.json`, maybe under `onnx/`) and onnxruntime-genai builder
folders (`genai_config.json`, `model.onnx` + `model.onnx.data`).

Parameters come from the graph's structure (see onnx_weights.py); this module finds the model file,
builds the Hugging Face config (from config.json, else genai_config.json plus the graph), splits
fused projections, drops a duplicated tied lm_head, and checks every parameter is there.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .. import archs
from ..errors import MlxEdgeError
from ..files import read_json
from .onnx_graph import DTYPES, OnnxGraph
from .onnx_weights import Weight, collect
from .source import Source, SourceTensor

MODEL_PREFERENCE = ("model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# what the ONNX reader was checked on (Gemma: no real export to check its norm convention against)
ONNX_TYPES = [t for t in archs.supported() if archs.get(t).ONNX]
GENAI_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}


def read_onnx(path: str | Path) -> Source:
    """Read an ONNX export (a folder, or one .onnx file in it) into a conversion Source."""
    model_file, root = _locate(Path(path))
    genai = read_json(root / "genai_config.json") if (root / "genai_config.json").exists() else None
    graph = OnnxGraph(model_file)
    try:
        weights = {_hf_name(k): w for k, w in collect(graph).items()}
    except (IndexError, KeyError, TypeError, ValueError, AttributeError, ArithmeticError, StopIteration) as e:
        # the graph's structure is not what any exporter writes (fuzzing finds many such shapes)
        raise MlxEdgeError(f"{model_file.name}: malformed ONNX graph ({type(e).__name__}: {e})") from None
    used = set().union(*(w.consts for w in weights.values()))
    config = _config(root, genai, graph, weights)
    arch = config["model_type"]
    if arch not in ONNX_TYPES:
        raise MlxEdgeError(f"unsupported architecture {arch!r} in {model_file.name}; "
                           f"supported: {', '.join(ONNX_TYPES)}")
    # types and ranges before anything is sized from them (the fused splits below)
    archs.check_config(config, str(root / "config.json") if (root / "config.json").exists()
                       else f"{model_file.name} (its config derived from genai_config.json)")
    weights = _split_fused(weights, config, model_file.name)
    tied = _tie(weights)
    config["tie_word_embeddings"] = tied
    _check(weights, used, config, graph, model_file)

    order = sorted(weights, key=archs.sort_key)
    has_external = any(c.proto.data_location == 1 for c in graph.consts.values())
    source_path = model_file.parent if has_external else model_file
    encodings = Counter(weights[n].src_type for n in order)
    info = {"layout": "genai" if genai else "optimum", "model_file": model_file.name,
            "producer": f"{graph.model.producer_name} {graph.model.producer_version}".strip(),
            "opset": graph.opset(), "encodings": dict(encodings), "tied_lm_head_dropped": tied}

    def tensors() -> Iterator[SourceTensor]:
        for name in order:
            w = weights[name]
            yield SourceTensor(name, w.shape, w.src_type, _shaped(name, w), w.affine, w.nbytes)

    return Source(path=source_path, format="onnx", config=config, tensors=tensors,
                  tokenizer_files=_tokenizer_files(root, model_file.parent),
                  generation_config=_generation_config(root, genai, config),
                  info=info, float_dtype=_float_dtype(graph))


def _shaped(name: str, w: Weight):
    """w.dense, asserting the shape the graph was checked for (a reader bug, never a user's file)."""
    def dense() -> np.ndarray:
        x = w.dense()
        if tuple(x.shape) != tuple(w.shape):
            raise MlxEdgeError(f"ONNX reader: {name} decoded to {list(x.shape)}, the graph says {list(w.shape)}")
        return x
    return dense


def _obj(parent: dict, key: str, where: str) -> dict:
    """parent[key] as a JSON object ({} when absent)."""
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise MlxEdgeError(f"{where}: {key} is {str(value)[:60]!r}, expected an object")
    return value


# -- locating the model ------------------------------------------------------------------------

def _locate(path: Path) -> tuple[Path, Path]:
    """-> (the .onnx file, the folder holding config/tokenizer files)."""
    if path.is_file():
        root = path.parent
        if root.name == "onnx" and not (root / "config.json").exists():
            root = root.parent
        return path, root
    genai = path / "genai_config.json"
    if genai.exists():
        model = _obj(read_json(genai), "model", genai.name)
        name = _obj(model, "decoder", f"{genai.name} model").get("filename", "model.onnx")
        if not isinstance(name, str) or not (path / name).is_file():
            raise MlxEdgeError(f"{genai} names {name}, which is not in {path}")
        return path / name, path
    for folder in (path, path / "onnx"):
        candidates = sorted(p.name for p in folder.glob("*.onnx")) if folder.is_dir() else []
        for name in MODEL_PREFERENCE:
            if name in candidates:
                return folder / name, path
        if len(candidates) == 1:
            return folder / candidates[0], path
        if candidates:
            raise MlxEdgeError(f"{folder} holds several ONNX models ({', '.join(candidates)}) and no "
                               "model.onnx; name the file to convert")
    raise MlxEdgeError(f"{path}: no .onnx model found")


# -- names -------------------------------------------------------------------------------------

def _hf_name(name: str) -> str:
    """Exporter scope names -> transformers names (the genai builder says `attn`, `final_norm_layernorm`)."""
    parts = name.split(".")
    if "final_norm_layernorm" in parts:
        return "model.norm." + parts[-1]
    return ".".join("self_attn" if p == "attn" and i and parts[i - 2] == "layers" else p
                    for i, p in enumerate(parts))


# -- configuration -----------------------------------------------------------------------------

def _config(root: Path, genai: Optional[dict], graph: OnnxGraph, weights: dict[str, Weight]) -> dict:
    if (root / "config.json").exists():
        config = read_json(root / "config.json")
        for key in [k for k in config if k.startswith("transformers.js") or k in ("quantization", "quantization_config")]:
            del config[key]
        if "model_type" not in config:
            raise MlxEdgeError(f"{root / 'config.json'} has no model_type")
        return config
    if genai is None:
        raise MlxEdgeError(f"{root} has neither config.json nor genai_config.json; cannot tell the model's shape")
    return _config_from_genai(genai, graph, weights)


def _config_from_genai(genai: dict, graph: OnnxGraph, weights: dict[str, Weight]) -> dict:
    model = _obj(genai, "model", "genai_config.json")
    dec = _obj(model, "decoder", "genai_config.json model")
    gtype = model.get("type", "?")
    if not isinstance(gtype, str) or gtype not in GENAI_TYPES:
        raise MlxEdgeError(f"unsupported architecture {gtype!r} in genai_config.json; "
                           f"supported: {', '.join(GENAI_TYPES)}")
    try:
        n_heads, n_kv, head_dim = dec["num_attention_heads"], dec["num_key_value_heads"], dec["head_size"]
        config = {"model_type": GENAI_TYPES[gtype], "hidden_size": dec["hidden_size"],
                  "num_hidden_layers": dec["num_hidden_layers"], "num_attention_heads": n_heads,
                  "num_key_value_heads": n_kv, "head_dim": head_dim, "vocab_size": model["vocab_size"]}
    except KeyError as e:
        raise MlxEdgeError(f"genai_config.json lacks model.decoder/{e.args[0]}") from None
    down = weights.get("model.layers.0.mlp.down_proj.weight")
    if down is None or len(down.shape) != 2:
        raise MlxEdgeError("ONNX graph has no 2-D model.layers.0.mlp.down_proj; cannot derive intermediate_size")
    config["intermediate_size"] = down.shape[1]
    config["max_position_embeddings"] = model.get("context_length", 4096)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in model:
            config[key] = model[key]
    # the sizes' types and ranges before the RoPE table is read against head_dim
    archs.check_config(config, f"{graph.path.name} (its config derived from genai_config.json)")
    config["rms_norm_eps"] = _norm_eps(graph)
    config["rope_theta"] = _rope_theta(graph, head_dim)
    for node in graph.nodes:
        if node.op_type == "GroupQueryAttention" and graph.attrs(node).get("rotary_interleaved", 0):
            raise MlxEdgeError("the graph applies interleaved (GPT-J style) RoPE, which no supported architecture uses")
    config["hidden_act"] = "silu"
    config["attention_bias"] = "model.layers.0.self_attn.qkv_proj.bias" in weights or \
        "model.layers.0.self_attn.q_proj.bias" in weights
    return config


def _norm_eps(graph: OnnxGraph) -> float:
    for node in graph.nodes:
        if node.op_type in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization"):
            eps = graph.attrs(node).get("epsilon", 1e-5)
            if not isinstance(eps, (int, float)) or not 0 < eps < 1:
                raise MlxEdgeError(f"{graph.path.name}: {node.op_type} node {node.name!r}: epsilon is "
                                   f"{str(eps)[:40]!r}, expected a number in (0, 1)")
            # the attribute is a float32: its shortest repr is the value the exporter was given
            return float(np.format_float_positional(np.float32(eps), unique=True))
    raise MlxEdgeError("no RMS norm node in the ONNX graph; cannot derive rms_norm_eps")


def _rope_theta(graph: OnnxGraph, head_dim: int) -> float:
    """Recover the RoPE base from the builder's cos_cache/sin_cache (rows = positions):
    at position 1 the angle of column i is inv_freq[i] = base^(-2i / rotary_dim)."""
    if "cos_cache" not in graph.consts or "sin_cache" not in graph.consts:
        raise MlxEdgeError("no cos_cache/sin_cache in the ONNX graph and no config.json; cannot derive rope_theta")
    cos, sin = (graph.consts[n] for n in ("cos_cache", "sin_cache"))
    if cos.dtype not in ("float32", "float16", "bfloat16") or cos.dtype != sin.dtype or cos.shape != sin.shape \
            or len(cos.shape) != 2 or cos.shape[0] < 2 or cos.shape[1] < 2:
        raise MlxEdgeError(f"{graph.path.name}: cos_cache {cos.dtype} {list(cos.shape)} / sin_cache {sin.dtype} "
                           f"{list(sin.shape)}, expected two float tables of the same shape (positions >= 2, "
                           "head_dim / 2)")
    cos, sin = (np.asarray(c.array(), np.float64) for c in (cos, sin))
    half = cos.shape[1]
    if 2 * half != head_dim:
        raise MlxEdgeError(f"cos_cache covers {2 * half} of {head_dim} head dims (partial rotary); "
                           "add the model's config.json beside it")
    inv_freq = np.arctan2(sin[1], cos[1])  # (half,)
    if not np.all(np.isfinite(inv_freq)) or not np.all(inv_freq > 0):
        raise MlxEdgeError(f"{graph.path.name}: cos_cache/sin_cache row 1 holds no positive RoPE angles; "
                           "add the model's config.json beside it")
    i = np.arange(half)
    slope, intercept = np.polyfit(i, np.log(inv_freq), 1)
    fit = np.exp(intercept + slope * i)
    if abs(intercept) > 1e-3 or np.max(np.abs(fit / inv_freq - 1)) > 1e-3:
        raise MlxEdgeError("cos_cache is not a plain RoPE table (scaled RoPE?); add the model's config.json beside it")
    theta = float(np.exp(-slope * half))
    return float(f"{theta:.4g}")  # the table holds float32 angles: keep 4 significant digits


def _float_dtype(graph: OnnxGraph) -> str:
    """The model's compute dtype: that of its logits output."""
    for out in graph.model.graph.output:
        if out.name == "logits":
            name = DTYPES.get(out.type.tensor_type.elem_type, ("float32",))[0]
            return name if name in ("float32", "float16", "bfloat16") else "float32"
    return "float32"


def _generation_config(root: Path, genai: Optional[dict], config: dict) -> dict:
    if (root / "generation_config.json").exists():
        return read_json(root / "generation_config.json")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    search = _obj(genai or {}, "search", "genai_config.json")
    for key in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty"):
        if key in search:
            gen[key] = search[key]
    return gen


def _tokenizer_files(root: Path, model_dir: Path) -> dict[str, dict]:
    out = {}
    for name in TOKENIZER_FILES:
        for folder in (root, model_dir):
            if (folder / name).exists():
                out[name] = read_json(folder / name)
                break
    return out


# -- fused projections, tied embeddings, completeness ------------------------------------------

def _split_fused(weights: dict[str, Weight], config: dict, model: str) -> dict[str, Weight]:
    """The genai builder fuses q/k/v into `qkv_proj` (rows q | k | v); mlx-lm wants them apart
    (except where mlx-lm keeps them fused too, as in phi3)."""
    if archs.get(config["model_type"]).FUSED:
        return weights
    hd = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    nq = config["num_attention_heads"] * hd
    nkv = (config.get("num_key_value_heads") or config["num_attention_heads"]) * hd
    out = {}
    for name, w in weights.items():
        if ".self_attn.qkv_proj." in name:
            if w.shape[0] != nq + 2 * nkv:
                raise MlxEdgeError(f"{model}: {name} has {w.shape[0]} rows; the head counts say {nq} + 2 x {nkv}")
            for proj, (a, b) in (("q_proj", (0, nq)), ("k_proj", (nq, nq + nkv)), ("v_proj", (nq + nkv, nq + 2 * nkv))):
                out[name.replace("qkv_proj", proj)] = w.rows(a, b)
        elif ".mlp.gate_up_proj." in name:
            if w.shape[0] != 2 * config["intermediate_size"]:
                raise MlxEdgeError(f"{model}: {name} has {w.shape[0]} rows; intermediate_size says "
                                   f"2 x {config['intermediate_size']}")
            half = w.shape[0] // 2
            out[name.replace("gate_up_proj", "gate_proj")] = w.rows(0, half)
            out[name.replace("gate_up_proj", "up_proj")] = w.rows(half, w.shape[0])
        else:
            out[name] = w
    return out


def _tie(weights: dict[str, Weight]) -> bool:
    """Exports write a tied lm_head twice (optimum) or share its bytes (genai). Drop lm_head when it
    holds exactly the embedding's values; keep it when they differ (e.g. only lm_head quantized)."""
    emb, head = weights.get("model.embed_tokens.weight"), weights.get("lm_head.weight")
    if head is None:
        return True
    if emb is None or emb.shape != head.shape:
        return False
    same = (emb.consts == head.consts and emb.src_type == head.src_type) or \
        np.array_equal(emb.dense(), head.dense())
    if same:
        del weights["lm_head.weight"]
    return same


def _check(weights: dict[str, Weight], used: set, config: dict, graph: OnnxGraph, model_file: Path) -> None:
    """Every parameter mlx-lm expects is there, and no weight-sized constant was left unread."""
    archs.check(config, {n: w.shape for n, w in weights.items()}, model_file.name)
    hidden = config["hidden_size"]
    for name, c in graph.consts.items():
        if name in used or name in ("cos_cache", "sin_cache") or "rotary" in name or "inv_freq" in name:
            continue
        if len(c.shape) == 2 and min(c.shape) > 1 or len(c.shape) == 1 and c.shape[0] == hidden \
                or len(c.shape) == 3 and c.dtype == "uint8":
            users = graph.consumers.get(name) or [None]
            op = users[0].op_type if users[0] is not None else "nothing"
            raise MlxEdgeError(f"{model_file.name}: weight {name} {list(c.shape)} (used by {op}) "
                               "was not recognised; this export layout is not supported")
