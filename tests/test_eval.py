"""`mlxedge eval` and `mlxedge sweep` on tiny models.

The oracle for the metrics is a direct computation here: the tokenizers library for the tokens,
mlx-lm for the logits, and float64 NumPy for perplexity, KL divergence and top-1 agreement.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from mlxedge import cli
from mlxedge import eval as ev
from mlxedge import sweep as sw
from mlxedge.errors import MlxEdgeError

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be "
        "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
        "surrounding families, that he is considered the rightful property of some one or other of "
        "their daughters.")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("mlx_lm")
    from mlxedge.convert import convert
    from tiny_models import tiny_bundle

    root = tmp_path_factory.mktemp("eval")
    ref = tiny_bundle("qwen2", root / "ref")
    q4 = convert(ref, root / "q3", quant="mixed_3_6", show_progress=False)
    return ref, q4


def direct(model_dir: Path, ref_dir: Path, text: str, ctx: int) -> dict:
    import mlx.core as mx
    import mlx_lm
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ref_dir / "tokenizer.json"))
    bos = tok.token_to_id(json.loads((ref_dir / "tokenizer_config.json").read_text())["bos_token"])
    ids = tok.encode(text, add_special_tokens=False).ids
    chunks = [[bos] + ids[i: i + ctx - 1] for i in range(0, len(ids), ctx - 1)]

    def logprobs(d):
        model, _ = mlx_lm.load(str(d))
        out = []
        for c in chunks:
            x = np.array(model(mx.array(c)[None])[0].astype(mx.float32), dtype=np.float64)[:-1]
            x -= x.max(-1, keepdims=True)
            out.append(x - np.log(np.exp(x).sum(-1, keepdims=True)))
        return out

    lq, lp = logprobs(model_dir), logprobs(ref_dir)
    targets = [np.array(c[1:]) for c in chunks]
    nll = np.concatenate([-q[np.arange(len(t)), t] for q, t in zip(lq, targets)])
    kl = np.concatenate([(np.exp(p) * (p - q)).sum(-1) for p, q in zip(lp, lq)])
    top1 = np.concatenate([p.argmax(-1) == q.argmax(-1) for p, q in zip(lp, lq)])
    gap = lambda x: np.diff(np.sort(x, -1)[:, -2:], axis=-1)[:, 0]
    ties = np.concatenate([(gap(p) < 1e-3) | (gap(q) < 1e-3) for p, q in zip(lp, lq)])  # may flip
    return {"perplexity": np.exp(nll.mean()), "kl_mean": kl.mean(), "kl_p99": np.percentile(kl, 99),
            "top1": top1.mean(), "tokens": len(nll), "chunks": len(chunks), "ties": int(ties.sum())}


def test_metrics_equal_direct_computation(models):
    ref, q = models
    ctx = 48  # several chunks
    got = ev.evaluate(q, reference=ref, text=TEXT, ctx=ctx)
    want = direct(q, ref, TEXT, ctx)
    assert got["tokens"] == want["tokens"] and got["chunks"] == want["chunks"] > 1
    for key in ("perplexity", "kl_mean", "kl_p99"):
        assert got[key] == pytest.approx(want[key], rel=2e-3), key
    assert got["top1"] == pytest.approx(want["top1"], abs=(want["ties"] + 0.5) / want["tokens"])
    assert got["kl_mean"] > 0 and 0 < got["top1"] < 1
    self_ref = ev.evaluate(ref, reference=ref, text=TEXT, ctx=ctx)
    assert self_ref["kl_mean"] < 1e-9 and self_ref["top1"] == 1.0
    assert self_ref["perplexity"] == pytest.approx(got["reference_perplexity"], rel=1e-6)


def stored_bits(directory: Path) -> int:
    data = (directory / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    return 8 * sum(i["data_offsets"][1] - i["data_offsets"][0] for k, i in header.items() if k != "__metadata__")


def test_size_and_bits_per_weight(models):
    ref, q = models
    float_stats, q_stats = ev.weight_stats(ref), ev.weight_stats(q)
    assert float_stats["bits_per_weight"] == 32.0
    assert q_stats["parameters"] == float_stats["parameters"]
    assert q_stats["bits_per_weight"] == stored_bits(q) / float_stats["parameters"]
    assert q_stats["size_bytes"] == (q / "model.safetensors").stat().st_size


def test_cli_json(models, tmp_path, capsys):
    ref, q = models
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    assert cli.main(["eval", str(q), "--reference", str(ref), "--text", str(text), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = ev.evaluate(q, reference=ref, text=TEXT)
    for key in ("perplexity", "kl_mean", "kl_p99", "top1", "size_bytes", "bits_per_weight", "tokens"):
        assert out[key] == pytest.approx(want[key]), key
    assert out["text"] == str(text)
    assert cli.main(["eval", str(q), "--text", str(text)]) == 0
    table = capsys.readouterr().out
    assert "| model | size (MB) | bits/weight | perplexity |" in table and "KL" not in table.split("\n")[0]


def test_cli_errors(models, tmp_path, capsys):
    ref, q = models
    assert cli.main(["eval", str(q), "--text", str(tmp_path / "nope.txt")]) == 1
    assert "cannot read --text" in capsys.readouterr().err
    from tiny_models import tiny_bundle

    other = tiny_bundle("qwen2", tmp_path / "other", vocab_size=384)
    assert cli.main(["eval", str(q), "--reference", str(other), "--text", str(tmp_path / "t.txt")]) == 1
    capsys.readouterr()
    (tmp_path / "t.txt").write_text(TEXT)
    assert cli.main(["eval", str(q), "--reference", str(other), "--text", str(tmp_path / "t.txt")]) == 1
    assert "vocabulary" in capsys.readouterr().err


def test_sweep_writes_reports(models, tmp_path, monkeypatch):
    ref, _ = models
    out = tmp_path / "sweep"
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 3)
    assert cli.main(["sweep", str(ref), "--recipes", "q4,mixed_2_6", "--target-bpw", "3.5", "-o", str(out),
                     "--text", str(text), "--max-size", "45KB"]) == 0
    for f in ("report.md", "report.json", "pareto.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["variants"]}
    assert set(rows) == {"q4", "mixed_2_6", "bpw3.5"}
    for r in rows.values():  # each row is what `mlxedge eval` says about that variant
        again = ev.evaluate(r["path"], reference=ref, text=TEXT * 3)
        assert r["kl_mean"] == pytest.approx(again["kl_mean"]) and r["size_bytes"] == again["size_bytes"]
    fits = [r for r in rows.values() if r["size_bytes"] <= 45_000]
    assert fits
    assert report["best"] == (min(fits, key=lambda r: r["kl_mean"])["name"] if fits else None)
    front = {n for n, r in rows.items() if r["pareto"]}
    assert front == {n for n, r in rows.items()
                     if not any(o["size_bytes"] <= r["size_bytes"] and o["kl_mean"] < r["kl_mean"]
                                for o in rows.values())}
    md = (out / "report.md").read_text()
    assert all(n in md for n in rows) and "Best within" in md

    # without matplotlib: the reports, and a note instead of the plot
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out2 = tmp_path / "sweep2"
    sw.sweep(ref, out2, recipes=["q4"], text=TEXT)
    assert not (out2 / "pareto.png").exists()
    assert "matplotlib is not installed" in (out2 / "report.md").read_text()


def test_size_parsing_and_front():
    assert sw.parse_size("120MB") == 120_000_000 and sw.parse_size("1.5G") == 1_500_000_000
    assert sw.parse_size("64MiB") == 64 * 1024**2 and sw.parse_size("5000") == 5000
    with pytest.raises(MlxEdgeError):
        sw.parse_size("big")
    assert sw.pareto_front([(10, 1.0), (20, 0.5), (15, 2.0), (30, 0.5), (5, 3.0)]) == [0, 1, 4]
