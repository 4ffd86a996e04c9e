"""The NumPy backend's weight modes (float32 / float16 / lean) and the memory check that picks one.

Tolerances against float32 mode, as max |Δlogit| / (1 + max |logit|):
- lean: 1e-5, as the goldens. It multiplies exactly the float32 weights (the same scale * q + bias
  values), only summed in another order (per group, then over groups).
- float16: 4e-3. Each weight is rounded to float16 (relative error <= 2^-11 ~ 4.9e-4); on the
  tiny random models the rounding errors of 64-256-term dot products add up to <= 1.3e-3 observed.
Greedy tokens must be identical in every mode.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlxedge import assets, modelcache
from mlxedge.backends.numpy import lean, load, memory
from mlxedge.backends.numpy.engine import NumpyEngine
from mlxedge.errors import MlxEdgeError
from mlxedge.quant import affine
from mlxedge.tokenizer import Tokenizer

TINY = Path(__file__).parent / "goldens" / "tiny"
BUNDLES = sorted(p.name for p in TINY.iterdir() if (p / "golden.json").exists())
TOL = {"lean": 1e-5, "float16": 4e-3}
ROOT = Path(__file__).parents[1]


def run_modes(directory: Path, mode: str, n_greedy: int = 6) -> tuple[np.ndarray, list[int]]:
    """Logits (T, vocab) of the golden tokens (prefill, then one at a time) and a greedy continuation."""
    meta = json.loads((directory / "golden.json").read_text())
    tokens, pre = np.array(meta["tokens"]), meta["prefill"]
    m = load(directory, mode=mode)
    assert m.weight_mode == mode
    cache = m.make_cache()
    steps = [m.forward(tokens[:pre], cache)] + [m.forward(tokens[t:t + 1], cache) for t in range(pre, len(tokens))]
    out = []
    logits = steps[-1]
    while len(out) < n_greedy:
        out.append(int(np.argmax(logits[-1])))
        logits = m.forward(np.array(out[-1:]), cache)
    return np.concatenate(steps), out


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize("mode", ["float16", "lean"])
def test_mode_matches_float32(name, mode):
    ref, ref_greedy = run_modes(TINY / name, "float32")
    out, greedy = run_modes(TINY / name, mode)
    err = np.abs(out - ref).max() / (1 + np.abs(ref).max())
    assert err <= TOL[mode], f"{mode}: max |Δlogit| / (1 + max |logit|) = {err:.3g}"
    assert (out.argmax(-1) == ref.argmax(-1)).all() and greedy == ref_greedy


@pytest.mark.parametrize("name", ["gemma3_q4", "llama_q5", "llama_mixed", "qwen3_bf16"])
def test_lean_blocks_and_both_paths(name, monkeypatch):
    """Tiny blocks (many column and group blocks per matrix) and the GEMM path for every T > 1."""
    ref, ref_greedy = run_modes(TINY / name, "float32")
    monkeypatch.setattr(lean, "CHUNK", 96)
    monkeypatch.setattr(lean, "COLS_MIN", 3)
    for grouped_max in (1, 64):
        monkeypatch.setattr(lean, "GROUPED_MAX", grouped_max)
        out, greedy = run_modes(TINY / name, "lean")
        assert np.abs(out - ref).max() <= TOL["lean"] * (1 + np.abs(ref).max())
        assert greedy == ref_greedy


@pytest.mark.parametrize("bits", affine.BITS)
def test_unpack_columns_is_unpack_transposed(bits):
    q = np.random.default_rng(bits).integers(0, 1 << bits, (6, 256), dtype=np.uint8)
    bt = affine.pack_columns(affine.pack(q, bits), bits)  # (units, nb, 6)
    out = np.empty((256, 6), np.float32)
    assert np.array_equal(affine.unpack_columns_into(bt, bits, out), q.T.astype(np.float32))
    v = affine.values_per_unit(bits)
    part = np.empty((64, 2), np.float32)  # a block: units of values 128..191, columns 3..4
    affine.unpack_columns_into(bt[128 // v:192 // v, :, 3:5], bits, part)
    assert np.array_equal(part, q[3:5, 128:192].T.astype(np.float32))


def test_half_to_float32_is_exact():
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    h = h[np.isfinite(h)]  # every finite float16: zeros, subnormals, normals, both signs
    out = lean.half_to_float32(h, np.empty(h.shape, np.float32))
    assert np.array_equal(out.view(np.uint32), h.astype(np.float32).view(np.uint32))


def test_unknown_mode_and_lean_flag():
    with pytest.raises(MlxEdgeError, match="unknown weight mode"):
        load(TINY / "llama_q4_bf16", mode="int4")
    assert load(TINY / "llama_q4_bf16", lean=True).weight_mode == "lean"


def test_auto_refuses_what_fits_nowhere(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: (1000, "a test"))
    with pytest.raises(MlxEdgeError, match=r"does not fit in any weight mode: needs float32 .* GB, "
                                           r"float16 .* GB, lean .* GB; 0.00 GB available \(a test\)"):
        load(TINY / "gemma3_q4")


# -- the real Gemma 3 270M under an address-space cap ---------------------------------------------

@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """The converted Gemma 3 270M, its files linked into a directory outside the GGUF cache (a
    cache entry that fails to load is removed by mlxedge.load)."""
    try:
        gguf = assets.gemma3_gguf()
    except MlxEdgeError as e:  # its packages are not installed
        pytest.skip(f"real Gemma 3 270M not available: {e}")
    src = modelcache.resolve(gguf, quiet=True)
    d = tmp_path_factory.mktemp("gemma3")
    for f in src.iterdir():
        (d / f.name).symlink_to(f)
    return d


def generate(directory: Path, cap: int | None) -> subprocess.CompletedProcess:
    def limit():
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    cmd = [sys.executable, "-m", "mlxedge", "generate", "--model", str(directory), "--backend", "numpy",
           "--no-chat-template", "-p", "The capital of France is", "-m", "4"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})


def address_space_before_load(directory: Path) -> int:
    """VmSize of a fresh interpreter that has done what `mlxedge generate` does before the NumPy load."""
    code = ("import sys, mlxedge.cli, mlxedge.generate, mlxedge.api\n"
            "from mlxedge.formats.hf import read_hf\nread_hf(sys.argv[1])\n"
            "print([int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize')][0])")
    r = subprocess.run([sys.executable, "-c", code, str(directory)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    return int(r.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_real_gemma_under_caps(gemma):
    needs = memory.estimate(gemma, json.loads((gemma / "config.json").read_text())).needs
    base = address_space_before_load(gemma)
    free = generate(gemma, None)
    assert free.returncode == 0 and "weights: float32" in free.stderr, free.stderr
    # below float32's need, above lean's: auto drops to float16 or lean, same greedy text
    capped = generate(gemma, base + (needs["lean"] + needs["float32"]) // 2)
    assert capped.returncode == 0, capped.stderr
    assert "weights: float16" in capped.stderr or "weights: lean" in capped.stderr, capped.stderr
    assert capped.stdout == free.stdout
    # too small for any mode: exit 1, one line naming the numbers, no traceback
    tiny = generate(gemma, base + needs["lean"] // 4)
    assert tiny.returncode == 1 and tiny.stdout == ""
    lines = tiny.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit in any weight mode" in lines[0] and "RLIMIT_AS" in lines[0], lines


def test_real_gemma_modes_agree(gemma):
    """float16 and lean give float32's greedy tokens on the real model (a few tokens)."""
    ids = np.array(Tokenizer(gemma).encode("The capital of France is"))
    out = {}
    for mode in ("float32", "float16", "lean"):
        m = load(gemma, mode=mode)
        cache, toks = m.make_cache(), []
        logits = m.forward(ids, cache, last_only=True)
        for _ in range(4):
            toks.append(int(logits[-1].argmax()))
            logits = m.forward(np.array(toks[-1:]), cache, last_only=True)
        out[mode] = toks
        del m
    assert out["float16"] == out["float32"] and out["lean"] == out["float32"], out


def test_explicit_mode_that_does_not_fit_is_refused(monkeypatch):
    needs = memory.estimate(TINY / "gemma3_q4", json.loads((TINY / "gemma3_q4" / "config.json").read_text())).needs
    monkeypatch.setattr(memory, "available_memory", lambda: (needs["float32"] - 1, "a test"))
    with pytest.raises(MlxEdgeError, match="does not fit in weight mode float32"):
        load(TINY / "gemma3_q4", mode="float32")


def test_memory_error_while_generating_is_one_line(monkeypatch):
    engine = NumpyEngine(TINY / "llama_q4_bf16")

    def oom(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(engine.model, "forward", oom)
    with pytest.raises(MlxEdgeError, match=r"out of memory running 2 tokens after 0 in the cache \(weights in float32\)"):
        engine.forward([1, 2], engine.make_cache())
