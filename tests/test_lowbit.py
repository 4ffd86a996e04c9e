"""Compact `keep` (the default) against `--exact`: lowbit's criterion for the types MLX cannot express
exactly, float16 K-quant scales, and `--exact` reproducing the bit-exact forms.

The criterion (mlxedge/quant/lowbit.py, docs/gguf.md): RMS(MLX form − gguf-py dequantization)
≤ TAU · σ_src, σ_src estimated from the source sub-blocks' extents. Checked here from the bundle
as written (MLX's own dequantize), against gguf-py, with σ_src recomputed from the true GGML steps
where the block layout is simple (Q2_K, Q6_K: the estimate never exceeds them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from mlxedge.convert import configure_parser, convert  # noqa: E402
from mlxedge.dtypes import from_bf16_bits  # noqa: E402
from mlxedge.formats import open_source  # noqa: E402
from mlxedge.formats.bundle import read_config, read_weights  # noqa: E402
from mlxedge.formats.source import SourceTensor  # noqa: E402
from mlxedge import rowblocks  # noqa: E402
from mlxedge.pipeline import _convert_tensor  # noqa: E402
from mlxedge.quant import affine, ggml, lowbit  # noqa: E402
from mlxedge.quant.recipes import KEEP  # noqa: E402
from mlxedge.quant.search import quantize_search  # noqa: E402

KMIX = Path(__file__).parent / "fixtures" / "gguf" / "llama256-kmix.gguf"
INEXACT = ("Q2_K", "Q3_K", "Q6_K")  # in the fixture; IQ4_NL is repacked exactly (tests/test_ggml.py)
WIDE = ("Q4_K", "Q5_K")


@pytest.fixture(scope="module")
def kmix(tmp_path_factory):
    """(source tensors by name, default bundle, --exact bundle) of the K-quant/IQ fixture."""
    root = tmp_path_factory.mktemp("kmix")
    tensors = {t.name: t for t in open_source(KMIX).tensors()}
    return tensors, convert(KMIX, root / "default", show_progress=False), \
        convert(KMIX, root / "exact", show_progress=False, exact=True)


def _stored(bundle: Path, name: str) -> np.ndarray:
    """float32 values of tensor `name` as the bundle stores it (scales/biases upcast first)."""
    cfg, w = read_config(bundle), read_weights(bundle)
    base = name[: -len(".weight")]
    spec = cfg["quantization"].get(base)
    spec = spec if isinstance(spec, dict) else cfg["quantization"]
    return affine.dequantize(w[name], w[f"{base}.scales"], w[f"{base}.biases"], spec["bits"], spec["group_size"])


def _rms(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def test_chosen_forms_meet_the_criterion_and_are_the_smallest(kmix):
    tensors, default, _ = kmix
    meta = json.loads((default / "mlxedge.json").read_text())["tensors"]
    seen = set()
    for name, t in tensors.items():
        if t.src_type not in INEXACT:
            continue
        seen.add(t.src_type)
        want = t.dense()
        rec = meta[name]
        noise = lowbit.source_noise(want, t.src_type)
        got = _stored(default, name)
        if rec["target"] != "affine8g32":  # the finest form is taken even when it misses
            assert _rms(got, want) <= lowbit.TAU * noise, (name, rec)
            assert rec["err_ratio"] <= lowbit.TAU
        assert rec["err_ratio"] == pytest.approx(_rms(got, want) / noise, rel=1e-3)
        assert rec["source_noise"] == pytest.approx(noise)
        assert rec["rms_err"] == pytest.approx(_rms(got, want), rel=1e-5)
        assert rec["max_abs_err"] == pytest.approx(float(np.abs(got - want).max()), rel=1e-5)
        # every smaller candidate misses the criterion (so the size is the least it can be)
        bits, group = int(rec["target"][6:].split("g")[0]), int(rec["target"].split("g")[1])
        k = lowbit.CANDIDATES.index((bits, group))
        for b, g in lowbit.CANDIDATES[:k]:
            smaller = affine.dequantize_unpacked(*_parts(quantize_search(want, b, g)), g)
            assert _rms(smaller, want) > lowbit.TAU * noise, (name, b, g)
        if t.src_type != "Q6_K":  # 8-bit group 32 comes within ≈ 0.2 σ_src of a 6-bit source, no closer
            assert bits + 32 / group < 9, f"{name}: {rec['target']} is no smaller than the 8-bit fallback"
    assert seen == set(INEXACT)


def _parts(aff):
    return aff.q, aff.scales, aff.biases


def _true_steps(raw: np.ndarray, src_type: str) -> np.ndarray:
    """|d · sc| per 16-value sub-block, read from the block bytes (Q2_K, Q6_K)."""
    if src_type == "Q6_K":  # ql 0-127 | qh 128-191 | scales int8 192-207 | d f16 208-209
        b = raw.reshape(-1, 210)
        d = b[:, 208:210].copy().view(np.float16).astype(np.float32)
        return np.abs(d * b[:, 192:208].view(np.int8).astype(np.float32))
    b = raw.reshape(-1, 84)  # Q2_K: scales 0-15 (low nibble sc, high m) | qs 16-79 | d 80-81 | dmin 82-83
    d = b[:, 80:82].copy().view(np.float16).astype(np.float32)
    return np.abs(d * (b[:, 0:16] & 0x0F).astype(np.float32))


@pytest.mark.parametrize("src_type", ["Q2_K", "Q6_K"])
def test_source_noise_never_exceeds_the_true_step_noise(src_type):
    reader = gguf.GGUFReader(KMIX)
    t = next(t for t in reader.tensors if t.tensor_type.name == src_type)
    shape = tuple(int(s) for s in t.shape[::-1])
    w = ggml.dequantize(t.data, src_type, shape)
    true = float(np.sqrt(np.mean(_true_steps(np.asarray(t.data), src_type) ** 2) / 12))
    est = lowbit.source_noise(w, src_type)
    assert 0.5 * true < est <= true * (1 + 1e-6)


def test_k_quant_scales_float16_by_default_float32_with_exact(kmix):
    tensors, default, exact = kmix
    w16, w32 = read_weights(default), read_weights(exact)
    meta16 = json.loads((default / "mlxedge.json").read_text())["tensors"]
    meta32 = json.loads((exact / "mlxedge.json").read_text())["tensors"]
    seen = set()
    for name, t in tensors.items():
        if t.src_type not in WIDE:
            continue
        seen.add(t.src_type)
        base = name[: -len(".weight")]
        ref = t.affine()  # the exact repack (ggml.repack), float32 scales
        # --exact: today's form, float32 scales bit for bit, dequantizing to exactly gguf-py's values
        assert w32[f"{base}.scales"].dtype == np.float32
        assert np.array_equal(w32[f"{base}.scales"], ref.scales) and np.array_equal(w32[f"{base}.biases"], ref.biases)
        assert np.array_equal(w32[name], ref.packed())
        assert np.array_equal(_stored(exact, name), t.dense()) and meta32[name]["exact"] is True
        # default: the same levels, scales and biases rounded to float16
        assert w16[f"{base}.scales"].dtype == np.float16
        assert np.array_equal(w16[f"{base}.scales"], ref.scales.astype(np.float16))
        assert np.array_equal(w16[f"{base}.biases"], ref.biases.astype(np.float16))
        assert np.array_equal(w16[name], ref.packed())
        rec = meta16[name]
        assert rec["exact"] is False and rec["rms_err"] == pytest.approx(_rms(_stored(default, name), t.dense()), rel=1e-5)
    assert seen == set(WIDE)


def test_exact_keeps_todays_forms(kmix):
    """--exact: every type with an exact form repacked (IQ4_NL too: 8-bit on a step of d, bit for
    bit), 8-bit group 32 round-to-nearest (recipes.FALLBACK) for the types MLX cannot express."""
    tensors, _, exact = kmix
    w = read_weights(exact)
    seen = set()
    for name, t in tensors.items():
        base = name[: -len(".weight")]
        if t.affine is not None and t.affine() is not None:
            assert np.array_equal(_stored(exact, name), t.dense()), name
            seen.add(t.src_type)
        elif t.src_type in INEXACT:
            a = affine.quantize(t.dense(), 8, 32, scale_dtype="float16")
            assert np.array_equal(w[name], a.packed()) and np.array_equal(w[f"{base}.scales"], a.scales), name
    assert "IQ4_NL" in seen


def test_default_is_smaller(kmix):
    _, default, exact = kmix
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))  # noqa: E731
    assert size(default) < size(exact)


def test_wide_embedding_scales_bfloat16_by_default_float32_with_exact():
    """Gemma (float dtype bfloat16): the embedding's scales need bfloat16's range. `--exact` keeps
    its K-quant scales float32; the default rounds them to bfloat16 (BF16 in the bundle), with the
    error that makes recorded, and chooses its lowbit form with bfloat16 scales too."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (4, 64)).astype(np.uint8)
    s = (rng.random((4, 2)) * 1e-3).astype(np.float32)
    b = (-rng.random((4, 2)) * 1e-2).astype(np.float32)
    dense = affine.dequantize_unpacked(q, s, b, 32)
    t = SourceTensor("model.embed_tokens.weight", (4, 64), "Q4_K", lambda: dense,
                     lambda: affine.Affine(q.copy(), s.copy(), b.copy(), 4, 32))

    def scales(arrays):
        return {n: (a, st) for n, a, st in arrays}["model.embed_tokens.scales"]

    arrays, record, _ = _convert_tensor(t, KEEP, "bfloat16", exact=True)
    assert scales(arrays)[0].dtype == np.float32 and record["exact"]
    arrays, record, _ = _convert_tensor(t, KEEP, "bfloat16", exact=False)
    stored, st = scales(arrays)
    assert stored.dtype == np.uint16 and st == "BF16" and not record["exact"]
    got = affine.dequantize_unpacked(q, from_bf16_bits(stored),
                                     from_bf16_bits({n: a for n, a, _ in arrays}["model.embed_tokens.biases"]), 32)
    err = np.abs(got - dense)
    assert 0 < err.max() == pytest.approx(record["max_abs_err"])
    assert err.max() <= 2 ** -8 * np.abs(dense).max()  # bfloat16 keeps 8 significant bits
    arrays, _, _ = _convert_tensor(t, KEEP, "float16", exact=False)
    assert scales(arrays)[0].dtype == np.float16
    x = rng.standard_normal((4, 256)).astype(np.float32)
    t6 = SourceTensor("model.embed_tokens.weight", (4, 256), "Q6_K", lambda: x, lambda: None)
    arrays, record, _ = _convert_tensor(t6, KEEP, "bfloat16", exact=False)
    assert scales(arrays)[1] == "BF16" and "err_ratio" in record


def test_tau_bounds_every_compact_form_and_is_recorded(kmix, tmp_path, monkeypatch):
    """`--tau T`: lowbit's criterion at T instead of TAU, for the tensors converted whole and those
    converted in row blocks alike (rowblocks.lowbit_blocks); each lowbit record says its tau."""
    tensors, default, _ = kmix
    out = convert(KMIX, tmp_path / "tau", show_progress=False, tau=0.03)
    monkeypatch.setattr(rowblocks, "BLOCK_VALUES", 1000)  # every matrix in several row blocks
    blocked = convert(KMIX, tmp_path / "tau-blocks", show_progress=False, tau=0.03)
    for f in out.iterdir():
        assert f.read_bytes() == (blocked / f.name).read_bytes(), f.name
    meta = json.loads((out / "mlxedge.json").read_text())["tensors"]
    base = json.loads((default / "mlxedge.json").read_text())["tensors"]
    lowbits = {n: r for n, r in meta.items() if "err_ratio" in r}
    assert lowbits and all(r["tau"] == 0.03 for r in lowbits.values())
    assert all(base[n]["tau"] == lowbit.TAU for n in lowbits)
    for name, rec in lowbits.items():
        want = tensors[name].dense()
        got = _stored(out, name)
        if rec["target"] != "affine8g32":  # (the finest form is taken whatever its error)
            assert _rms(got, want) <= 0.03 * lowbit.source_noise(want, rec["source"]), name
    assert any(meta[n]["target"] != base[n]["target"] for n in lowbits)  # a tighter bound costs bits


def test_cli_tau_is_checked(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mlxedge", "convert", str(KMIX), "-o", str(tmp_path / "out"),
                        "--tau", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "mlxedge convert: error: --tau must be in (0, 1], not 0.0"
    assert not (tmp_path / "out").exists()


def test_cli_exact_flag():
    import argparse

    p = argparse.ArgumentParser()
    configure_parser(p)
    assert p.parse_args(["m.gguf", "-o", "out", "--exact"]).exact is True
    assert p.parse_args(["m.gguf", "-o", "out"]).exact is False
