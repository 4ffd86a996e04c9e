"""The seeded fuzz run of tests/fuzz_readers.py (in a subprocess under RLIMIT_AS and a deadline), and
the crashes fuzzing found, kept as regression tests."""

from __future__ import annotations

import json
import re
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import damage
from mlxedge.convert import convert
from mlxedge.errors import MlxEdgeError
from mlxedge.formats import open_source
from mlxedge.formats.gguf_file import read_header
from mlxedge.inspect import inspect

pytest.importorskip("hypothesis")

HERE = Path(__file__).parent
GGUF = HERE / "fixtures" / "gguf" / "llama-q4_0.gguf"
BUNDLE = HERE / "goldens" / "tiny" / "llama_q4_bf16"
CAP = 3 * 2**30


def test_seeded_fuzz_run_has_no_escapes():
    """Derandomized, 100 examples per target: only one-line MlxEdgeErrors, nothing left behind."""
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_readers.py"), "--examples", "100", "--deadline", "20"],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP)))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.endswith("escapes") or "ESCAPE" in ln]
    assert len(lines) == 6 and all(ln.endswith("0 escapes") for ln in lines), proc.stdout


# --- what fuzzing found ---------------------------------------------------------------------------

def test_safetensors_dtype_that_is_not_a_string(tmp_path):
    """A header entry whose dtype is a JSON list was a TypeError (unhashable) in the reader."""
    bundle = damage.intact_bundle(BUNDLE, tmp_path)

    def edit(header, size):
        header["lm_head.biases"]["dtype"] = []
    damage._rewrite_header(bundle / "model.safetensors", edit)
    with pytest.raises(MlxEdgeError, match=r"lm_head.biases has unsupported dtype \[\]"):
        inspect(bundle)


def test_gguf_string_that_is_not_utf8(tmp_path):
    """Invalid UTF-8 in a metadata value was read (surrogate-escaped) and crashed convert's JSON
    writer with UnicodeEncodeError; it is refused where it is read."""
    g = damage.read_gguf(GGUF)
    pos = g.kv("general.name").pos + 4 + 8  # past the value type and the string length
    src = bytearray(GGUF.read_bytes())
    src[pos] = 0x82  # a continuation byte with no lead byte
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(src))
    with pytest.raises(MlxEdgeError, match="the value of general.name is not valid UTF-8"):
        read_header(bad)
    with pytest.raises(MlxEdgeError):
        convert(bad, tmp_path / "out", show_progress=False)
    assert not list(tmp_path.glob("*out*"))


def test_gguf_key_with_a_newline_gives_a_one_line_message(tmp_path):
    """A metadata key holding a newline went into the error message as is: two lines."""
    g = damage.read_gguf(GGUF)
    g.kvs[1].key = "general.type\ngeneral.name"
    bad = g.write(tmp_path / "bad.gguf")
    with pytest.raises(MlxEdgeError) as e:
        read_header(bad)
    assert "\n" not in str(e.value) and "expected printable text" in str(e.value)


def test_cli_prints_any_error_on_one_line(tmp_path):
    """The last defence: whatever a message holds, the CLI prints one line."""
    bundle = damage.intact_bundle(BUNDLE, tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    config["model_type"] = "llama\nllama"
    (bundle / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "mlxedge", "inspect", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_truncated_header_length_field(tmp_path):
    """Fewer than 8 bytes: the safetensors header length cannot even be read."""
    bundle = damage.intact_bundle(BUNDLE, tmp_path)
    (bundle / "model.safetensors").write_bytes(struct.pack("<I", 7))
    with pytest.raises(MlxEdgeError, match="not a readable safetensors file"):
        inspect(bundle)


def test_safetensors_tensor_name_with_a_newline(tmp_path):
    """Found by the long campaign: a header entry named "\\n" made a two-line message."""
    bundle = damage.intact_bundle(BUNDLE, tmp_path)

    def edit(header, size):
        header.clear()
        header["\n"] = None
    damage._rewrite_header(bundle / "model.safetensors", edit)
    with pytest.raises(MlxEdgeError) as e:
        inspect(bundle)
    assert "\n" not in str(e.value) and "tensor \\n is described by NoneType" in str(e.value)


@pytest.mark.parametrize("part", ["scales", "biases"])
def test_quantized_module_with_misshapen_scales_or_biases(part, tmp_path):
    """Found by the long campaign: 1-D scales were an IndexError in convert, 1-D biases a broadcast
    ValueError in the NumPy backend; both are refused by the reader, before anything is written."""
    bundle = damage.intact_bundle(BUNDLE, tmp_path)

    def edit(header, size):
        entry = header[f"model.layers.0.mlp.up_proj.{part}"]
        n = entry["data_offsets"][1] - entry["data_offsets"][0]
        entry["shape"] = [n // 2]  # the same bytes, one dimension
    damage._rewrite_header(bundle / "model.safetensors", edit)
    with pytest.raises(MlxEdgeError, match=f"up_proj.{part} is .* expected a float tensor of shape"):
        convert(bundle, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_gguf_arrays_nested_past_the_stack(tmp_path):
    """Arrays of arrays 100 000 deep (12 bytes a level) would have been a RecursionError."""
    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, 1))
    head += struct.pack("<Q", 4) + b"deep" + struct.pack("<I", 9)
    head += struct.pack("<IQ", 9, 1) * 100_000
    bad = tmp_path / "deep.gguf"
    bad.write_bytes(bytes(head) + bytes(64))
    with pytest.raises(MlxEdgeError, match="nests arrays more than 8 deep"):
        read_header(bad)


@pytest.mark.parametrize("key,value,message", [
    ("rope_scaling", [None], "rope_scaling is [None], expected an object or null"),
    ("rms_norm_eps", None, "rms_norm_eps is None, expected a number"),
    ("rope_scaling", {"rope_type": "linear", "factor": 0}, "rope_scaling.factor is '0', expected a positive number"),
])
def test_config_values_the_backend_would_trip_on(key, value, message, tmp_path):
    """Found by the long campaign: a list for rope_scaling (AttributeError) and a null rms_norm_eps
    (TypeError) got through to the NumPy backend."""
    bundle = damage.intact_bundle(BUNDLE, tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    config[key] = value
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(MlxEdgeError, match=re.escape(message)):
        inspect(bundle)


def test_tokenizer_that_panics_on_text(tmp_path):
    """Found by the long campaign: a tokenizer.json that loads but whose normalizer makes the Rust
    library panic on any text (a BaseException, with a backtrace on stderr) got through to generate.
    Refused when the bundle is read, on one line."""
    bundle = damage.intact_bundle(BUNDLE, tmp_path)
    tok = json.loads((bundle / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Prepend", "prepend": ""}
    (bundle / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(MlxEdgeError, match="tokenizer.json fails on this text"):
        convert(bundle, tmp_path / "out", show_progress=False)
    proc = subprocess.run([sys.executable, "-m", "mlxedge", "generate", "--model", str(bundle), "-p", "Hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]


# --- ONNX model protos (--only onnx_model) --------------------------------------------------------

ONNX = HERE / "fixtures" / "onnx" / "tiny-llama"


def onnx_copy(tmp_path: Path, variant: str, edit) -> Path:
    """A copy of an ONNX fixture folder whose model proto `edit(graph)` has changed."""
    onnx = pytest.importorskip("onnx")
    folder = tmp_path / variant
    shutil.copytree(ONNX / variant, folder)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    edit(model.graph)
    (folder / "model.onnx").write_bytes(model.SerializeToString())  # as is: onnx.save would check it
    return folder


def init(graph, name: str):
    return next(t for t in graph.initializer if t.name == name)


def resize(graph, name: str, dims: list[int], bits: int) -> None:
    """Give an initializer new dims and exactly the bytes they take (its own bytes, cut or repeated)."""
    t = init(graph, name)
    n = (int(np.prod(dims)) * bits + 7) // 8
    seed = t.raw_data or bytes(range(1, 256))
    t.ClearField("int32_data")
    t.raw_data = (seed * (n // len(seed) + 1))[:n]
    del t.dims[:]
    t.dims.extend(dims)


def refused(folder: Path, tmp_path: Path, message: str) -> None:
    """The reader and convert both refuse `folder` with `message`, on one line, leaving nothing."""
    for run in (lambda: open_source(folder), lambda: convert(folder, tmp_path / "out", show_progress=False)):
        with pytest.raises(MlxEdgeError, match=message) as e:
            run()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_onnx_initializer_dims_that_do_not_match_its_bytes(tmp_path):
    """Found by the campaign: MatMulNBits scales with dims [64, 0] but 512 bytes read fine, then were a
    reshape ValueError during convert. Every constant's bytes are checked against its dims on reading."""
    folder = onnx_copy(tmp_path, "optimum-q4", lambda g: init(g, "onnx::MatMul_732_scales").dims.__setitem__(1, 0))
    refused(folder, tmp_path, re.escape("model.onnx: tensor onnx::MatMul_732_scales float32 [64, 0] holds 512 "
                                        "bytes, expected 0"))


def test_matmul_nbits_blocks_that_do_not_match_their_shape(tmp_path):
    """The escape docs/robustness.md listed: B's bytes agree with its own dims, but not with the
    blocks K, N, bits and block_size imply (a ValueError when convert unpacked them)."""
    folder = onnx_copy(tmp_path, "optimum-q4", lambda g: resize(g, "onnx::MatMul_732_Q4", [64, 2, 8], 8))
    refused(folder, tmp_path, re.escape(
        "model.onnx: MatMulNBits node '/model/layers.0/self_attn/q_proj/MatMul_Q4': B has shape [64, 2, 8] "
        "(1024 values), expected 2048 (N x blocks x bytes a block = 64 x 2 x 16; K 64, N 64, bits 4, block_size 32)"))


@pytest.mark.parametrize("variant,name,dims,bits,message", [
    ("optimum-q4", "onnx::MatMul_732_scales", [64, 1], 32,
     r"MatMulNBits node '/model/layers.0/self_attn/q_proj/MatMul_Q4': scales has shape \[64, 1\] \(64 values\), "
     r"expected 128 \(N x blocks = 64 x 2\)"),
    ("optimum-q4-gather", "model.embed_tokens.weight_scales", [512, 1], 32,
     r"GatherBlockQuantized node '/model/embed_tokens/Gather_Q4': scales has shape \[512, 1\] \(512 values\), "
     r"expected \[512, 2\] \(rows x blocks = 512 x 2; 64 columns, block_size 32\)"),
    ("optimum-q4-gather", "model.embed_tokens.weight_scales", [16, 64], 32,
     r"GatherBlockQuantized node '/model/embed_tokens/Gather_Q4': scales has shape \[16, 64\] \(1024 values\), "
     r"expected \[512, 2\]"),
    ("optimum-qdq4-asym", "onnx::MatMul_732_DQ_scales", [1, 64], 32,
     r"DequantizeLinear node '/model/layers.0/self_attn/q_proj/MatMul_DQ_Q4': x_scale has shape \[1, 64\], "
     r"expected \[2, 64\] \(x \[64, 64\] in blocks of 32 along axis 0\)"),
    ("optimum-qdq4-asym", "onnx::MatMul_732_DQ_zero_points", [1, 64], 4,
     r"DequantizeLinear node '/model/layers.0/self_attn/q_proj/MatMul_DQ_Q4': x_zero_point is uint4 \[1, 64\], "
     r"expected uint4 \[2, 64\]"),
    ("optimum-int8", "onnx::MatMul_732_zero_point", [3], 8,
     r"MatMulInteger node '/model/layers.0/self_attn/q_proj/MatMul_quant': B's zero point is int8 \[3\], "
     r"expected int8, one value or one per column \(64\)"),
])
def test_quantized_op_inputs_checked_against_their_shapes(variant, name, dims, bits, message, tmp_path):
    """Found by the campaign (inputs rewritten with consistent bytes): scales and zero points whose
    shapes the op's decoding could not follow were reshape or broadcast errors during convert (the
    [16, 64] scales hold the right count, 1024, in a layout GatherBlockQuantized does not take);
    each quantized op's inputs are checked against the shapes they imply when the graph is read."""
    folder = onnx_copy(tmp_path, variant, lambda g: resize(g, name, dims, bits))
    refused(folder, tmp_path, "model.onnx: " + message)


@pytest.mark.parametrize("key,value,message", [
    ("num_key_value_heads", None, r"qkv_proj.weight has 128 rows; the head counts say 64 \+ 2 x 64"),
    ("head_size", "16", r"config.json head_dim is '16', expected an integer"),
    ("num_attention_heads", 2.5, r"config.json num_attention_heads is 2.5, expected an integer"),
])
def test_genai_config_values_of_the_wrong_type(key, value, message, tmp_path):
    """Found by the campaign: a null num_key_value_heads was a TypeError in the fused-projection split
    (and a string head_size multiplied strings); the derived config is checked before it sizes anything."""
    folder = tmp_path / "genai-int4"
    shutil.copytree(ONNX / "genai-int4", folder)
    cfg = json.loads((folder / "genai_config.json").read_text())
    cfg["model"]["decoder"][key] = value
    (folder / "genai_config.json").write_text(json.dumps(cfg))
    refused(folder, tmp_path, message)


def test_onnx_external_data_offset_that_is_not_a_number(tmp_path):
    """Found by reading: an external-data offset "abc" was a ValueError from int()."""
    def edit(graph):
        for e in init(graph, "cos_cache").external_data:
            if e.key == "offset":
                e.value = "abc"
    folder = onnx_copy(tmp_path, "genai-int4", edit)
    refused(folder, tmp_path, "tensor cos_cache: external data offset 'abc' / length '16384', expected integers")


def test_onnx_cast_with_no_target_type_in_front_of_a_weight(tmp_path):
    """Found by the campaign (seed 34): a Cast with no `to` attribute between a weight and its MatMul
    passed the reader (a Cast keeps the shape) and was a KeyError when convert loaded the weight."""
    onnx = pytest.importorskip("onnx")

    def edit(graph):
        matmul = next(n for n in graph.node if n.name == "/lm_head/MatMul")
        graph.node.append(onnx.helper.make_node("Cast", [matmul.input[1]], ["cast"], name="/lm_head/Cast"))
        matmul.input[1] = "cast"
    folder = onnx_copy(tmp_path, "optimum-fp32", edit)
    refused(folder, tmp_path, "model.onnx: Cast node '/lm_head/Cast' casts to None, expected one of the element types")


def test_matmul_integer_whose_rescaling_mul_lost_an_input(tmp_path):
    """Found by the campaign (seed 36): the Mul that rescales a MatMulInteger's output with one input
    left was a StopIteration while the reader looked for the weight's scale."""
    def edit(graph):
        out = next(n for n in graph.node if n.name == "/model/layers.0/self_attn/q_proj/MatMul_quant").output[0]
        users = [n for n in graph.node if out in n.input]
        while users[0].op_type == "Cast":
            out = users[0].output[0]
            users = [n for n in graph.node if out in n.input]
        del users[0].input[1 - list(users[0].input).index(out)]
    folder = onnx_copy(tmp_path, "optimum-int8", edit)
    refused(folder, tmp_path, "model.onnx: MatMulInteger node '/model/layers.0/self_attn/q_proj/MatMul_quant': "
                              "cannot find its weight scale")


def test_onnx_layout_op_that_feeds_itself(tmp_path):
    """Found by reading: a Transpose whose input is its own output sent the weight tracer round the
    loop forever; chains of layout ops are bounded."""
    onnx = pytest.importorskip("onnx")

    def edit(graph):
        graph.node.append(onnx.helper.make_node("Transpose", ["loop"], ["loop"], name="/lm_head/loop"))
        matmul = next(n for n in graph.node if n.name == "/lm_head/MatMul")
        matmul.input[1] = "loop"
    folder = onnx_copy(tmp_path, "optimum-fp32", edit)
    refused(folder, tmp_path, "the value 'loop' is computed by a cycle or a chain of over 64 ops")
