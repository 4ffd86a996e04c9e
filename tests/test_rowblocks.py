"""Row-block conversion: the same bytes as converting whole tensors, NumPy's float32 mean rebuilt
bit for bit from pieces, and a writer that leaves nothing of an abandoned tensor behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mlxedge import rowblocks
from mlxedge.convert import convert
from mlxedge.formats.bundle import BundleWriter
from mlxedge.rowblocks import PairwiseSum, rms

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "gguf").glob("*.gguf"))


def _cuts(n: int, rng, k: int) -> list[int]:
    return sorted({0, *rng.integers(1, n, size=k).tolist()})


@pytest.mark.parametrize("n", [7, 130, 1000, 4099, 100_003, 1_000_000])
def test_pairwise_sum_is_numpys(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n).astype(np.float32) * 3) ** 2
    for cuts in ([0], _cuts(n, rng, 3), _cuts(n, rng, 40), list(range(0, n, max(1, n // 9)))):
        s = PairwiseSum(n, cuts)
        for a, b in zip(cuts, cuts[1:] + [n]):
            s.add(x[a:b])
        assert s.total() == np.add.reduce(x), cuts
        assert rms(s) == float(np.sqrt(np.mean(x)))  # x plays e * e


def test_pairwise_sum_of_row_blocks_matches_a_2d_mean():
    rng = np.random.default_rng(1)
    err = np.abs(rng.standard_normal((1001, 96)).astype(np.float32))  # (rows, cols)
    step = 37
    s = PairwiseSum(err.size, [a * 96 for a in range(0, 1001, step)])
    for a in range(0, 1001, step):
        e = err[a: a + step].reshape(-1)
        s.add(e * e)
    assert rms(s) == float(np.sqrt(np.mean(err * err)))


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_blocked_conversion_writes_the_same_bytes(path, tmp_path, monkeypatch):
    """Every fixture, recipes keep (exact and compact) and q4: blocks of ~1000 values (so every
    matrix is cut into many, uneven ones) give byte-identical files, mlxedge.json included."""
    cases = [("keep", True), ("keep", False), ("q4", False)]
    whole = {}
    for quant, exact in cases:
        out = tmp_path / f"whole-{quant}-{exact}"
        convert(path, out, quant=quant, exact=exact, show_progress=False)
        whole[quant, exact] = _digest(out)
    monkeypatch.setattr(rowblocks, "BLOCK_VALUES", 1000)
    calls = []
    real = rowblocks.convert
    monkeypatch.setattr(rowblocks, "convert", lambda *a: calls.append(r := real(*a)) or r)
    for quant, exact in cases:
        out = tmp_path / f"blocked-{quant}-{exact}"
        convert(path, out, quant=quant, exact=exact, show_progress=False)
        assert _digest(out) == whole[quant, exact], (quant, exact)
    assert any(c is not None for c in calls)  # some tensors did go in blocks


def test_a_tensor_whose_blocks_differ_is_converted_whole(tmp_path, monkeypatch):
    """Block-dependent choices (here: float16 scales that overflow in some blocks only) fall back
    to the whole tensor, with the same bytes as without blocks."""
    monkeypatch.setattr(rowblocks, "BLOCK_VALUES", 1000)

    class Writer:
        def __init__(self):
            self.added = []

        def add_blocks(self, name, rows, blocks, dtype=None):
            for _ in blocks:
                pass
            self.added.append(name)

    def block(part, errors):
        dtype = np.float16 if part.shape[0] < 10 else np.float32  # the last, short block differs
        return ([("w.weight", np.zeros(part.shape, np.uint8), None), ("w.scales", np.zeros((part.shape[0], 1), dtype),
                                                                     None)], {"source": "Q8_0"}, (8, 32))

    from mlxedge.formats.source import SourceTensor

    def make(rows):
        return SourceTensor("w.weight", (rows, 100), "Q8_0", None, None, 0, lambda a, b: make(b - a))

    assert rowblocks.convert(make(95), Writer(), block) is None
    assert rowblocks.convert(make(100), Writer(), block) is not None


def test_add_blocks_leaves_nothing_of_an_abandoned_tensor(tmp_path):
    def bad():
        yield np.ones((3, 4), np.float32)
        raise RuntimeError("changed its mind")

    with BundleWriter(tmp_path / "b") as w:
        w.add("a", np.arange(6, dtype=np.float32).reshape(2, 3))
        with pytest.raises(RuntimeError):
            w.add_blocks("x", 10, bad())
        with pytest.raises(ValueError):  # a block of another dtype
            w.add_blocks("x", 6, iter([np.ones((3, 4), np.float32), np.ones((3, 4), np.float16)]))
        with pytest.raises(ValueError):  # too few rows
            w.add_blocks("x", 7, iter([np.ones((3, 4), np.float32)]))
        w.add_blocks("c", 5, iter([np.full((2, 4), 2, np.float32), np.full((3, 4), 3, np.float32)]))
        w.commit()
    from mlxedge import safetensors

    got = {k: t.load() for k, t in safetensors.scan(tmp_path / "b" / "model.safetensors").items()}
    assert sorted(got) == ["a", "c"]
    np.testing.assert_array_equal(got["c"], np.array([[2] * 4] * 2 + [[3] * 4] * 3, np.float32))
    header = json.loads((tmp_path / "b" / "model.safetensors").read_bytes()[8:].split(b"}}", 1)[0] + b"}}")
    assert header["c"]["data_offsets"] == [24, 24 + 80]
