"""The NumPy backend against the committed tiny-bundle goldens that the Swift tests also read.

tests/goldens/tiny/<name>/ holds a tiny random bundle (every architecture, float and quantized,
every bit width, rope variants) with mlx-lm's float32 logits and greedy continuation, written by
scripts/make_swift_fixtures.py. These tests need no MLX: the oracle's answers are on disk, so
the backend is checked on machines without mlx too (the last test proves it by blocking it).
Tolerance as in test_numpy_backend.py: max |Δlogit| <= 1e-5 * (1 + max |logit|).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = Path(__file__).parent / "goldens" / "tiny"
BUNDLES = sorted(p.name for p in TINY.iterdir() if (p / "golden.json").exists())


def golden(name: str) -> tuple[dict, np.ndarray]:
    """-> (golden.json, logits (T, vocab)); golden_logits.f32 is row-major little-endian float32,
    as ModelTests.swift reads it."""
    meta = json.loads((TINY / name / "golden.json").read_text())
    logits = np.fromfile(TINY / name / "golden_logits.f32", dtype="<f4")
    return meta, logits.reshape(len(meta["tokens"]), meta["vocab_size"])  # (T, vocab)


def assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    err, tol = np.abs(out - ref).max(), 1e-5 * (1 + np.abs(ref).max())
    assert err <= tol, f"max |Δlogit| {err:.3g} > {tol:.3g}"


def test_all_tiny_bundles_present():
    assert len(BUNDLES) >= 15, "run scripts/make_swift_fixtures.py --only tiny"


# numpy: NumPy's BLAS for every product; onnxruntime: MLAS for 4-bit weights as stored and for
# float32 products of 2+ rows (backends/numpy/gemm.py), held to the same tolerance.
MATMULS = ["numpy", "onnxruntime"]


@pytest.mark.parametrize("matmul", MATMULS)
@pytest.mark.parametrize("name", BUNDLES)
def test_logits_match_golden(name, matmul):
    from mlxedge.backends.numpy import load

    meta, ref = golden(name)
    tokens, pre = np.array(meta["tokens"]), meta["prefill"]
    m = load(TINY / name, matmul=matmul)
    assert_close(m.forward(tokens), ref)  # one batched forward
    cache = m.make_cache()
    steps = [m.forward(tokens[:pre], cache)] + [m.forward(tokens[t:t + 1], cache) for t in range(pre, len(tokens))]
    assert cache.offset == len(tokens)
    assert_close(np.concatenate(steps), ref)  # prefill, then one token at a time


@pytest.mark.parametrize("matmul", MATMULS)
@pytest.mark.parametrize("name", BUNDLES)
def test_greedy_matches_golden(name, matmul):
    """Argmax decoding through the cache, as mlx-lm's generate_step does it."""
    from mlxedge.backends.numpy import load

    meta, _ = golden(name)
    m = load(TINY / name, matmul=matmul)
    cache, out = m.make_cache(), []
    logits = m.forward(np.array(meta["tokens"]), cache)  # (T, vocab)
    while len(out) < len(meta["greedy"]):
        out.append(int(np.argmax(logits[-1])))
        logits = m.forward(np.array(out[-1:]), cache)  # (1, vocab)
    assert out == meta["greedy"]


# Any `import mlx...` / `import mlx_lm...` raises ImportError: a None entry in sys.modules.
BLOCK = "import sys; sys.modules.update(mlx=None, mlx_lm=None); import pytest; sys.exit(pytest.main(sys.argv[1:]))"


def test_goldens_pass_without_mlx():
    """The comparisons above run, and pass, where mlx cannot be imported."""
    root = Path(__file__).parents[1]
    args = [sys.executable, "-c", BLOCK, "-q", "-p", "no:cacheprovider", str(Path(__file__).relative_to(root)),
            "-k", "not without_mlx"]
    r = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    summary = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.fullmatch(rf"{1 + 2 * len(MATMULS) * len(BUNDLES)} passed.*", summary), summary  # nothing skipped
