"""affine.quantize / pack / unpack / dequantize against MLX itself (mx.quantize, mx.dequantize)."""

import numpy as np
import pytest

from mlxedge.quant import affine

mx = pytest.importorskip("mlx.core")

BITS = (2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)


def awkward(dtype, cols: int = 256, seed: int = 0) -> np.ndarray:
    """Rows that hit every branch of MLX's algorithm, in `dtype`."""
    rng = np.random.default_rng(seed)
    big = 3e4 if dtype == np.float16 else 1e6
    rows = [
        rng.standard_normal(cols) * 0.02,  # typical weights
        np.zeros(cols),  # degenerate range: eps step, zero bias
        np.full(cols, 0.37),  # constant positive
        np.full(cols, -2.5),  # constant negative
        np.full(cols, 1e-9),  # below eps
        np.abs(rng.standard_normal(cols)),  # all positive: 0 outside the range
        -np.abs(rng.standard_normal(cols)) - 1,  # all negative
        rng.integers(-8, 8, cols).astype(float),  # values on a grid: ties in rint
        rng.integers(0, 4, cols) * 0.5 - 0.75,  # more exact ties
        np.where(rng.random(cols) < 0.02, big, rng.standard_normal(cols) * 0.01),  # large outliers
        np.where(rng.random(cols) < 0.02, -big, rng.standard_normal(cols) * 0.01),
        rng.standard_normal(cols) * 1e-4,  # tiny, f16 subnormal scales
        rng.standard_normal(cols) * 100,
    ]
    return np.stack(rows).astype(dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bits", BITS)
def test_quantize_bit_identical_to_mx(dtype, bits):
    name = np.dtype(dtype).name
    w = awkward(dtype)
    for group_size in GROUPS:
        wq, s, b = mx.quantize(mx.array(w), group_size=group_size, bits=bits)
        ours = affine.quantize(w, bits, group_size, scale_dtype=name)
        assert same_bits(ours.packed(), np.array(wq)), (name, bits, group_size)
        assert same_bits(ours.scales, np.array(s)), (name, bits, group_size)
        assert same_bits(ours.biases, np.array(b)), (name, bits, group_size)


@pytest.mark.parametrize("bits", (4, 8))
def test_quantize_bfloat16_bit_patterns(bits):
    # Values exactly representable in bfloat16 (low 16 bits zero), quantized as a bf16 array by MLX.
    w = (awkward(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    for group_size in GROUPS:
        wq, s, b = mx.quantize(mx.array(w).astype(mx.bfloat16), group_size=group_size, bits=bits)
        ours = affine.quantize(w, bits, group_size, scale_dtype="bfloat16")
        assert same_bits(ours.packed(), np.array(wq))
        assert same_bits(ours.scales, np.array(s.view(mx.uint16)))
        assert same_bits(ours.biases, np.array(b.view(mx.uint16)))


@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack_round_trip_on_mx_layout(bits):
    w = awkward(np.float32, cols=512, seed=bits)
    wq, _, _ = mx.quantize(mx.array(w), group_size=64, bits=bits)
    packed = np.array(wq)
    # MLX itself reads the levels back: dequantize with scale 1, bias 0.
    ones = mx.ones((w.shape[0], w.shape[1] // 64), dtype=mx.float32)
    levels = np.array(mx.dequantize(wq, ones, mx.zeros_like(ones), group_size=64, bits=bits))
    q = affine.unpack(packed, bits)
    assert q.dtype == np.uint8 and q.shape == w.shape
    np.testing.assert_array_equal(q.astype(np.float32), levels)
    assert same_bits(affine.pack(q, bits), packed)


@pytest.mark.parametrize("bits", BITS)
def test_dequantize_matches_mx(bits):
    w = awkward(np.float32, seed=10 + bits)
    wq, s, b = mx.quantize(mx.array(w), group_size=32, bits=bits)
    ours = affine.dequantize(np.array(wq), np.array(s), np.array(b), bits, 32)
    np.testing.assert_array_equal(ours, np.array(mx.dequantize(wq, s, b, group_size=32, bits=bits)))


def test_rejects_what_mlx_rejects():
    w = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError):
        affine.quantize(w, 7, 32)
    with pytest.raises(ValueError):
        affine.quantize(w, 4, 16)
    with pytest.raises(ValueError):
        affine.quantize(np.zeros((2, 48), np.float32), 4, 32)
    with pytest.raises(ValueError):
        affine.quantize(w, 4, 32, scale_dtype="int8")


def test_bfloat16_scales_dequantize_like_mlx():
    """bfloat16 scales travel as uint16 bit patterns; dequantizing must read them as floats."""
    mx = pytest.importorskip("mlx.core")
    from mlxedge.dtypes import from_bf16_bits, to_bf16_bits

    w = from_bf16_bits(to_bf16_bits(np.random.default_rng(3).standard_normal((8, 128))))  # bf16 values
    ours = affine.quantize(w, 4, 32, scale_dtype="bfloat16")
    wq, s, b = mx.quantize(mx.array(w, dtype=mx.bfloat16), group_size=32, bits=4)
    ref = np.array(mx.dequantize(wq, s.astype(mx.float32), b.astype(mx.float32), group_size=32, bits=4))
    assert np.array_equal(ours.dequantize(), ref)
