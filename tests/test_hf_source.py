"""Hugging Face checkpoints and converted bundles as conversion sources (mlxedge/formats/hf.py).

Oracles: mlx-lm loading the same checkpoint directly, transformers' logits recorded in the
fixture, and byte equality for lossless re-conversion.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlxedge.convert import convert, open_source
from mlxedge.errors import MlxEdgeError

HF = Path(__file__).parent / "fixtures" / "onnx" / "tiny-llama" / "hf"
REFERENCE = Path(__file__).parent / "fixtures" / "onnx" / "tiny-llama" / "reference_logits.npz"


def mlx_logits(directory: Path, ids: np.ndarray) -> np.ndarray:
    mx = pytest.importorskip("mlx.core")
    mlx_lm = pytest.importorskip("mlx_lm")
    model, _ = mlx_lm.load(str(directory))
    return np.array(model(mx.array(ids)[None]).astype(mx.float32))[0]


def raw_tensors(directory: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (safetensors dtype, bytes), read with the safetensors library's header format."""
    import struct

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        data = f.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8: 8 + n])
        for name, info in header.items():
            if name != "__metadata__":
                a, b = info["data_offsets"]
                out[name] = (info["dtype"], data[8 + n + a: 8 + n + b])
    return out


def test_hf_checkpoint_matches_mlx_lm_and_transformers(tmp_path):
    ref = np.load(REFERENCE)
    src = open_source(HF)
    assert src.format == "hf" and src.config["model_type"] == "llama"
    out = convert(src, tmp_path / "keep", show_progress=False)
    ours = mlx_logits(out, ref["input_ids"])
    direct = mlx_logits(HF, ref["input_ids"])  # mlx-lm reading the checkpoint itself
    np.testing.assert_allclose(ours, direct, atol=1e-5)
    np.testing.assert_allclose(ours, ref["hf_torch"], atol=5e-5)
    # and the NumPy backend runs the converted bundle to the same logits
    from mlxedge.backends import numpy as np_backend

    np.testing.assert_allclose(np_backend.load(out).forward(ref["input_ids"]), direct, atol=1e-4)


def test_bf16_checkpoint_with_stray_tensors(tmp_path):
    """bf16 weights, a rotary inv_freq buffer and a duplicated tied lm_head, as old transformers
    checkpoints have them: dropped as mlx-lm's sanitize drops them; values kept exactly."""
    mx = pytest.importorskip("mlx.core")
    ckpt = tmp_path / "bf16"
    shutil.copytree(HF, ckpt)
    weights = {k: v.astype(mx.bfloat16) for k, v in mx.load(str(HF / "model.safetensors")).items()}
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = mx.arange(8, dtype=mx.float32)
    mx.save_safetensors(str(ckpt / "model.safetensors"), weights)
    cfg = json.loads((HF / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (ckpt / "config.json").write_text(json.dumps(cfg))

    src = open_source(ckpt)
    assert src.float_dtype == "bfloat16"
    names = [t.name for t in src.tensors()]
    assert "lm_head.weight" not in names and not any("inv_freq" in n for n in names)
    assert {t.src_type for t in src.tensors()} == {"BF16"}
    out = convert(src, tmp_path / "out", show_progress=False)
    ids = np.load(REFERENCE)["input_ids"]
    np.testing.assert_allclose(mlx_logits(out, ids), mlx_logits(ckpt, ids), atol=1e-4)
    stored = raw_tensors(out)
    assert stored["model.norm.weight"][0] == "BF16"
    for name, arr in mx.load(str(ckpt / "model.safetensors")).items():
        if name in stored:
            assert bytes(memoryview(np.array(arr.view(mx.uint16)))) == stored[name][1], name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bundle_keep_is_lossless(tmp_path, dtype):
    pytest.importorskip("mlx_lm")
    from tiny_models import MIXED, tiny_bundle

    src = tiny_bundle("llama", tmp_path / "src", quantize=MIXED, dtype=dtype)
    source = open_source(src)
    assert source.format == "bundle"
    kinds = {t.name: t.src_type for t in source.tensors()}
    assert kinds["model.layers.0.self_attn.v_proj.weight"] == "affine8g64"
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == "affine4g32"
    out = convert(source, tmp_path / "keep", show_progress=False)
    assert raw_tensors(out) == raw_tensors(src)
    q_src = json.loads((src / "config.json").read_text())["quantization"]
    q_out = json.loads((out / "config.json").read_text())["quantization"]
    # mlx-lm leaves float modules out; we mark them False: the same model either way
    assert {k: v for k, v in q_out.items() if v is not False} == q_src


def test_bundle_requantize(tmp_path):
    """A 4-bit bundle re-quantized at 8 bits keeps the 4-bit model's outputs (8-bit error is tiny)."""
    pytest.importorskip("mlx_lm")
    from tiny_models import tiny_bundle

    src = tiny_bundle("qwen2", tmp_path / "src", quantize={"bits": 4, "group_size": 32})
    out = convert(src, tmp_path / "q8", quant="q8", show_progress=False)
    ids = np.arange(1, 20)
    a, b = mlx_logits(src, ids), mlx_logits(out, ids)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_bad_directories(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(MlxEdgeError, match="model_type"):
        open_source(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(MlxEdgeError, match="safetensors"):
        open_source(tmp_path)
