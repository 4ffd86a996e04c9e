"""ONNX -> MLX conversion, checked against onnxruntime running the same ONNX files.

Fixtures (tests/fixtures/onnx/tiny-llama, see its README.md): a 2-layer Llama exported by optimum
and by the onnxruntime-genai builder, and variants made from it with onnxruntime's own quantizers
(make_variants.py). Every test converts through `mlxedge.convert.convert`, loads the bundle with
`mlx_lm.load`, and compares logits for the same tokens with onnxruntime's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mlxedge.convert import convert  # noqa: E402
from mlxedge.errors import MlxEdgeError  # noqa: E402
from mlxedge.formats.bundle import read_config, read_weights  # noqa: E402
from mlxedge.formats.onnx import read_onnx  # noqa: E402
from mlxedge.quant import onnx_quant as oq  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "onnx" / "tiny-llama"
IDS = np.load(FIX / "reference_logits.npz")["input_ids"].reshape(-1).astype(np.int64)
FP32_ATOL = 5e-5  # logits are O(5); float32 paths agree to ~1e-5
# onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits and by default runs it with
# accuracy_level 4 (int8 activations); level 0 keeps the float computation we reproduce.
FLOAT_QDQ = {"session.qdq_matmulnbits_accuracy_level": "0"}


# -- oracles -----------------------------------------------------------------------------------

def ort_logits(model, **config) -> np.ndarray:
    """Logits (T, vocab) float32 of onnxruntime on IDS, with an empty KV cache."""
    opts = ort.SessionOptions()
    for k, v in config.items():
        opts.add_session_config_entry(k, v)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = IDS[None]
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, len(IDS)), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(len(IDS))[None]
        else:  # past_key_values.*: (batch, kv_heads, 0, head_dim)
            dims = [1, i.shape[1], 0, 16]
            feeds[i.name] = np.zeros(dims, np.float16 if "float16" in i.type else np.float32)
    return sess.run(["logits"], feeds)[0][0].astype(np.float32)


def weights_only(path: Path) -> onnx.ModelProto:
    """The genai int4 model runs MatMulNBits with accuracy_level=4, i.e. it quantizes activations
    to int8 too; accuracy_level=0 makes onnxruntime dequantize the weights and multiply in float,
    the computation a weights-only conversion reproduces."""
    m = onnx.load(str(path))
    for node in m.graph.node:
        for a in node.attribute:
            if a.name == "accuracy_level":
                a.i = 0
    return m


def int8_dequantized_weights() -> onnx.ModelProto:
    """optimum-int8 runs DynamicQuantizeLinear + MatMulInteger: onnxruntime quantizes activations
    to uint8 per call, which no weights-only format can reproduce (logits move by ~0.3). The
    oracle for the weights is the fp32 export with each MatMul weight replaced by onnxruntime's own
    DequantizeLinear of the int8 model's weight, scale and zero point."""
    q = {t.name: t for t in onnx.load(str(FIX / "optimum-int8" / "model.onnx")).graph.initializer}
    m = onnx.load(str(FIX / "optimum-fp32" / "model.onnx"))
    keep, nodes = [], []
    for init in m.graph.initializer:
        if f"{init.name}_quantized" not in q:
            keep.append(init)
            continue
        for suffix in ("_quantized", "_scale", "_zero_point"):
            keep.append(q[init.name + suffix])
        nodes.append(helper.make_node("DequantizeLinear", [f"{init.name}{s}" for s in ("_quantized", "_scale", "_zero_point")],
                                      [init.name]))
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    _prepend(m, nodes)
    return m


def _prepend(m: onnx.ModelProto, nodes: list) -> None:
    old = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + old)


def mlx_logits(bundle: Path) -> np.ndarray:
    model, _ = mlx_lm.load(str(bundle))
    return np.array(model(mx.array(IDS)[None]).astype(mx.float32))[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """convert(variant, recipe) -> bundle path, each conversion done once per module."""
    done: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("onnx_bundles")

    def get(variant: str | Path, quant: str = "keep") -> Path:
        key = (str(variant), quant)
        if key not in done:
            src = variant if isinstance(variant, Path) else FIX / variant
            done[key] = convert(src, root / f"{Path(str(variant)).name}-{quant}-{len(done)}", quant=quant,
                                show_progress=False)
        return done[key]
    return get


# -- every fixture converts, loads in mlx-lm and reproduces onnxruntime ------------------------

# Weights-only encodings onnxruntime computes in float32: the bundle must give the same logits.
EXACT = {
    "optimum-fp32": {},
    "genai-fp32": {},
    "optimum-q4": {},  # MatMulNBits 4-bit block 32, symmetric (no zero points)
    "optimum-q4-asym": {},  # ... with packed uint8 zero points
    "optimum-q8-b128-asym": {},  # 8-bit, block 128 > K (one padded block per row)
    "optimum-q2-asym": {},  # 2-bit
    "optimum-q4-gather": {},  # GatherBlockQuantized int4 embedding + MatMulNBits
    "optimum-qdq4-channel": {},  # DequantizeLinear int4, one block per row, then Transpose
    "optimum-qdq4-asym": FLOAT_QDQ,  # DequantizeLinear uint4 with zero points, blocks of 32 along K
}


@pytest.mark.parametrize("variant", sorted(EXACT))
def test_keep_matches_onnxruntime(converted, variant):
    bundle = converted(variant)
    expected = ort_logits(FIX / variant / "model.onnx", **EXACT[variant])
    np.testing.assert_allclose(mlx_logits(bundle), expected, atol=FP32_ATOL, rtol=0)
    meta = json.loads((bundle / "mlxedge.json").read_text())
    assert meta["source"]["format"] == "onnx"
    quantized = [t for t in meta["tensors"].values() if t["source"] not in ("F32", "F16")]
    assert all(t.get("exact") for t in quantized), "every quantized tensor is carried over exactly"


def test_genai_int4_matches_weights_only_onnxruntime(converted):
    bundle = converted("genai-int4")
    np.testing.assert_allclose(mlx_logits(bundle), ort_logits(weights_only(FIX / "genai-int4" / "model.onnx")),
                               atol=FP32_ATOL, rtol=0)
    w = read_weights(bundle)
    assert "lm_head.weight" not in w and w["model.embed_tokens.weight"].dtype == np.uint32  # tied, 4-bit
    assert read_config(bundle)["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}


def test_int8_dynamic_matches_dequantized_weights(converted):
    logits = mlx_logits(converted("optimum-int8"))
    np.testing.assert_allclose(logits, ort_logits(int8_dequantized_weights(), **FLOAT_QDQ), atol=FP32_ATOL, rtol=0)
    # onnxruntime's own int8 run also rounds activations: close, not equal.
    assert np.abs(logits - ort_logits(FIX / "optimum-int8" / "model.onnx")).max() < 1.0


def test_fp16_export(converted):
    """model_fp16 computes in float16 in onnxruntime; keep stores the float16 weights bit for bit."""
    bundle = converted("optimum-fp16")
    src = read_onnx(FIX / "optimum-fp16")
    stored = read_weights(bundle)
    for t in src.tensors():
        assert t.src_type == "F16"
        assert stored[t.name].dtype == np.float16
        np.testing.assert_array_equal(stored[t.name].astype(np.float32), t.dense())
    expected = ort_logits(FIX / "optimum-fp16" / "model.onnx")
    np.testing.assert_allclose(mlx_logits(bundle), expected, atol=0.05, rtol=0)  # fp16 rounding


def test_block16_falls_back_to_8bit_and_f32_is_exact(converted):
    """MLX groups start at 32, and the two 16-blocks of a 32-group have their own scales, so no
    MLX affine grid holds them exactly: keep re-quantizes to 8-bit group 32 (error recorded);
    f32 dequantizes exactly."""
    expected = ort_logits(FIX / "optimum-q4-b16" / "model.onnx")
    np.testing.assert_allclose(mlx_logits(converted("optimum-q4-b16", "f32")), expected, atol=FP32_ATOL, rtol=0)
    bundle = converted("optimum-q4-b16")
    meta = json.loads((bundle / "mlxedge.json").read_text())
    q_proj = meta["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q_proj["source"] == "MatMulNBits4b16" and q_proj["target"] == "affine8g32" and "max_abs_err" in q_proj
    # The re-quantization moves logits far less than the 4-bit quantization itself did.
    own_error = np.abs(expected - ort_logits(FIX / "optimum-fp32" / "model.onnx")).max()
    assert np.abs(mlx_logits(bundle) - expected).max() < 0.25 * own_error


def test_numpy_backend_matches_onnxruntime(converted):
    nb = pytest.importorskip("mlxedge.backends.numpy")
    for variant in ("optimum-fp32", "optimum-q4-asym", "optimum-q2-asym", "optimum-qdq4-channel"):
        logits = nb.load(converted(variant)).forward(IDS)
        np.testing.assert_allclose(logits, ort_logits(FIX / variant / "model.onnx", **EXACT[variant]),
                                   atol=1e-4, rtol=0, err_msg=variant)
    logits = nb.load(converted("genai-int4")).forward(IDS)
    np.testing.assert_allclose(logits, ort_logits(weights_only(FIX / "genai-int4" / "model.onnx")), atol=1e-4, rtol=0)


# -- recipes -----------------------------------------------------------------------------------

def _ort_quantization_effect(key: str) -> float:
    """How far onnxruntime's own quantization of the tiny model moves its logits (reference file)."""
    ref = np.load(FIX / "reference_logits.npz")
    return float(np.abs(ref[key] - ref["optimum_fp32"]).max())


@pytest.mark.parametrize("variant", ["optimum-fp32", "genai-int4"])
@pytest.mark.parametrize("quant", ["f16", "q8", "q4"])
def test_recipes(converted, variant, quant):
    """f16 rounds weights to float16; q8/q4 re-quantize every matrix to MLX's 8/4-bit group-64
    grid. Their logits must stay closer to the source's than onnxruntime's own quantizers of the
    same model get (per-tensor int8: 0.29; 4-bit block 32: 2.8, the tiny model is sensitive)."""
    bundle = converted(variant, quant)
    reference = ort_logits(weights_only(FIX / variant / "model.onnx"))
    error = np.abs(mlx_logits(bundle) - reference).max()
    bound = {"f16": 0.05, "q8": _ort_quantization_effect("optimum_int8"),
             "q4": 2 * _ort_quantization_effect("optimum_q4")}[quant]
    assert error < bound
    cfg, w = read_config(bundle), read_weights(bundle)
    if quant == "f16":
        assert "quantization" not in cfg and w["model.layers.0.mlp.up_proj.weight"].dtype == np.float16
    else:
        assert cfg["quantization"] == {"group_size": 64, "bits": int(quant[1]), "mode": "affine"}
        assert w["model.layers.0.mlp.up_proj.weight"].dtype == np.uint32


# -- graph structure: names, tying, fused projections, configuration ---------------------------

def test_optimum_names_come_from_node_scopes():
    src = read_onnx(FIX / "optimum-fp32")
    names = [t.name for t in src.tensors()]
    assert not any("onnx::" in n for n in names)
    hf = numpy_helper.to_array(next(t for t in onnx.load(str(FIX / "optimum-fp32" / "model.onnx")).graph.initializer
                                    if t.name == "onnx::MatMul_732"))  # q_proj of layer 0, stored (in, out)
    q = next(t for t in src.tensors() if t.name == "model.layers.0.self_attn.q_proj.weight")
    np.testing.assert_array_equal(q.dense(), hf.T)
    assert src.config["tie_word_embeddings"] is True and "lm_head.weight" not in names


def test_untied_lm_head_is_kept(tmp_path, converted):
    """An lm_head whose bytes differ from the embedding is a separate parameter."""
    folder = _copy(FIX / "optimum-fp32", tmp_path / "untied")
    m = onnx.load(str(folder / "model.onnx"))
    head = next(t for t in m.graph.initializer if t.name == "onnx::MatMul_802")  # /lm_head/MatMul's weight
    w = numpy_helper.to_array(head).copy()
    w[0, 0] += 0.5
    head.CopyFrom(numpy_helper.from_array(w, head.name))
    onnx.save(m, str(folder / "model.onnx"))
    bundle = converted(folder)
    assert read_config(bundle)["tie_word_embeddings"] is False
    np.testing.assert_array_equal(read_weights(bundle)["lm_head.weight"], w.T)
    np.testing.assert_allclose(mlx_logits(bundle), ort_logits(folder / "model.onnx"), atol=FP32_ATOL, rtol=0)


def test_genai_config_is_derived_from_graph():
    """No config.json in genai folders: shapes from genai_config.json, the rest from the graph."""
    hf = json.loads((FIX / "optimum-fp32" / "config.json").read_text())  # written by transformers
    for variant in ("genai-fp32", "genai-int4"):
        cfg = read_onnx(FIX / variant).config
        for key in ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                    "num_hidden_layers", "head_dim", "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings"):
            assert cfg[key] == hf[key], (variant, key)


def test_genai_qkv_is_split_by_head_counts():
    fused = read_onnx(FIX / "genai-fp32")
    ref = {t.name: t.dense() for t in read_onnx(FIX / "optimum-fp32").tensors()}
    for t in fused.tensors():  # same model, two exporters
        np.testing.assert_array_equal(t.dense(), ref[t.name], err_msg=t.name)


def test_tokenizer_and_generation_config(converted):
    bundle = converted("genai-int4")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert json.loads((bundle / f).read_text()) == json.loads((FIX / "genai-int4" / f).read_text())
    gen = json.loads((bundle / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["do_sample"], gen["top_k"]) == (1, 2, False, 50)


def test_qdq8_per_channel_and_per_tensor(tmp_path, converted):
    """DequantizeLinear weights as onnxruntime's static quantizer writes them: int8 symmetric per
    output channel (axis 1 of the (in, out) weight) and, on the second layer, uint8 per tensor."""
    folder = _copy(FIX / "optimum-fp32", tmp_path / "qdq8")
    m = onnx.load(str(folder / "model.onnx"))
    inits, nodes = [], []
    for t in m.graph.initializer:
        if not t.name.startswith("onnx::MatMul_"):
            inits.append(t)
            continue
        w = numpy_helper.to_array(t)
        if int(t.name.split("_")[-1]) < 767:  # layer 0: int8 per channel
            s = (np.abs(w).max(0) / 127).astype(np.float32)
            q, zp = np.clip(np.round(w / s), -127, 127).astype(np.int8), np.zeros(w.shape[1], np.int8)
        else:  # later layers and lm_head: uint8 per tensor with a zero point
            s = np.float32((w.max() - w.min()) / 255)
            zp = np.uint8(np.round(-w.min() / s))
            q = np.clip(np.round(w / s) + zp, 0, 255).astype(np.uint8)
        inits += [numpy_helper.from_array(q, t.name + "_q"), numpy_helper.from_array(np.asarray(s), t.name + "_s"),
                  numpy_helper.from_array(np.asarray(zp), t.name + "_zp")]
        nodes.append(helper.make_node("DequantizeLinear", [t.name + "_q", t.name + "_s", t.name + "_zp"], [t.name],
                                      name=t.name + "_DQ", axis=1))
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    _prepend(m, nodes)
    onnx.save(m, str(folder / "model.onnx"))
    bundle = converted(folder)
    meta = json.loads((bundle / "mlxedge.json").read_text())["tensors"]
    assert meta["model.layers.0.self_attn.q_proj.weight"]["target"] == "affine8g64"
    assert meta["lm_head.weight"]["source"] == "QDQ8"
    np.testing.assert_allclose(mlx_logits(bundle), ort_logits(folder / "model.onnx", **FLOAT_QDQ), atol=FP32_ATOL, rtol=0)


# -- other architectures: the real llama exports, rewritten the way those exporters write them ---

def _insert_after(m: onnx.ModelProto, anchor, new_nodes: list) -> None:
    nodes = list(m.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.name == anchor.name) + 1
    del m.graph.node[:]
    m.graph.node.extend(nodes[:i] + new_nodes + nodes[i:])


def _add_bias(m: onnx.ModelProto, node_name: str, bias: np.ndarray, bias_name: str) -> None:
    """MatMul -> Add(bias) in the Linear's scope, as torch.onnx exports nn.Linear(bias=True)."""
    node = next(n for n in m.graph.node if n.name == node_name)
    out = node.output[0]
    node.output[0] = out + "_nobias"
    m.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), bias_name))
    _insert_after(m, node, [helper.make_node("Add", [bias_name, out + "_nobias"], [out],
                                             name=node.name.rsplit("/", 1)[0] + "/Add")])


def _rms_norm(m: onnx.ModelProto, anchor, scope: str, weight: np.ndarray, eps: float) -> None:
    """Insert RMSNorm over the last axis after `anchor`, as primitive ops named in `scope`
    (how torch.onnx exports Qwen3's q_norm / k_norm)."""
    x = anchor.output[0]
    y = f"{scope}/Mul_1_output_0"
    for n in m.graph.node:
        n.input[:] = [y if i == x else i for i in n.input]
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), f"{scope}/{name}")  # noqa: E731
    m.graph.initializer.extend([c("two", np.float32(2)), c("axes", np.array([-1])), c("eps", np.float32(eps)),
                                c("one", np.float32(1)), numpy_helper.from_array(weight.astype(np.float32), scope[1:].replace("/", ".") + ".weight")])
    t = lambda name: f"{scope}/{name}_output_0"  # noqa: E731
    _insert_after(m, anchor, [
        helper.make_node("Pow", [x, f"{scope}/two"], [t("Pow")], name=f"{scope}/Pow"),
        helper.make_node("ReduceMean", [t("Pow"), f"{scope}/axes"], [t("ReduceMean")], name=f"{scope}/ReduceMean", keepdims=1),
        helper.make_node("Add", [t("ReduceMean"), f"{scope}/eps"], [t("Add")], name=f"{scope}/Add"),
        helper.make_node("Sqrt", [t("Add")], [t("Sqrt")], name=f"{scope}/Sqrt"),
        helper.make_node("Div", [f"{scope}/one", t("Sqrt")], [t("Div")], name=f"{scope}/Div"),
        helper.make_node("Mul", [x, t("Div")], [t("Mul")], name=f"{scope}/Mul"),
        helper.make_node("Mul", [scope[1:].replace("/", ".") + ".weight", t("Mul")], [y], name=f"{scope}/Mul_1"),
    ])


def _assert_backends(bundle: Path, expected: np.ndarray) -> None:
    """mlx-lm, and the NumPy backend where it is installed, both reproduce onnxruntime."""
    np.testing.assert_allclose(mlx_logits(bundle), expected, atol=FP32_ATOL, rtol=0)
    try:
        from mlxedge.backends import numpy as nb
    except ImportError:
        return
    np.testing.assert_allclose(nb.load(bundle).forward(IDS), expected, atol=1e-4, rtol=0)


def _with_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_qwen2_optimum(tmp_path, converted):
    """Qwen2 = Llama + q/k/v biases."""
    folder = _copy(FIX / "optimum-fp32", tmp_path / "qwen2")
    m = onnx.load(str(folder / "model.onnx"))
    rng = np.random.default_rng(1)
    for name in [n.name for n in m.graph.node if n.name.endswith(("q_proj/MatMul", "k_proj/MatMul", "v_proj/MatMul"))]:
        scope = name[1:].rsplit("/", 1)[0].replace("/", ".")
        _add_bias(m, name, rng.normal(0, 1, 64 if "q_proj" in scope else 32), f"{scope}.bias")
    onnx.save(m, str(folder / "model.onnx"))
    _with_config(folder, model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    bundle = converted(folder)
    assert "model.layers.1.self_attn.v_proj.bias" in read_weights(bundle)
    _assert_backends(bundle, ort_logits(folder / "model.onnx"))


def test_qwen2_genai(tmp_path, converted):
    """The genai builder adds the fused qkv bias after the fused MatMul; it is split like the weight."""
    folder = _copy(FIX / "genai-fp32", tmp_path / "qwen2g")
    m = onnx.load(str(folder / "model.onnx"))
    rng = np.random.default_rng(2)
    for name in [n.name for n in m.graph.node if n.name.endswith("qkv_proj/MatMul")]:
        _add_bias(m, name, rng.normal(0, 1, 128), f"model.{name.split('/')[2]}.attn.qkv_proj.Add.bias")
    (folder / "model.onnx.data").unlink()
    onnx.save(m, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    cfg = json.loads((folder / "genai_config.json").read_text())
    cfg["model"]["type"] = "qwen2"
    (folder / "genai_config.json").write_text(json.dumps(cfg))
    bundle = converted(folder)
    assert read_config(bundle)["model_type"] == "qwen2"
    _assert_backends(bundle, ort_logits(folder / "model.onnx"))


def test_qwen3_optimum(tmp_path, converted):
    """Qwen3 = Llama + RMSNorm of each query/key head (q_norm, k_norm) before RoPE."""
    folder = _copy(FIX / "optimum-fp32", tmp_path / "qwen3")
    m = onnx.load(str(folder / "model.onnx"))
    rng = np.random.default_rng(3)
    for layer in (0, 1):
        for proj, norm in (("q_proj", "q_norm"), ("k_proj", "k_norm")):
            src = f"/model/layers.{layer}/self_attn/{proj}/MatMul_output_0"
            reshape = next(n for n in m.graph.node if n.op_type == "Reshape" and n.input[0] == src)  # (B, T, heads, 16)
            _rms_norm(m, reshape, f"/model/layers.{layer}/self_attn/{norm}", rng.uniform(0.5, 1.5, 16), 1e-5)
    onnx.save(m, str(folder / "model.onnx"))
    _with_config(folder, model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    bundle = converted(folder)
    assert "model.layers.1.self_attn.k_norm.weight" in read_weights(bundle)
    _assert_backends(bundle, ort_logits(folder / "model.onnx"))


def test_phi3_optimum_fused_projections(tmp_path, converted):
    """Phi-3 checkpoints hold qkv_proj and gate_up_proj fused, and so does mlx-lm: kept as they are.
    Built from the llama export by fusing each layer's projections into one MatMul + Split."""
    folder = _copy(FIX / "optimum-fp32", tmp_path / "phi3")
    m = onnx.load(str(folder / "model.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    for layer in (0, 1):
        for fused, parts in (("self_attn/qkv_proj", ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj")),
                             ("mlp/gate_up_proj", ("mlp/gate_proj", "mlp/up_proj"))):
            names = [f"/model/layers.{layer}/{p}/MatMul" for p in parts]
            nodes = [next(n for n in m.graph.node if n.name == name) for name in names]
            ws = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
            w_name = f"fused_{layer}_{fused.replace('/', '_')}"
            m.graph.initializer.append(numpy_helper.from_array(np.concatenate(ws, 1), w_name))
            m.graph.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in ws]), w_name + "_split"))
            scope = f"/model/layers.{layer}/{fused}"
            new_nodes = [helper.make_node("MatMul", [nodes[0].input[0], w_name], [scope + "/MatMul_output_0"], name=scope + "/MatMul"),
                         helper.make_node("Split", [scope + "/MatMul_output_0", w_name + "_split"],
                                          [n.output[0] for n in nodes], name=scope + "/Split", axis=-1)]
            _insert_after(m, nodes[-1], new_nodes)
            kept = [n for n in m.graph.node if n.name not in names]
            del m.graph.node[:]
            m.graph.node.extend(kept)
            for n in nodes:
                m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == n.input[1]))
    onnx.save(m, str(folder / "model.onnx"))
    _with_config(folder, model_type="phi3", architectures=["Phi3ForCausalLM"])
    bundle = converted(folder)
    w = read_weights(bundle)
    assert w["model.layers.0.self_attn.qkv_proj.weight"].shape == (128, 64)
    assert w["model.layers.1.mlp.gate_up_proj.weight"].shape == (256, 64)
    _assert_backends(bundle, ort_logits(folder / "model.onnx"))


# -- file layouts ------------------------------------------------------------------------------

def test_transformers_js_layout_and_file_choice(tmp_path, converted):
    """config/tokenizer at the top, models in onnx/: the folder means model.onnx; a file path
    picks that variant and still finds config.json one level up."""
    root = tmp_path / "tjs"
    (root / "onnx").mkdir(parents=True)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIX / "optimum-fp32" / f, root / f)
    shutil.copy(FIX / "optimum-fp32" / "model.onnx", root / "onnx" / "model.onnx")
    shutil.copy(FIX / "optimum-q4" / "model.onnx", root / "onnx" / "model_q4.onnx")
    assert read_onnx(root).info["model_file"] == "model.onnx"
    bundle = converted(root / "onnx" / "model_q4.onnx")
    np.testing.assert_allclose(mlx_logits(bundle), ort_logits(FIX / "optimum-q4" / "model.onnx"), atol=FP32_ATOL, rtol=0)
    (root / "onnx" / "model.onnx").unlink()
    shutil.copy(FIX / "optimum-q4-asym" / "model.onnx", root / "onnx" / "model_q4f16.onnx")
    with pytest.raises(MlxEdgeError, match="several ONNX models"):
        read_onnx(root)


def test_several_external_data_files(tmp_path, converted):
    folder = _copy(FIX / "genai-fp32", tmp_path / "split")
    m = onnx.load(str(folder / "model.onnx"))
    (folder / "model.onnx.data").unlink()
    onnx.save(m, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0)
    assert len(list(folder.iterdir())) > 10
    np.testing.assert_allclose(mlx_logits(converted(folder)), ort_logits(folder / "model.onnx"), atol=FP32_ATOL, rtol=0)


# -- bad input: one-line MlxEdgeError ----------------------------------------------------------

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _error(path) -> str:
    with pytest.raises(MlxEdgeError) as e:
        convert(path, path.parent / "never-written", show_progress=False)
    msg = str(e.value)
    assert "\n" not in msg and not (path.parent / "never-written").exists()
    return msg


def test_not_onnx(tmp_path):
    bad = tmp_path / "junk" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"\x08\x07 this is not a protobuf \xff\xff\xff" * 50)
    assert "not an ONNX model" in _error(bad)


def test_truncated_external_data(tmp_path):
    folder = _copy(FIX / "genai-fp32", tmp_path / "trunc")
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:200_000])
    assert "truncated" in _error(folder)
    data.unlink()
    assert "missing" in _error(folder)


def test_g_idx_refused(tmp_path):
    folder = _copy(FIX / "optimum-q4", tmp_path / "gidx")
    m = onnx.load(str(folder / "model.onnx"))
    node = next(n for n in m.graph.node if n.op_type == "MatMulNBits")
    m.graph.initializer.append(numpy_helper.from_array(np.arange(64, dtype=np.int32) // 32, "g_idx"))
    node.input.extend(["", "g_idx"])
    onnx.save(m, str(folder / "model.onnx"))
    assert "g_idx" in _error(folder)


def test_unknown_architecture(tmp_path):
    folder = _copy(FIX / "genai-int4", tmp_path / "arch")
    cfg = json.loads((folder / "genai_config.json").read_text())
    cfg["model"]["type"] = "whisper"
    (folder / "genai_config.json").write_text(json.dumps(cfg))
    assert "unsupported architecture 'whisper'" in _error(folder)
    folder = _copy(FIX / "optimum-fp32", tmp_path / "arch2")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(cfg))
    assert "unsupported architecture 'gpt_neox'" in _error(folder)


def test_cli_prints_one_line(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"nope")
    r = subprocess.run([sys.executable, "-m", "mlxedge", "convert", str(bad), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "not an ONNX model" in r.stderr


# -- the encodings alone, against onnxruntime's kernels ----------------------------------------

def _run_op(node, inits, inputs: dict, out_type=TensorProto.FLOAT, opset=21) -> np.ndarray:
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                           for k, v in inputs.items()],
                          [helper.make_tensor_value_info(node.output[0], out_type, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def _mx_dequantize(aff) -> np.ndarray:
    w = mx.dequantize(mx.array(aff.packed()), mx.array(aff.scales), mx.array(aff.biases),
                      group_size=aff.group_size, bits=aff.bits)
    return np.array(w.astype(mx.float32))


def _assert_affine_close(aff, expected: np.ndarray) -> None:
    """MLX's q*s + b vs onnxruntime's (q - zp)*s: within 2 ulp of the larger term."""
    s = np.repeat(np.asarray(aff.scales, np.float32), aff.group_size, 1)
    b = np.repeat(np.asarray(aff.biases, np.float32), aff.group_size, 1)
    scale = np.maximum(np.abs(aff.q * s), np.abs(b))
    assert np.all(np.abs(_mx_dequantize(aff) - expected) <= 2 * np.spacing(scale.astype(np.float32)))


# (onnxruntime's CPU MatMulNBits refuses 8-bit weights with float zero points: not a format.)
@pytest.mark.parametrize("bits,zp_kind", [(b, z) for b in (2, 4, 8) for z in ("none", "packed", "float")
                                          if not (b == 8 and z == "float")])
@pytest.mark.parametrize("block,group", [(16, None), (32, 32), (64, 64), (128, 128), (256, 128)])
def test_matmul_nbits_repack(bits, block, group, zp_kind):
    rng = np.random.default_rng(bits * 1000 + block)
    k, n = 512, 24
    k_blocks = k // block
    b = rng.integers(0, 256, (n, k_blocks, block * bits // 8), dtype=np.uint8)
    scales = rng.uniform(-0.1, 0.1, (n, k_blocks)).astype(np.float32)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "S")]
    zp = None
    if zp_kind == "packed":
        zp = rng.integers(0, 256, (n, -(-k_blocks * bits // 8)), dtype=np.uint8)
    elif zp_kind == "float":
        zp = rng.uniform(0, 2 ** bits - 1, (n, k_blocks)).astype(np.float32)
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "Z"))
    node = helper.make_node("MatMulNBits", ["A", "B", "S"] + (["Z"] if zp is not None else []), ["Y"],
                            domain="com.microsoft", K=k, N=n, bits=bits, block_size=block)
    expected = _run_op(node, inits, {"A": np.eye(k, dtype=np.float32)}).T  # (N, K): I @ W
    rb = oq.matmul_nbits(b, scales, zp, k, n, bits, block, "float32")
    np.testing.assert_allclose(rb.dense(), expected, atol=1e-6, rtol=1e-6)
    aff = rb.affine()
    if group is None:
        assert aff is None  # block 16: see test_block16_falls_back_to_8bit_and_f32_is_exact
        return
    assert (aff.bits, aff.group_size, aff.scales.dtype) == (bits, group, np.float32)
    _assert_affine_close(aff, expected)


def test_matmul_nbits_float16_scales():
    """float16 scales stay float16 when -zp*s fits float16 exactly (symmetric: zp = 8), else float32."""
    rng = np.random.default_rng(7)
    k, n = 128, 16
    b = rng.integers(0, 256, (n, 4, 16), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, (n, 4)).astype(np.float16)
    sym = oq.matmul_nbits(b, scales, None, k, n, 4, 32, "float16").affine()
    assert sym.scales.dtype == np.float16
    zp = rng.integers(0, 256, (n, 2), dtype=np.uint8)
    asym = oq.matmul_nbits(b, scales, zp, k, n, 4, 32, "float16").affine()
    assert asym.scales.dtype == np.float32
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "S"), numpy_helper.from_array(zp, "Z")]
    node = helper.make_node("MatMulNBits", ["A", "B", "S", "Z"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=32)
    expected = _run_op(node, inits, {"A": np.eye(k, dtype=np.float16)}, TensorProto.FLOAT16).T.astype(np.float32)
    np.testing.assert_array_equal(_mx_dequantize(asym).astype(np.float16), expected)  # exact before fp16 rounding


@pytest.mark.parametrize("data_type,bits,with_zp", [("uint8", 4, False), ("uint8", 4, True), ("uint8", 8, True),
                                                    ("uint8", 2, True), ("int4", 4, False), ("uint4", 4, True)])
def test_gather_block_quantized(data_type, bits, with_zp):
    rng = np.random.default_rng(bits)
    v, h, block = 40, 128, 64
    scales = rng.uniform(0.01, 0.1, (v, h // block)).astype(np.float32)
    if data_type == "uint8":
        data = rng.integers(0, 256, (v, h * bits // 8), dtype=np.uint8)
        zp = rng.integers(0, 256, (v, -(-(h // block) * bits // 8)), dtype=np.uint8) if with_zp else None
        inits = [numpy_helper.from_array(data, "D")]
        zp_init = numpy_helper.from_array(zp, "Z") if with_zp else None
    else:
        lo, hi = (-8, 8) if data_type == "int4" else (0, 16)
        data = rng.integers(lo, hi, (v, h)).astype(np.int8 if data_type == "int4" else np.uint8)
        zp = rng.integers(lo, hi, (v, h // block)).astype(data.dtype) if with_zp else None
        qt = TensorProto.INT4 if data_type == "int4" else TensorProto.UINT4
        inits = [helper.make_tensor("D", qt, data.shape, data.flatten().tolist())]
        zp_init = helper.make_tensor("Z", qt, zp.shape, zp.flatten().tolist()) if with_zp else None
    inits += [numpy_helper.from_array(scales, "S")] + ([zp_init] if with_zp else [])
    node = helper.make_node("GatherBlockQuantized", ["D", "I", "S"] + (["Z"] if with_zp else []), ["Y"],
                            domain="com.microsoft", bits=bits, block_size=block, gather_axis=0, quantize_axis=1)
    expected = _run_op(node, inits, {"I": np.arange(v, dtype=np.int64)})
    rb = oq.gather_block_quantized(data, data_type, scales, zp, bits, block, "float32")
    np.testing.assert_allclose(rb.dense(), expected, atol=1e-6, rtol=1e-6)
    _assert_affine_close(rb.affine(), expected)


@pytest.mark.parametrize("qtype,axis,block", [("int8", 1, 0), ("uint8", 0, 0), ("int4", 0, 32), ("uint4", 0, 64),
                                              ("int8", None, 0)])
def test_dequantize_linear_weights(qtype, axis, block):
    """A MatMul weight (K, N) behind DequantizeLinear: per output channel, per tensor, blocked along K."""
    rng = np.random.default_rng(3)
    k, n = 128, 32
    bits, lo = {"int8": (8, -128), "uint8": (8, 0), "int4": (4, -8), "uint4": (4, 0)}[qtype]
    x = rng.integers(lo, lo + 2 ** bits, (k, n))
    if axis is None:  # per tensor
        s, zp, attrs = np.float32(0.02), np.asarray(lo + 3), {}
    elif block:
        s = rng.uniform(0.01, 0.1, (k // block, n)).astype(np.float32)
        zp, attrs = rng.integers(lo, lo + 2 ** bits, s.shape), {"axis": axis, "block_size": block}
    else:
        s = rng.uniform(0.01, 0.1, (n if axis == 1 else k,)).astype(np.float32)
        zp, attrs = rng.integers(lo, lo + 2 ** bits, s.shape), {"axis": axis}
    tp = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}[qtype]
    inits = [helper.make_tensor("X", tp, x.shape, x.flatten().tolist()), numpy_helper.from_array(np.asarray(s), "S"),
             helper.make_tensor("Z", tp, np.shape(zp), np.asarray(zp).flatten().tolist())]
    node = helper.make_node("DequantizeLinear", ["X", "S", "Z"], ["Y"], **attrs)
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    expected = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0].T
    np.testing.assert_allclose(oq.dequantize_linear(x, s, zp, attrs.get("axis", 1), block).T, expected, atol=1e-6)
    rb = oq.linear_rows(x, qtype, s, zp, attrs.get("axis", 1), block, transposed=True, scale_dtype="float32")
    if axis == 0 and not block:  # per input channel: no MLX group can follow it
        assert rb is None
        return
    np.testing.assert_allclose(rb.dense(), expected, atol=1e-6)
    _assert_affine_close(rb.affine(), expected)
