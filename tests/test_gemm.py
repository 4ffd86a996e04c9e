"""onnxruntime's kernels in the NumPy backend (backends/numpy/gemm.py).

Oracles: MLX's own quantize/dequantize for the 4-bit product (any group size, scale dtype), and,
for whole models, the NumPy path (itself checked against mlx-lm's goldens in test_tiny_goldens.py,
which runs both paths) on human-written text with the real SmolLM2.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mlxedge import texts
from mlxedge.backends.numpy import gemm, load
from mlxedge.backends.numpy.lean import PackedAffine
from mlxedge.backends.numpy.weights import Linear
from mlxedge.errors import MlxEdgeError
from mlxedge.tokenizer import Tokenizer

from test_tiny_goldens import TINY


def _close(out: np.ndarray, ref: np.ndarray, rel: float = 1e-5) -> None:
    err, tol = np.abs(out - ref).max(), rel * (1 + np.abs(ref).max())
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 17])
def test_affine_product_matches_mlx_dequantize(bits, group_size, scale_dtype, rows):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(group_size + rows + bits)
    w = rng.standard_normal((96, 256)).astype(np.float32) * 0.05  # (out, in)
    q, s, b = mx.quantize(mx.array(w).astype(getattr(mx, scale_dtype)), group_size=group_size, bits=bits)
    # the scales as stored, widened: the product is float32 arithmetic, as in the NumPy path
    ref_w = np.array(mx.dequantize(q, s.astype(mx.float32), b.astype(mx.float32), group_size=group_size, bits=bits))
    as_stored = (lambda a: np.array(a.view(mx.uint16))) if scale_dtype == "bfloat16" else np.array
    p = PackedAffine(np.array(q), as_stored(s), as_stored(b), bits, group_size)
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    y = gemm.AffineGemm([p]).matmul(x)  # (rows, out)
    assert y.shape == (rows, 96) and y.dtype == np.float32
    _close(y, (x.astype(np.float64) @ ref_w.T.astype(np.float64)).astype(np.float32))
    assert np.array_equal(p(), ref_w)  # the oracle reads the same stored bytes we hand over


def test_stacked_parts_are_one_product():
    """q/k/v fused: the parts' rows stacked give the parts' products side by side."""
    rng = np.random.default_rng(1)
    parts, refs = [], []
    for out in (64, 32, 32):
        q = rng.integers(0, 2**32, (out, 128 // 8), dtype=np.uint32)
        s = rng.random((out, 4)).astype(np.float32) * 0.01
        b = rng.standard_normal((out, 4)).astype(np.float32) * 0.05
        parts.append(PackedAffine(q, s, b, 4, 32))
        refs.append(parts[-1]())
    x = rng.standard_normal((5, 128)).astype(np.float32)
    _close(gemm.AffineGemm(parts).matmul(x), x @ np.concatenate(refs).T)


def test_float_products_of_two_rows_or_more_go_to_mlas_when_packed():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((300, 64)).astype(np.float32)
    lin = Linear(w, kernels=gemm.Kernels())
    x1, x6 = rng.standard_normal((1, 64)).astype(np.float32), rng.standard_normal((6, 64)).astype(np.float32)
    assert np.array_equal(lin(x6), (w @ x6.T).T)  # not packed: NumPy's BLAS
    assert lin.pack_bytes() == w.nbytes
    lin.pack()  # as the server does for a batched model
    assert isinstance(lin.packed, gemm.DenseGemm) and lin.pack_bytes() == 0
    assert np.array_equal(lin(x1), (w @ x1.T).T)  # one row: still NumPy's own product, bit for bit
    _close(lin(x6), x6 @ w.T)


def test_wide_levels_pack_from_the_stored_weights():
    """8-bit: one row through the two 4-bit planes, several through SGEMM on W dequantized once."""
    rng = np.random.default_rng(3)
    q = rng.integers(0, 2**32, (64, 128 // 4), dtype=np.uint32)
    s, b = rng.random((64, 4)).astype(np.float32) * 0.01, rng.standard_normal((64, 4)).astype(np.float32) * 0.05
    p = PackedAffine(q, s, b, 8, 32)
    kernels = gemm.Kernels()
    lin = Linear(None, lazy=kernels.affine([p]), kernels=kernels)
    assert lin.pack_bytes() == 64 * 128 * 4
    lin.pack()
    x = rng.standard_normal((5, 128)).astype(np.float32)
    _close(lin(x), x @ p().T)
    _close(lin(x[:1]), x[:1] @ p().T)


def test_server_packs_a_batched_models_float_weights():
    from mlxedge.backends.numpy.engine import NumpyEngine
    from mlxedge.serve.batch import NumpyStepper

    engine = NumpyEngine(TINY / "llama_f32", matmul="onnxruntime")
    assert engine.model.kernels.packs is False and engine.model.lm_head.packed is None
    NumpyStepper(engine)
    assert engine.model.kernels.packs is True
    assert isinstance(engine.model.lm_head.packed, gemm.DenseGemm)
    assert isinstance(engine.model.blocks[0].mlp.down_proj.packed, gemm.DenseGemm)


def _linears(model):
    for block in model.blocks:
        yield block.self_attn.qkv.one or block.self_attn.qkv.parts[0]
        yield block.self_attn.o_proj
        yield block.mlp.gate_up.one
        yield block.mlp.down_proj
    yield model.lm_head


def test_four_bit_bundle_runs_on_mlas_as_stored():
    m = load(TINY / "llama_q4_bf16", matmul="onnxruntime", mode="float32")
    assert m.matmul == "onnxruntime"
    assert all(isinstance(lin.lazy, gemm.AffineGemm) and lin.w is None for lin in _linears(m))
    m = load(TINY / "llama_q4_bf16", matmul="numpy", mode="float32")
    assert m.matmul == "numpy" and all(lin.lazy is None and lin.kernels is None for lin in _linears(m))


def test_mixed_widths_multiply_separately():
    """llama_mixed: 4-bit q/k (groups of 32) and an 8-bit v (groups of 64) are not one product."""
    m = load(TINY / "llama_mixed", matmul="onnxruntime", mode="float32")
    attn = m.blocks[0].self_attn
    assert attn.qkv.one is None
    assert [(lin.lazy.bits, lin.lazy.group_size) for lin in attn.qkv.parts] == [(4, 32), (4, 32), (8, 64)]
    assert m.blocks[0].mlp.down_proj.lazy.bits == 6


def test_float_bundle_keeps_numpy_for_one_row():
    m = load(TINY / "llama_f32", matmul="onnxruntime", mode="float32")
    lin = m.blocks[0].mlp.down_proj
    assert lin.w is not None and lin.kernels is not None and lin.lazy is None


def test_auto_is_numpy_without_onnxruntime(monkeypatch):
    monkeypatch.setattr(gemm, "available", lambda: False)
    assert load(TINY / "llama_q4_bf16", matmul="auto").matmul == "numpy"
    with pytest.raises(MlxEdgeError, match="onnxruntime"):
        load(TINY / "llama_q4_bf16", matmul="onnxruntime")


def test_unknown_matmul_is_one_line(home, tmp_path):
    with pytest.raises(MlxEdgeError, match="unknown matmul 'blas'"):
        load(TINY / "llama_q4_bf16", matmul="blas")
    r = subprocess.run([sys.executable, "-m", "mlxedge", "generate", "--model", str(TINY / "llama_q4_bf16"),
                        "--backend", "numpy", "--prompt", "hi", "--max-tokens", "2"],
                       capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "MLXEDGE_MATMUL": "blas"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "MLXEDGE_MATMUL='blas'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_smollm2_on_human_text_matches_numpy(smollm2_bundle):
    """The real model, on NumPy's license text: the same logits to float32 rounding, the same
    argmax at every position, the same greedy continuation."""
    ids = np.array(Tokenizer(smollm2_bundle).encode(texts.evaluation_text())[:160])
    ref_model = load(smollm2_bundle, matmul="numpy", mode="float32")
    ort_model = load(smollm2_bundle, matmul="onnxruntime", mode="float32")
    ref, out = ref_model.forward(ids), ort_model.forward(ids)  # (T, vocab)
    _close(out, ref, rel=1e-4)
    assert (out.argmax(-1) == ref.argmax(-1)).all()

    def greedy(model, n=24):
        cache, toks = model.make_cache(), []
        logits = model.forward(ids[:64], cache, last_only=True)
        for _ in range(n):
            toks.append(int(logits[-1].argmax()))
            logits = model.forward(toks[-1:], cache)
        return toks

    assert greedy(ort_model) == greedy(ref_model)


def test_auto_keeps_lean_weights_in_numpy():
    """lean is what fits when memory is short: `auto` adds no onnxruntime copies then; asked for, it does."""
    assert load(TINY / "llama_q4_bf16", mode="lean", matmul="auto").matmul == "numpy"
    assert load(TINY / "llama_q4_bf16", mode="lean", matmul="onnxruntime").matmul == "onnxruntime"


def test_onnxruntime_failures_are_one_line(monkeypatch):
    def no_memory(self):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: "
                           "std::bad_alloc")

    monkeypatch.setattr(gemm.AffineGemm, "build", no_memory)
    with pytest.raises(MlxEdgeError, match="out of memory making onnxruntime's kernels") as e:
        load(TINY / "llama_q4_bf16", matmul="onnxruntime")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(gemm.AffineGemm, "build", lambda self: (_ for _ in ()).throw(RuntimeError("bad graph\nmore")))
    with pytest.raises(MlxEdgeError, match="onnxruntime could not make a kernel: bad graph$"):
        load(TINY / "llama_q4_bf16", matmul="onnxruntime")


# -- int8 activations ("onnxruntime-int8": MatMulNBits at accuracy_level 4) ----------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("rows", [1, 17])
def test_int8_activations_err_only_by_their_rounding(bits, group_size, rows):
    """Against MLX's dequantized weights: the error stays within what rounding x to int8 per group
    (scale max|x_g|/127, half a step per element) can cause, sum_g max|x_g|/254 * sum_g |W|. (With
    MatMulNBits' default zero points, 8 and 128, 2-, 3-, 5- and 6-bit levels broke it by up to 2x.)"""
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(7 * group_size + rows + bits)
    w = rng.standard_normal((96, 256)).astype(np.float32) * 0.05  # (out, in)
    q, s, b = mx.quantize(mx.array(w), group_size=group_size, bits=bits)
    ref_w = np.array(mx.dequantize(q, s, b, group_size=group_size, bits=bits)).astype(np.float64)
    p = PackedAffine(np.array(q), np.array(s), np.array(b), bits, group_size)
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    g = gemm.Kernels(int8=True).affine([p])
    y = g.matmul(x)  # (rows, out)
    ref = x.astype(np.float64) @ ref_w.T
    amax = np.abs(x).reshape(rows, -1, group_size).max(-1)            # (rows, groups)
    wabs = np.abs(ref_w).reshape(96, -1, group_size).sum(-1)          # (out, groups)
    bound = amax / 254 @ wabs.T + 1e-5 * (1 + np.abs(ref).max())      # (rows, out)
    err = np.abs(y - ref)
    assert (err <= 1.01 * bound).all(), f"worst error / bound {(err / bound).max():.3f}"
    assert err.max() > 1e-4 * np.abs(ref).max()  # the activations really were rounded (not float32's 1e-6)


def test_int8_rows_do_not_depend_on_the_batch(smollm2_bundle):
    """Each row is quantized and multiplied on its own: a row's product is bit for bit the same
    alone or among 8 others, so the server's batching changes no int8 result."""
    model = load(smollm2_bundle, matmul="onnxruntime-int8", mode="float32")
    assert model.matmul == "onnxruntime-int8"
    for lin in (model.blocks[0].self_attn.qkv.one, model.blocks[5].mlp.down_proj, model.lm_head):
        assert isinstance(lin.lazy, gemm.AffineGemm) and lin.lazy.accuracy_level == 4
        x = np.random.default_rng(3).standard_normal((8, lin.lazy.in_features)).astype(np.float32)
        together = lin(x)  # (8, out)
        assert np.array_equal(together, np.concatenate([lin(x[i:i + 1]) for i in range(8)]))


def test_int8_smollm2_on_human_text_stays_near_float(smollm2_bundle):
    """The real model on NumPy's license text, against the float32 path (itself checked against
    mlx-lm); llama.cpp rounds its activations so too (q8_1 blocks of 32). Measured: mean KL
    0.015 nats, top-1 agreement 95 %; asserted with room: mean KL < 0.03, agreement >= 92 %."""
    from mlxedge.metrics import log_softmax, mean_kl

    ids = np.array(Tokenizer(smollm2_bundle).encode(texts.evaluation_text())[:256])
    ref = load(smollm2_bundle, matmul="numpy", mode="float32").forward(ids)  # (T, vocab)
    out = load(smollm2_bundle, matmul="onnxruntime-int8", mode="float32").forward(ids)
    kl = mean_kl(log_softmax(ref), log_softmax(out))
    agree = float((out.argmax(-1) == ref.argmax(-1)).mean())
    print(f"int8 activations: mean KL {kl:.5f}, top-1 agreement {agree:.3f}")
    assert kl < 0.03 and agree >= 0.92
