"""GGML block types -> MLX affine: exact against gguf-py's dequantize and MLX's dequantize.

Blocks are random bytes with random finite float16 step fields, written to a real GGUF file with
gguf.GGUFWriter and read back with gguf.GGUFReader, as the converter sees them.
"""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

from mlxedge.errors import MlxEdgeError  # noqa: E402
from mlxedge.quant import affine, ggml  # noqa: E402

# Byte offsets of the float16 fields (d, dmin, m) of each block, to overwrite with finite values.
F16_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q4_K": (0, 2), "Q5_K": (0, 2), "TQ1_0": (52,), "TQ2_0": (64,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q6_K": (208,), "IQ4_NL": (0,), "IQ4_XS": (0,),
}  # fmt: skip
EXACT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "TQ1_0", "TQ2_0", "IQ4_NL")
INEXACT = ("Q2_K", "Q3_K", "Q6_K", "IQ4_XS")
ROWS, COLS = 6, 512


def random_blocks(ggml_type: str, rng, magnitude: str) -> np.ndarray:
    """(ROWS, bytes per row) random blocks; f16 fields realistic (|x| < 0.1) or anywhere finite."""
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    n = ROWS * COLS // block_size
    raw = rng.integers(0, 256, (n, type_size), dtype=np.uint8)
    for at in F16_FIELDS[ggml_type]:
        if magnitude == "realistic":
            v = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, -1, n)).astype(np.float16)
        else:  # any finite float16, subnormals and 65504 included
            v = rng.integers(0, 1 << 16, n, dtype=np.uint16).view(np.float16)
            v = np.where(np.isfinite(v), v, np.float16(-65504))
            v[:4] = np.array([65504, -65504, 6e-8, 0], dtype=np.float16)
        raw[:, at : at + 2] = v.view(np.uint8).reshape(n, 2)
    return raw.reshape(ROWS, -1)


@pytest.fixture(scope="module")
def gguf_tensors(tmp_path_factory):
    """name -> (raw bytes as GGUFReader gives them, type name, numpy shape) from a real GGUF file."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "blocks.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    written = {}
    for ggml_type in EXACT + INEXACT:
        for magnitude in ("realistic", "any"):
            name = f"{ggml_type}.{magnitude}"
            raw = random_blocks(ggml_type, rng, magnitude)
            writer.add_tensor(name, raw, raw_dtype=GGMLQuantizationType[ggml_type])
            written[name] = raw
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        assert shape == (ROWS, COLS) and np.array_equal(t.data, written[t.name])
        out[t.name] = (t.data, t.tensor_type.name, shape)
    return out


def mx_dequantize(a: affine.Affine) -> np.ndarray | None:
    try:
        import mlx.core as mx
    except ImportError:
        return None
    s, b = mx.array(a.scales.astype(np.float32)), mx.array(a.biases.astype(np.float32))
    return np.array(mx.dequantize(mx.array(a.packed()), s, b, group_size=a.group_size, bits=a.bits))


@pytest.mark.parametrize("magnitude", ["realistic", "any"])
@pytest.mark.parametrize("ggml_type", EXACT)
def test_repack_is_exact(gguf_tensors, ggml_type, magnitude):
    raw, type_name, shape = gguf_tensors[f"{ggml_type}.{magnitude}"]
    assert type_name == ggml_type
    expected = gguf_dequantize(raw, GGMLQuantizationType[ggml_type]).reshape(shape)
    assert np.isfinite(expected).all()

    a = ggml.repack(raw, ggml_type, shape)
    assert a is not None and a.q.shape == shape and a.q.dtype == np.uint8
    assert a.q.max() < (1 << a.bits) and a.scales.shape == (ROWS, COLS // a.group_size)
    # np.array_equal: bit for bit except that -0.0 == 0.0.
    ours = affine.dequantize_unpacked(a.q, a.scales.astype(np.float32), a.biases.astype(np.float32), a.group_size)
    assert np.array_equal(ours, expected)
    from_mx = mx_dequantize(a)
    if from_mx is not None:
        assert np.array_equal(from_mx, expected)

    wide = ggml_type in ("Q4_K", "Q5_K")
    if wide:
        assert a.scales.dtype == np.float32
    elif magnitude == "realistic":  # biases like -128 * d only overflow float16 for huge d
        assert a.scales.dtype == a.biases.dtype == np.float16


def test_repack_forms():
    assert {t: ggml.REPACK[t][1:3] for t in EXACT} == {
        "Q4_0": (4, 32), "Q4_1": (4, 32), "Q5_0": (5, 32), "Q5_1": (5, 32), "Q8_0": (8, 32),
        "Q4_K": (4, 32), "Q5_K": (5, 32), "TQ1_0": (2, 128), "TQ2_0": (2, 128), "IQ4_NL": (8, 32),
    }  # fmt: skip
    for t in EXACT:
        assert ggml.BLOCKS[t] == GGML_QUANT_SIZES[GGMLQuantizationType[t]]


@pytest.mark.parametrize("ggml_type", INEXACT)
def test_inexact_types_fall_back_to_8bit_within_one_step(gguf_tensors, ggml_type):
    """Fallback: dequantize, then 8-bit group-32 affine with float16 scales (recipes.FALLBACK).

    Bound, from MLX's algorithm (affine.quantize): with s0 = (max - min) / 255 per group, the edge
    value x_e (larger magnitude, |x_e| >= 127.5 s0) sits on level |q0| = rint(|x_e| / s0) and the
    step becomes s = x_e / q0. Rounding costs <= |s| / 2 <= 0.502 s0; where |s| < s0 the far end
    clips at level 255, costing range - 255 |s| <= 255 s0 * 0.5 / 128 = (255/256) s0. So float32
    parameters keep every error within (255/256) s0 -- one step, not half a step. Storing s and b in
    float16 adds at most 255 |s - s16| + |b - b16|, where each rounding is <= 2**-11 |v| for normal
    values and <= 2**-25 (half the subnormal spacing) below 2**-14.
    """
    raw, _, shape = gguf_tensors[f"{ggml_type}.realistic"]
    assert ggml.repack(raw, ggml_type, shape) is None
    x = ggml.dequantize(raw, ggml_type, shape)
    a = affine.quantize(x, 8, 32, scale_dtype="float16")
    err = np.abs(a.dequantize() - x).reshape(ROWS, -1, 32).max(-1)  # (rows, groups)

    g = x.reshape(ROWS, -1, 32)
    s0 = (g.max(-1) - g.min(-1)) / 255
    s, b = np.abs(a.scales.astype(np.float32)), np.abs(a.biases.astype(np.float32))
    f16_rounding = 2.0**-11 * (255 * s * (1 + 2.0**-10) + b) + 256 * 2.0**-25
    bound = (255 / 256) * s0 + f16_rounding + 2.0**-20 * (255 * s + b)  # last term: float32 slack
    assert (err <= bound).all()
    assert np.linalg.norm(a.dequantize() - x) < 0.01 * np.linalg.norm(x)


def test_dequantize_float_types(tmp_path):
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    f16 = rng.standard_normal((3, 64)).astype(np.float16)
    bf16 = (rng.standard_normal((3, 64)).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    bf16_bytes = (bf16.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)  # (3, 128)
    path = tmp_path / "floats.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("f32", f32)
    writer.add_tensor("f16", f16)
    writer.add_tensor("bf16", bf16_bytes, raw_dtype=GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = {"f32": f32, "f16": f16.astype(np.float32), "bf16": bf16}
    for t in gguf.GGUFReader(str(path)).tensors:
        out = ggml.dequantize(t.data, t.tensor_type.name, (3, 64))
        assert out.dtype == np.float32 and np.array_equal(out, expected[t.name])
        assert ggml.repack(t.data, t.tensor_type.name, (3, 64)) is None


def test_bad_input_is_one_line_error():
    with pytest.raises(MlxEdgeError):
        ggml.dequantize(np.zeros((1, 18), np.uint8), "Q9_9", (1, 32))
    with pytest.raises(MlxEdgeError):
        ggml.repack(np.zeros((1, 18), np.uint8), "Q4_0", (1, 64))  # one block of bytes, two of values
    with pytest.raises(MlxEdgeError):
        ggml.repack(np.zeros((1, 18), np.uint8), "Q4_0", (1, 48))


def real_model_tensors():
    """A few quantized tensors of each type from the installed real GGUF models."""
    from mlxedge import assets
    from mlxedge.errors import MlxEdgeError

    for locate in (assets.smollm2_gguf, assets.gemma3_gguf):
        try:
            reader = gguf.GGUFReader(str(locate()))
        except MlxEdgeError as e:
            pytest.skip(f"real model not installed: {e}")
        seen: dict[str, int] = {}
        for t in reader.tensors:
            kind = t.tensor_type.name
            if kind in ("F32", "F16") or seen.get(kind, 0) >= 2 or t.n_elements > 4_000_000:
                continue
            seen[kind] = seen.get(kind, 0) + 1
            yield t.name, t.data, kind, tuple(int(d) for d in reversed(t.shape))


@pytest.mark.slow
def test_real_models_repack_exactly():
    checked = set()
    for name, raw, kind, shape in real_model_tensors():
        expected = gguf_dequantize(raw, GGMLQuantizationType[kind]).reshape(shape)
        a = ggml.repack(raw, kind, shape)
        if kind in EXACT:
            assert a is not None, name
            assert np.array_equal(a.dequantize(), expected), name
            checked.add(kind)
        else:
            assert a is None, name
    assert {"Q4_1", "Q8_0", "Q5_0", "Q4_K"} <= checked
