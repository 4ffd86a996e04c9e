"""`mlxedge inspect` on a GGUF and on its converted bundle, checked against gguf-py's own counts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")
FIX = Path(__file__).parent / "fixtures" / "gguf"


def _inspect(path) -> dict:
    r = subprocess.run([sys.executable, "-m", "mlxedge", "inspect", str(path), "--json"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", ["mistral-q4_1", "llama256-kmix"])
def test_inspect_gguf_and_bundle(name, tmp_path):
    from mlxedge.convert import convert

    src = FIX / f"{name}.gguf"
    reader = gguf.GGUFReader(src)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    info = _inspect(src)
    assert info["parameters"] == n_params
    assert {k: v["tensors"] for k, v in info["tensor_types"].items()} == dict(types)
    assert info["bits_per_weight"] == pytest.approx(sum(int(t.n_bytes) for t in reader.tensors) * 8 / n_params, 1e-3)
    arch = reader.fields["general.architecture"].contents()
    assert info["architecture"] == arch
    assert info["context_length"] == reader.fields[f"{arch}.context_length"].contents()
    assert info["tokenizer"] == "gpt2"

    out = convert(src, tmp_path / "out", show_progress=False)
    b = _inspect(out)
    # Same parameter count whatever the storage: packed words are counted back to weights.
    assert b["parameters"] == n_params
    assert b["format"] == "mlx" and b["tokenizer"] == "BPE"
    assert b["size_bytes"] == (out / "model.safetensors").stat().st_size


def test_inspect_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("not a model")
    r = subprocess.run([sys.executable, "-m", "mlxedge", "inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_convert_and_inspect_report_the_same_numbers(tmp_path):
    """One definition of size and bits per weight: convert's summary equals inspect's."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "mlxedge", "convert", str(FIX / "llama256-kmix.gguf"), "-o", str(out),
                        "--json"], capture_output=True, text=True, check=True)
    summary, info = json.loads(r.stdout), _inspect(out)
    for key in ("size_bytes", "parameters", "bits_per_weight"):
        assert summary[key] == info[key], key
    assert summary["size_bytes"] == (out / "model.safetensors").stat().st_size < summary["bundle_bytes"]
