"""End to end: GGUFs written by llama.cpp's own converter and quantizer -> `mlxedge convert` -> mlx-lm.

Fixtures in tests/fixtures/gguf/ (made by scripts/make_tiny_ggufs.py, see its docstring): tiny
seeded random transformers checkpoints of llama (tied; Mistral-style 4:1 GQA with head_dim 32 and an
untied lm_head), qwen2 (q/k/v biases), qwen3 (q/k norms, head_dim 32), gemma3 text (6 layers, window
8, q/k norms, (1 + w) norms) and phi3 (fused qkv / gate_up, partial rotary), converted with
convert_hf_to_gguf.py (f32, f16, q8_0) and quantized with llama_model_quantize (Q4_0, Q4_1, Q5_0,
Q5_1, and a one-tensor-per-type mix of Q2_K..Q6_K, TQ1_0, TQ2_0, IQ4_NL).

Oracles, both computed outside this project:
- `logits_hf`: transformers on the GGUF's own weights (gguf-py dequantized, llama.cpp's q/k
  permutation and Gemma's +1 undone). For f32 files, transformers on the original checkpoint.
- `logits_llamacpp`: llama.cpp itself on the GGUF (llama-cpp-python, all logits).
Tolerances are relative to max |reference logit| (the logits here reach 16-60):
- TIGHT 2e-5: every weight is held exactly (float, or a GGML type MLX's affine form holds exactly),
  so only float32 summation order differs (seen: <= 1e-6).
- F16_EMBED 5e-3 (mlx-lm only): an embedding stored with float16 scales makes mlx-lm's
  QuantizedEmbedding return float16 rows, so the first residual is rounded to float16 (2^-11
  relative per element; seen: <= 1.7e-3). The stored values are still exact (test below).
- FALLBACK 1.5e-2 max and 2e-2 RMS: some tensors have GGML types MLX cannot express (Q2_K, Q3_K,
  Q6_K, IQ4_NL), which "keep" requantizes to 8 bits (seen: 3.4e-3 max, 6.9e-3 RMS).
- LLAMACPP 5e-2 max and RMS, top-1 >= 85%: llama.cpp's CPU path quantizes activations to Q8_0/Q8_K
  before quantized matmuls and keeps the KV cache in float16 (seen: <= 2.1e-2 max, 1.9e-2 RMS, top-1
  >= 94%, and 7e-4 for float files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")

from mlxedge.convert import convert  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "gguf"
NAMES = sorted(p.stem for p in FIX.glob("*.gguf"))

# GGML types whose values MLX's affine form (q * scale + bias) holds exactly.
EXACT_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "TQ1_0", "TQ2_0", "IQ4_NL"}
FLOAT_TYPES = {"F32", "F16", "BF16"}
MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text", "phi3": "phi3"}

TIGHT, F16_EMBED = 2e-5, 5e-3
FALLBACK_MAX, FALLBACK_RMS = 1.5e-2, 2e-2
LLAMACPP_MAX, LLAMACPP_RMS, LLAMACPP_TOP1 = 5e-2, 5e-2, 0.85


def test_fixtures_present():
    assert len(NAMES) >= 12, f"tiny GGUF fixtures missing in {FIX}; run scripts/make_tiny_ggufs.py"


# ------------------------------------------------------------------ helpers


def golden(name: str) -> dict:
    g = np.load(FIX / f"{name}.npz")
    return {"tokens": g["tokens"], "logits_hf": g["logits_hf"],
            "logits_llamacpp": g["logits_llamacpp"].astype(np.float32), "meta": json.loads(str(g["meta"]))}


def gguf_tensors(name: str) -> tuple[str, dict]:
    reader = gguf.GGUFReader(FIX / f"{name}.gguf")
    return reader.fields["general.architecture"].contents(), {t.name: t for t in reader.tensors}


def gguf_values(t, arch: str, config: dict) -> np.ndarray:
    """gguf-py's float32 values of a tensor in numpy (HF) row order: llama q/k un-permuted."""
    x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    x = x.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
    if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
        heads = config["num_attention_heads"] if "attn_q" in t.name else config["num_key_value_heads"]
        # llama.cpp's LlamaModel.permute stored rows (head, i, half); HF's order is (head, half, i).
        x = x.reshape(heads, x.shape[0] // heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    return x


def mlx_name_map(arch: str, n_layers: int, mlx_names) -> dict:
    """GGUF tensor name -> mlx-lm parameter name, through gguf-py's own HF name table."""
    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    table = gguf.get_tensor_name_map(arch_id, n_layers)
    out = {}
    for name in mlx_names:
        gname = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is not None:
            out[gname] = name
    return out


def rel_max(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2) / np.mean(ref**2)))


def has_fallback_types(name: str) -> bool:
    _, tensors = gguf_tensors(name)
    return any(t.tensor_type.name not in EXACT_TYPES | FLOAT_TYPES for t in tensors.values())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """name -> `convert --exact` bundle directory (each file converted once, on first use); the
    compact default's forms are checked in tests/test_lowbit.py."""
    root = tmp_path_factory.mktemp("bundles")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            done[name] = convert(FIX / f"{name}.gguf", root / name, show_progress=False, exact=True)
        return done[name]

    return get


@pytest.fixture(scope="module")
def mlx_logits(bundles):
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            model, _ = mlx_lm.load(str(bundles(name)))
            tokens = mx.array(golden(name)["tokens"])[None]
            cache[name] = np.array(model(tokens)[0].astype(mx.float32))
        return cache[name]

    return get


# ------------------------------------------------------------------ logits


@pytest.mark.parametrize("name", NAMES)
def test_mlx_logits_match_transformers(name, bundles, mlx_logits):
    ref = golden(name)["logits_hf"]
    got = mlx_logits(name)
    assert got.shape == ref.shape
    if has_fallback_types(name):
        assert rel_max(got, ref) <= FALLBACK_MAX and rel_rms(got, ref) <= FALLBACK_RMS, \
            (rel_max(got, ref), rel_rms(got, ref))
        return
    w = mx.load(str(bundles(name) / "model.safetensors"))
    scales = w.get("model.embed_tokens.scales")
    tol = F16_EMBED if scales is not None and scales.dtype != mx.float32 else TIGHT
    assert rel_max(got, ref) <= tol, rel_max(got, ref)


@pytest.mark.parametrize("name", NAMES)
def test_mlx_logits_match_llamacpp(name, mlx_logits):
    ref = golden(name)["logits_llamacpp"]
    got = mlx_logits(name)
    assert rel_max(got, ref) <= LLAMACPP_MAX, rel_max(got, ref)
    assert rel_rms(got, ref) <= LLAMACPP_RMS, rel_rms(got, ref)
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= LLAMACPP_TOP1


@pytest.mark.parametrize("name", NAMES)
def test_numpy_backend_matches_transformers(name, bundles):
    nb = pytest.importorskip("mlxedge.backends.numpy")
    g = golden(name)
    got = nb.load(bundles(name)).forward(g["tokens"])
    ref = g["logits_hf"]
    if has_fallback_types(name):
        assert rel_max(got, ref) <= FALLBACK_MAX and rel_rms(got, ref) <= FALLBACK_RMS
    else:  # it dequantizes to float32, so no float16 embedding rows
        assert rel_max(got, ref) <= TIGHT, rel_max(got, ref)


# ------------------------------------------------------------------ config.json


@pytest.mark.parametrize("name", NAMES)
def test_config_fields(name, bundles):
    hf = golden(name)["meta"]["hf_config"]
    arch, tensors = gguf_tensors(name)
    cfg = json.loads((bundles(name) / "config.json").read_text())
    assert cfg["model_type"] == MODEL_TYPE[arch]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings"):
        assert cfg[key] == hf[key], key
    assert cfg["rms_norm_eps"] == pytest.approx(hf["rms_norm_eps"], rel=1e-6)
    # Written explicitly: mlx-lm's defaults differ per architecture and from these models'.
    assert "rope_theta" in cfg and cfg["rope_theta"] == pytest.approx(hf["rope_theta"])
    assert cfg["tie_word_embeddings"] == ("output.weight" not in tensors)
    if arch == "gemma3":
        assert cfg["sliding_window"] == hf["sliding_window"]
        assert cfg["query_pre_attn_scalar"] == hf["query_pre_attn_scalar"]
        assert cfg["rope_local_base_freq"] == pytest.approx(hf["rope_local_base_freq"])
        # mlx-lm's gemma3_text reads sliding_window_pattern; HF's layer_types must agree with it.
        pattern = cfg["sliding_window_pattern"]
        derived = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                   for i in range(cfg["num_hidden_layers"])]
        assert derived == hf["layer_types"]
        assert cfg.get("layer_types", derived) == hf["layer_types"]
    if arch == "phi3":
        assert cfg["partial_rotary_factor"] == pytest.approx(hf["partial_rotary_factor"])
    quantized = any(t.tensor_type.name not in FLOAT_TYPES for t in tensors.values())
    assert ("quantization" in cfg) == quantized
    if quantized:
        q = cfg["quantization"]
        assert type(q["group_size"]) is int and type(q["bits"]) is int and q["mode"] == "affine"
        for key, entry in q.items():
            if key in ("group_size", "bits", "mode"):
                continue
            assert entry is False or (type(entry["group_size"]) is int and type(entry["bits"]) is int), (key, entry)


# ------------------------------------------------------------------ tensors


@pytest.mark.parametrize("name", NAMES)
def test_tensors_match_gguf(name, bundles):
    """Every GGUF tensor lands in the bundle: exact GGML types as MLX affine that dequantizes to
    exactly gguf-py's values, float types as floats equal to them, other types within 8-bit error."""
    arch, tensors = gguf_tensors(name)
    out = bundles(name)
    cfg = json.loads((out / "config.json").read_text())
    w = mx.load(str(out / "model.safetensors"))
    params = {k for k in w if not k.endswith((".scales", ".biases"))}
    names = mlx_name_map(arch, cfg["num_hidden_layers"], params)
    assert set(names) == set(tensors), f"unmapped: {sorted(set(tensors) ^ set(names))}"
    q = cfg.get("quantization", {})
    for gname, t in tensors.items():
        pname = names[gname]
        base = pname.rsplit(".", 1)[0]
        kind = t.tensor_type.name
        want = gguf_values(t, arch, cfg)
        if arch == "gemma3" and pname.endswith("norm.weight"):
            want = want - np.float32(1.0)  # llama.cpp stores Gemma's 1 + w; mlx-lm adds the 1
        if pname.endswith(".weight") and f"{base}.scales" in w:
            spec = q.get(base, q)
            assert spec, f"{base} is quantized but config.json says {spec!r}"
            # float32 arithmetic: the stored q, scales and biases, not mlx's float16 output rounding
            got = mx.dequantize(w[pname], w[f"{base}.scales"].astype(mx.float32),
                                w[f"{base}.biases"].astype(mx.float32),
                                group_size=spec["group_size"], bits=spec["bits"])
        else:
            assert kind not in EXACT_TYPES, f"{gname} ({kind}) was not kept as MLX affine"
            got = w[pname]
        got = np.array(got.astype(mx.float32))
        assert got.shape == want.shape, gname
        if kind in EXACT_TYPES or kind in FLOAT_TYPES:
            assert np.array_equal(got, want), (gname, kind, float(np.abs(got - want).max()))
        else:
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err <= 1e-2, (gname, kind, err)
