"""The seeded fuzz run of tests/fuzz_readers.py (in a subprocess under RLIMIT_AS and a deadline), and
the crashes fuzzing found, kept as regression tests."""

from __future__ import annotations

import json
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import damage
from mlxedge.convert import convert
from mlxedge.errors import MlxEdgeError
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
    assert len(lines) == 5 and all(ln.endswith("0 escapes") for ln in lines), proc.stdout


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
