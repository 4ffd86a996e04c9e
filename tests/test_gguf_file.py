"""Our GGUF header parser against gguf-py's GGUFReader: same metadata, tensors and bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlxedge.errors import MlxEdgeError
from mlxedge.formats.gguf_file import read_header

gguf = pytest.importorskip("gguf")
FIXTURES = sorted((Path(__file__).parent / "fixtures" / "gguf").glob("*.gguf"))


def _same_as_gguf_py(path: Path) -> int:
    meta, tensors = read_header(path)
    reader = gguf.GGUFReader(path)
    assert meta == {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    theirs = {t.name: t for t in reader.tensors}
    assert [t.name for t in tensors] == [t.name for t in reader.tensors]
    for t in tensors:
        ref = theirs[t.name]
        assert t.type == ref.tensor_type.name
        assert t.shape == tuple(int(d) for d in reversed(ref.shape.tolist()))
        assert t.n_elements == int(ref.n_elements) and t.n_bytes == int(ref.n_bytes)
        assert np.array_equal(t.raw().reshape(-1), np.asarray(ref.data).view(np.uint8).reshape(-1)), t.name
    return len(tensors)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_headers_equal_gguf_py(path):
    assert _same_as_gguf_py(path) > 0


def test_real_model_header_equals_gguf_py(smollm2_gguf):
    assert _same_as_gguf_py(smollm2_gguf) == 272


def test_bad_files_are_one_line_errors(tmp_path):
    src = FIXTURES[0].read_bytes()
    cases = {"magic": b"GGUX" + src[4:], "header": src[:100], "data": src[: len(src) // 2]}
    for kind, data in cases.items():
        p = tmp_path / f"{kind}.gguf"
        p.write_bytes(data)
        with pytest.raises(MlxEdgeError) as e:
            read_header(p)
        assert "\n" not in str(e.value)
        assert ("truncated" in str(e.value)) == (kind != "magic")
