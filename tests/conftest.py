"""Shared fixtures: the two real models (from PyPI packages), converted once per test session."""

from __future__ import annotations

import os

# One BLAS thread: the NumPy backend is memory-bound in decode, and OpenBLAS threads spinning next to
# MLX's own threads on a 2-core machine made it 5-10x slower (measured).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import atexit
import shutil
import tempfile

# The model store (which also caches `.gguf` paths' conversions) of the whole session, never the
# developer's ~/.mlxedge; tests that look at a store set their own MLXEDGE_HOME.
_HOME = tempfile.mkdtemp(prefix="mlxedge-test-home-")
os.environ["MLXEDGE_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

import json
from pathlib import Path

import numpy as np
import pytest

from mlxedge import assets
from mlxedge.errors import MlxEdgeError

GOLDENS = Path(__file__).parent / "goldens"


def _gguf(fn):
    try:
        return fn()
    except MlxEdgeError as e:
        pytest.skip(f"real model not installed: {e}")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A store of the test's own ($MLXEDGE_HOME), for the store's tests."""
    monkeypatch.setenv("MLXEDGE_HOME", str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return _gguf(assets.smollm2_gguf)


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    return _gguf(assets.gemma3_gguf)


# The real-model bundles are `convert --exact`: the tests that use them check the exact repack and
# llama.cpp's outputs; the compact default is tested in tests/test_lowbit.py.
@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory, smollm2_gguf) -> Path:
    from mlxedge.convert import convert

    return convert(smollm2_gguf, tmp_path_factory.mktemp("bundles") / "smollm2", show_progress=False, exact=True)


@pytest.fixture(scope="session")
def gemma3_bundle(tmp_path_factory, gemma3_gguf) -> Path:
    from mlxedge.convert import convert

    return convert(gemma3_gguf, tmp_path_factory.mktemp("bundles") / "gemma3", show_progress=False, exact=True)


def load_golden(name: str) -> dict:
    """llama.cpp's outputs recorded by scripts/record_llamacpp_goldens.py."""
    golden = json.loads((GOLDENS / f"{name}.json").read_text())
    topk = np.load(GOLDENS / golden["eval"]["topk_file"])
    golden["eval"]["topk_ids"], golden["eval"]["topk_logprobs"] = topk["ids"], topk["logprobs"]
    return golden


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per position, from logits."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.fixture(scope="session")
def mlx_eval_logits(request):
    """name -> mlx-lm's float32 logits (T, vocab) for the golden evaluation ids, computed once.

    MLX's CPU build is slow (minutes for Gemma 3 on 256 tokens), so every test comparing against
    mlx-lm on the real text shares one forward pass per model.
    """
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            mx = pytest.importorskip("mlx.core")
            load_model = pytest.importorskip("mlx_lm.utils").load_model
            model, _ = load_model(request.getfixturevalue(f"{name}_bundle"))
            if not mx.metal.is_available():
                model.set_dtype(mx.float32)  # MLX's CPU quantized matmul is ~40x slower in float16
            ids = mx.array(load_golden(name)["eval"]["ids"])[None]
            cache[name] = np.array(model(ids).astype(mx.float32))[0]
        return cache[name]

    return get
