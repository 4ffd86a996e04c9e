"""The NumPy backend against mlx-lm, the oracle: same bundle, same tokens, same logits.

Tolerance on tiny models: max |Δlogit| <= 1e-5 * (1 + max |logit|). Both sides run float32 on
identical weights (the quantized ones dequantized by MLX's kernels on one side and our NumPy on
the other), so the only differences are summation order in matmuls, norms and softmax: float32
carries ~6e-8 relative error per operation, and 2-4 layers of 64-128-term sums stay near 1e-6
relative (observed: <= 1.5e-5 absolute on logits up to ~35). Any modelling mistake (norm
convention, RoPE pairing or base, window off by one, missing bias) moves logits by > 1e-2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlxedge.errors import MlxEdgeError

ARCHS = ("llama", "qwen2", "qwen3", "gemma3_text", "phi3")
QUANT = {"float": None, "q4": {"bits": 4, "group_size": 32}, "mixed": "MIXED"}
TOKENS = np.random.default_rng(1).integers(0, 320, 20)  # longer than gemma3's window of 8


@pytest.fixture(scope="module")
def mx():
    pytest.importorskip("mlx_lm", reason="mlx-lm (the oracle) is not installed")
    return pytest.importorskip("mlx.core")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, mx):
    """bundles(arch, quant="float", **config) -> a tiny bundle directory, built once per key."""
    import tiny_models

    root, made = tmp_path_factory.mktemp("tiny"), {}

    def make(arch: str, quant: str = "float", dtype: str = "float32", **config) -> Path:
        key = json.dumps([arch, quant, dtype, config], sort_keys=True)
        if key not in made:
            q = tiny_models.MIXED if QUANT[quant] == "MIXED" else QUANT[quant]
            made[key] = tiny_models.tiny_bundle(arch, root / f"m{len(made)}", quantize=q, dtype=dtype,
                                                **config)
        return made[key]

    return make


def mlx_model(mx, path: Path):
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path))
    model.set_dtype(mx.float32)  # float16/bfloat16 bundles: compute in float32 like NumPy does
    return model


def mlx_logits(mx, model, tokens, cache=None) -> np.ndarray:
    out = model(mx.array(np.asarray(tokens, dtype=np.int32))[None], cache=cache)
    return np.array(out[0].astype(mx.float32))


def assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    err, tol = np.abs(out - ref).max(), 1e-5 * (1 + np.abs(ref).max())
    assert err <= tol, f"max |Δlogit| {err:.3g} > {tol:.3g}"


def numpy_chunks(m, tokens, sizes) -> tuple[np.ndarray, object]:
    cache, outs, i = m.make_cache(), [], 0
    for n in sizes:
        outs.append(m.forward(tokens[i:i + n], cache))
        i += n
    assert i == len(tokens) and cache.offset == len(tokens)
    return np.concatenate(outs), cache


# -- tiny models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", QUANT)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_mlx_lm(mx, bundles, arch, quant):
    from mlxedge.backends.numpy import load

    path = bundles(arch, quant)
    assert_close(load(path).forward(TOKENS), mlx_logits(mx, mlx_model(mx, path), TOKENS))


# Prefill, single steps, then a multi-token chunk that crosses gemma3's window, then steps.
CHUNKS = (5, 1, 1, 1, 7, 1, 1, 1, 1, 1)


@pytest.mark.parametrize("quant", ["float", "q4"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cache_matches_full_forward_and_mlx_cache(mx, bundles, arch, quant):
    from mlx_lm.models.cache import make_prompt_cache

    from mlxedge.backends.numpy import load

    path = bundles(arch, quant)
    m = load(path)
    full = m.forward(TOKENS)
    chunked, _ = numpy_chunks(m, TOKENS, CHUNKS)
    assert_close(chunked, full)

    model = mlx_model(mx, path)
    cache, refs, i = make_prompt_cache(model), [], 0
    for n in CHUNKS:
        refs.append(mlx_logits(mx, model, TOKENS[i:i + n], cache))
        i += n
    assert_close(chunked, np.concatenate(refs))


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
LONGROPE = {"type": "longrope", "long_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
            "short_factor": [1.0] * 8}
VARIANTS = {
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-rope-llama3": ("llama", {"rope_scaling": LLAMA3}),
    "llama-rope-linear": ("llama", {"rope_scaling": {"type": "linear", "factor": 4.0}}),
    "llama-rope-yarn": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                   "original_max_position_embeddings": 16}}),
    "llama-rope-dynamic": ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
                                     "max_position_embeddings": 12}),
    "llama-rope-traditional": ("llama", {"rope_traditional": True}),
    "llama-head-dim-32": ("llama", {"head_dim": 32}),
    "llama-sliding-layer": ("llama", {"layer_types": ["sliding_attention", "full_attention"],
                                      "sliding_window": 6}),
    "qwen2-untied": ("qwen2", {"tie_word_embeddings": False}),
    "qwen3-untied": ("qwen3", {"tie_word_embeddings": False}),
    "gemma3-untied": ("gemma3_text", {"tie_word_embeddings": False}),
    "gemma3-global-rope-linear": ("gemma3_text", {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
    "gemma3-all-global": ("gemma3_text", {"sliding_window_pattern": 1}),
    "phi3-partial-rotary": ("phi3", {"partial_rotary_factor": 0.5}),
    "phi3-longrope": ("phi3", {"rope_scaling": LONGROPE, "max_position_embeddings": 8192,
                               "original_max_position_embeddings": 512}),
    "phi3-tied": ("phi3", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_variants_match_mlx_lm(mx, bundles, variant):
    from mlxedge.backends.numpy import load

    arch, config = VARIANTS[variant]
    path = bundles(arch, **config)
    m = load(path)
    ref = mlx_logits(mx, mlx_model(mx, path), TOKENS)
    assert_close(m.forward(TOKENS), ref)
    if variant != "llama-rope-dynamic":  # dynamic NTK's base depends on the chunk, as in mlx-lm
        assert_close(numpy_chunks(m, TOKENS, CHUNKS)[0], ref)


def test_gemma3_sliding_window_is_exercised(mx, bundles):
    """The same weights with a window wider than the sequence give other logits past position 8."""
    from mlxedge.backends.numpy import load

    narrow, wide = bundles("gemma3_text"), bundles("gemma3_text", sliding_window=64)
    ref_narrow = mlx_logits(mx, mlx_model(mx, narrow), TOKENS)
    ref_wide = mlx_logits(mx, mlx_model(mx, wide), TOKENS)
    assert np.abs(ref_narrow[:8] - ref_wide[:8]).max() < 1e-4   # inside the window: the same
    assert np.abs(ref_narrow[8:] - ref_wide[8:]).max() > 1e-1   # beyond it: the window matters
    assert_close(load(wide).forward(TOKENS), ref_wide)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("quant", ["float", "q4"])
def test_half_precision_bundles(mx, bundles, dtype, quant):
    from mlxedge.backends.numpy import load

    path = bundles("qwen2", quant, dtype=dtype)
    assert_close(load(path).forward(TOKENS), mlx_logits(mx, mlx_model(mx, path), TOKENS))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "phi3"])
def test_lean_mode_matches_mlx_lm(mx, bundles, arch):
    from mlxedge.backends.numpy import load

    path = bundles(arch, "mixed")
    m = load(path, lean=True)
    ref = mlx_logits(mx, mlx_model(mx, path), TOKENS)
    assert_close(m.forward(TOKENS), ref)
    assert_close(numpy_chunks(m, TOKENS, CHUNKS)[0], ref)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_cache_trim_reset_copy(mx, bundles, arch):
    """A chat rewinds the cache: trimmed, reset and copied caches continue like fresh ones."""
    from mlxedge.backends.numpy import load

    m, model = load(bundles(arch)), mlx_model(mx, bundles(arch))
    ref = mlx_logits(mx, model, TOKENS)
    other = (TOKENS[::-1] + 7) % 320
    cache = m.make_cache()
    m.forward(np.concatenate([TOKENS[:3], other[:12]]), cache)
    assert cache.trim(12) == 12 and cache.offset == 3  # rewinds past gemma3's window of 8
    assert_close(m.forward(TOKENS[3:10], cache), ref[3:10])
    branch = cache.copy()
    assert_close(m.forward(TOKENS[10:], branch), ref[10:])
    m.forward(other[10:], cache)  # the original cache goes on without the branch
    assert cache.offset == 20 and branch.offset == 20
    longer = np.concatenate([TOKENS, TOKENS[19:]])
    assert_close(m.forward(longer[20:], branch), mlx_logits(mx, model, longer)[20:])
    assert cache.trim(100) == 20 and cache.offset == 0
    cache.reset()
    assert_close(m.forward(TOKENS, cache), ref)


def test_tiny_bundle_loads_in_mlx_lm_with_tokenizer(mx, bundles):
    import mlx_lm

    model, tok = mlx_lm.load(str(bundles("llama", "mixed")))
    ids = tok.encode("héllo <|im_start|>")
    assert ids == [*"h".encode(), *"é".encode(), *b"llo ", 257]
    assert tok.decode(ids) == "héllo <|im_start|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert 258 in tok.eos_token_ids


# -- errors --------------------------------------------------------------------------------------

def test_unsupported_model_type(tmp_path):
    from mlxedge.backends.numpy import load

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(MlxEdgeError, match="mamba"):
        load(tmp_path)


def test_missing_and_unused_tensors_fail_loudly(mx, bundles, tmp_path):
    from mlxedge.backends.numpy import load
    from mlxedge.formats.bundle import BundleWriter, read_weights

    src = bundles("llama")
    weights = dict(read_weights(src))
    config = json.loads((src / "config.json").read_text())
    for name, change in (("missing", lambda w: w.pop("model.norm.weight")),
                         ("extra", lambda w: w.update(extra=np.zeros(3, np.float32)))):
        w = dict(weights)
        change(w)
        with BundleWriter(tmp_path / name) as bw:
            for k, v in w.items():
                bw.add(k, np.asarray(v))
            bw.write_json("config.json", config)
            bw.commit()
        with pytest.raises(MlxEdgeError, match="model.norm.weight" if name == "missing" else "extra"):
            load(tmp_path / name)


def test_bad_tokens(mx, bundles):
    from mlxedge.backends.numpy import load

    m = load(bundles("llama"))
    with pytest.raises(MlxEdgeError):
        m.forward(np.array([320]))
    with pytest.raises(MlxEdgeError):
        m.forward(np.array([], dtype=np.int64))


def test_backend_never_imports_mlx(mx, bundles):
    path = bundles("gemma3_text", "mixed")
    code = ("import sys, numpy as np; from mlxedge.backends.numpy import load; "
            f"load({str(path)!r}).forward(np.arange(5)); "
            "assert not [m for m in sys.modules if m == 'mlx' or m.startswith('mlx.')], 'mlx imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# -- real models ---------------------------------------------------------------------------------

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,")


def _real(request, name):
    pytest.importorskip("mlxedge.formats.gguf", reason="the GGUF reader is not there yet")
    return request.getfixturevalue(f"{name}_bundle")


def _greedy_mlx(mx, model, ids, n):
    from mlx_lm.models.cache import make_prompt_cache

    cache, out, steps = make_prompt_cache(model), [], []
    logits = mlx_logits(mx, model, ids, cache)[-1:]
    for _ in range(n):
        steps.append(logits[0])
        out.append(int(logits[0].argmax()))
        logits = mlx_logits(mx, model, [out[-1]], cache)
    return out, np.stack(steps)


def _greedy_numpy(m, ids, n):
    cache, out, steps = m.make_cache(), [], []
    logits = m.forward(np.array(ids), cache, last_only=True)
    for _ in range(n):
        steps.append(logits[0])
        out.append(int(logits[0].argmax()))
        logits = m.forward(np.array(out[-1:]), cache)
    return out, np.stack(steps)


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    def log_softmax(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.mark.parametrize("name", ["smollm2", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_real_model_greedy_continuations(mx, request, name):
    """Same first 8 greedy tokens as mlx-lm (float32 compute on the same quantized weights)."""
    from mlx_lm.utils import load_tokenizer

    from mlxedge.backends.numpy import load

    path = _real(request, name)
    model, m, tok = mlx_model(mx, path), load(path), load_tokenizer(path)
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        ref_ids, ref_steps = _greedy_mlx(mx, model, ids, 8)
        out_ids, out_steps = _greedy_numpy(m, ids, 8)
        assert out_ids == ref_ids, f"{prompt!r}: {tok.decode(out_ids)!r} != {tok.decode(ref_ids)!r}"
        assert kl(ref_steps, out_steps).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_kl_on_text(request, mlx_eval_logits, name):
    """Mean KL(mlx-lm || numpy) over 256 positions of real text is far below 0.01."""
    from conftest import load_golden

    from mlxedge.backends.numpy import load

    path = _real(request, name)
    ids = load_golden(name)["eval"]["ids"]  # 256 tokens of numpy's license
    ref = mlx_eval_logits(name)
    out = load(path).forward(np.array(ids))
    d = kl(ref, out)
    assert d.mean() < 1e-4 and d.max() < 1e-3, (d.mean(), d.max())
    assert (ref.argmax(-1) == out.argmax(-1)).mean() >= 0.99


@pytest.mark.parametrize("keys", [7, 383, 384, 900])
def test_decoding_attention_on_short_and_long_caches(keys):
    """One query over every cached key, grouped heads (9 on 3 kv), both ways the scores are
    multiplied (q K^T below `layers.LONG` keys, K q^T from it): the float64 formula's answer."""
    from mlxedge.backends.numpy.layers import attention

    rng = np.random.default_rng(keys)
    q = rng.standard_normal((1, 9, 64)).astype(np.float32)             # (T, n_heads, D)
    k = rng.standard_normal((3, keys, 64)).astype(np.float32) * 2      # (n_kv, S, D)
    v = rng.standard_normal((3, keys, 64)).astype(np.float32)
    out = attention(q, k, v, 0.125, keys - 1, 0)                       # (1, 9 * 64)
    s = np.einsum("hd,hsd->hs", q[0].astype(np.float64), np.repeat(k, 3, axis=0)) * 0.125  # (9, S)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("hs,hsd->hd", p / p.sum(-1, keepdims=True), np.repeat(v, 3, axis=0))  # (9, D)
    np.testing.assert_allclose(out.reshape(9, 64), ref, atol=2e-6, rtol=1e-5)
