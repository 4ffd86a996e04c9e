"""`mlxedge convert` on bad input, through the CLI in a subprocess: one line, no traceback, nothing left.

Every case must exit non-zero with exactly one stderr line starting `mlxedge convert: error:`, print
no traceback, and leave neither OUT nor a `.OUT.*.partial` temp dir beside it.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

FIX = Path(__file__).parent / "fixtures" / "gguf"
SMALL = FIX / "llama-f32.gguf"  # ~390 kB, converts to ~390 kB of safetensors
K256 = FIX / "llama256-kmix.gguf"  # rows of 256 values, room for 128-value Q1_0 blocks


def run_convert(src: Path, out: Path, *extra: str, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxedge", "convert", str(src), "-o", str(out), "--quiet", *extra],
                          check=False, capture_output=True, text=True, timeout=120,
                          preexec_fn=preexec_fn)


def assert_one_line_error(proc: subprocess.CompletedProcess, out: Path, *, out_existed: bool = False) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlxedge convert: error:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert out.exists() == out_existed
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers
    return lines[0]


def copy_gguf(src: Path, dst: Path, arch: str | None = None, replace: dict | None = None) -> None:
    """Rewrite `src` with gguf.GGUFWriter: same metadata (architecture optionally renamed) and
    tensors, except `replace`: name -> (raw uint8 rows, GGML type)."""
    reader = gguf.GGUFReader(src)
    old_arch = reader.fields["general.architecture"].contents()
    arch = arch or old_arch
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        key = field.name.replace(f"{old_arch}.", f"{arch}.", 1)
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        if replace and t.name in replace:
            raw, qtype = replace[t.name]
            writer.add_tensor(t.name, raw, raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_not_a_gguf(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"this is not a model\n" * 100)
    assert_one_line_error(run_convert(src, tmp_path / "out"), tmp_path / "out")


def test_truncated_gguf(tmp_path):
    src = tmp_path / "half.gguf"
    data = SMALL.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_convert(src, tmp_path / "out"), tmp_path / "out")


def test_truncated_header(tmp_path):
    src = tmp_path / "head.gguf"
    src.write_bytes(SMALL.read_bytes()[:100])  # magic and version, then the metadata breaks off
    assert_one_line_error(run_convert(src, tmp_path / "out"), tmp_path / "out")


def test_unknown_architecture(tmp_path):
    src = tmp_path / "bert.gguf"
    copy_gguf(SMALL, src, arch="bert")
    line = assert_one_line_error(run_convert(src, tmp_path / "out"), tmp_path / "out")
    assert "bert" in line


def test_unsupported_tensor_type(tmp_path):
    """Q1_0 (llama.cpp's 1-bit type) has no dequantizer in gguf-py; found mid-conversion."""
    qtype = getattr(gguf.GGMLQuantizationType, "Q1_0", None)
    if qtype is None:
        pytest.skip("this gguf-py has no GGML type it cannot dequantize (Q1_0 unknown)")
    from gguf.quants import dequantize

    with pytest.raises(NotImplementedError):
        dequantize(np.zeros((1, 18), np.uint8), qtype)
    reader = gguf.GGUFReader(K256)
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    rows, cols = (int(d) for d in reversed(t.shape.tolist()))
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(0).integers(0, 256, (rows, cols // block * size), dtype=np.uint8)
    raw[:, 0:size * (cols // block):size] = 0  # keep the float16 step fields finite (zero)
    raw[:, 1:size * (cols // block):size] = 0
    src = tmp_path / "q1.gguf"
    copy_gguf(K256, src, replace={t.name: (raw, qtype)})
    line = assert_one_line_error(run_convert(src, tmp_path / "out"), tmp_path / "out")
    assert "Q1_0" in line


def test_out_exists_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(run_convert(SMALL, out), out, out_existed=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_disk_full(tmp_path):
    """Writes fail with EFBIG past RLIMIT_FSIZE (Python ignores SIGXFSZ), like a full disk."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "out"
    proc = run_convert(SMALL, out, preexec_fn=limit)
    line = assert_one_line_error(proc, out)
    assert "no space" in line.lower() or "too large" in line.lower() or "disk" in line.lower(), line


def test_missing_source(tmp_path):
    assert_one_line_error(run_convert(tmp_path / "nope.gguf", tmp_path / "out"), tmp_path / "out")


def test_force_replaces(tmp_path):
    """The control case: a good file converts, and --force replaces an existing OUT."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    proc = run_convert(SMALL, out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert (out / "config.json").exists() and not (out / "old.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    shutil.rmtree(out)
