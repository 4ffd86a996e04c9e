"""Mixed precision: mlx-lm's and llama.cpp's per-layer rules, the damage estimate, the allocator.

Oracles: mlx-lm's own mixed_quant_predicate, the tensor types llama.cpp chose in the real Gemma 3
Q4_K_M file, mlx-lm running the quantized tiny models, brute force for the allocator, and the
safetensors headers for the bits actually stored.
"""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlxedge.errors import MlxEdgeError
from mlxedge import planner
from mlxedge.quant import alloc, recipes, search


# -- mlx-lm's mixed_* and llama.cpp's Q4_K_M ----------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3_text"])
@pytest.mark.parametrize("name", ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"])
def test_mixed_recipes_match_mlx_lm_predicate(arch, name):
    pytest.importorskip("mlx_lm")
    from mlx_lm.convert import mixed_quant_predicate_builder
    from tiny_models import _COMMON, CONFIGS, model_classes

    config = {**_COMMON, **CONFIGS[arch], "num_hidden_layers": 17}  # 17 // 8 = 2: all rule branches
    model_class, args_class = model_classes(config)
    model = model_class(args_class.from_dict(config))
    theirs = mixed_quant_predicate_builder(name, model, 64)
    ours = recipes.get(name, source=SimpleNamespace(config=config, float_dtype="float16"))
    checked = 0
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized") or not path:
            continue
        want = theirs(path, module)
        got = ours(f"{path}.weight", tuple(module.weight.shape), "F32")
        assert (got.kind, got.bits, got.group_size) == ("affine", want["bits"], want["group_size"]), path
        checked += 1
    assert checked >= 17 * (4 if arch == "phi3" else 7) + 1  # + embedding (+ lm_head)
    assert ours("model.norm.weight", (64,), "F32").kind == "float"


def test_q4_k_m_matches_llama_cpp_choices(gemma3_gguf):
    """In the real Gemma 3 270M Q4_K_M, llama.cpp gave attn_v and ffn_down more bits in exactly the
    favoured layers (Q8_0 / Q6_K there, Q5_0 / Q4_K elsewhere: 640-wide rows force fallbacks)."""
    gguf = pytest.importorskip("gguf")
    from mlxedge.convert import open_source

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(gemma3_gguf).tensors}
    source = open_source(gemma3_gguf)
    recipe = recipes.get("q4_k_m", source=source)
    n = source.config["num_hidden_layers"]
    for i in range(n):
        v = recipe(f"model.layers.{i}.self_attn.v_proj.weight", (256, 640), "Q8_0")
        down = recipe(f"model.layers.{i}.mlp.down_proj.weight", (640, 2048), "Q6_K")
        assert (v.bits == 6) == (types[f"blk.{i}.attn_v.weight"] == "Q8_0"), i
        assert (down.bits == 6) == (types[f"blk.{i}.ffn_down.weight"] == "Q6_K"), i
        assert recipe(f"model.layers.{i}.mlp.up_proj.weight", (2048, 640), "Q4_K").bits == 4
    assert recipe("model.embed_tokens.weight", (262144, 640), "Q8_0").bits == 6  # tied: the output's type


# -- the allocator ------------------------------------------------------------------------------

def random_table(seed: int, n: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    table = {}
    for i in range(n):
        numel = int(rng.choice([64, 128, 256])) * 128
        opts = alloc.OPTIONS
        scale = rng.lognormal(0, 2)
        damages = [scale * 4.0 ** -b * (1 + g / 256) * rng.uniform(0.8, 1.2) for b, g in opts]
        table[f"t{i}.weight"] = {"numel": numel, "options": list(opts), "damages": damages,
                                 "costs": [alloc.option_cost(numel, b, g) for b, g in opts], "importance": None}
    table["norm.weight"] = {"numel": 128, "options": [], "costs": [], "damages": [], "importance": None}
    return table


@pytest.mark.parametrize("target", [2.3, 2.75, 3.0, 3.5, 4.25, 5.0, 8.0])
def test_allocation_respects_budget_and_is_deterministic(target):
    table = random_table(0)
    choice, summary = alloc.plan(table, target)
    assert choice == alloc.plan(random_table(0), target)[0]
    stored = sum(alloc.option_cost(table[n]["numel"], *o) for n, o in choice.items() if o)
    stored += sum(16 * t["numel"] for t in table.values() if not t["options"])
    n_params = sum(t["numel"] for t in table.values())
    assert stored <= target * n_params
    assert stored / n_params == pytest.approx(summary["bpw"])
    assert choice["norm.weight"] is None


def test_more_budget_never_hurts():
    table = random_table(1)
    damages = [alloc.plan(table, t)[1]["predicted_kl"] for t in np.arange(2.3, 9.0, 0.1)]
    assert all(b <= a for a, b in zip(damages, damages[1:]))


def test_greedy_is_optimal_on_convex_unit_steps():
    """With equal-cost steps and convex damage curves the greedy walk is exactly optimal."""
    rng = np.random.default_rng(2)
    costs = [[0, 1, 2, 3] for _ in range(5)]
    damages = []
    for _ in range(5):
        drops = np.sort(rng.uniform(0.1, 1.0, 3))[::-1]  # shrinking gains: convex
        damages.append(list(np.concatenate([[0], -np.cumsum(drops)]) + 10))
    for budget in range(0, 16):
        choice = alloc.allocate(costs, damages, budget)
        best = min(sum(d[i] for d, i in zip(damages, c))
                   for c in itertools.product(range(4), repeat=5) if sum(c) <= budget)
        assert sum(d[i] for d, i in zip(damages, choice)) == pytest.approx(best)
        assert sum(choice) <= budget


def test_budget_too_small():
    with pytest.raises(MlxEdgeError, match="below the smallest"):
        alloc.plan(random_table(0), 2.0)


def test_hull_drops_dominated_options():
    assert alloc.hull([10, 20, 30, 40], [5.0, 6.0, 1.0, 0.5]) == [0, 2, 3]
    assert alloc.hull([10, 20, 30], [9.0, 5.0, 0.0]) == [0, 2]  # 20 lies above the 10 -> 30 line


# -- the weighted search quantizer ---------------------------------------------------------------

@pytest.mark.parametrize("bits,group,dtype", [(2, 32, "float16"), (3, 64, "bfloat16"), (4, 128, "float16")])
def test_search_never_worse_than_mlx_and_stays_mlx_format(bits, group, dtype):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((48, 256)) * rng.lognormal(0, 1, 256)).astype(np.float32)
    imp = rng.lognormal(0, 2, 256).astype(np.float32)
    aff = search.quantize_search(w, bits, group, imp, dtype)
    # MLX's own dequantize of our packed form gives what we think we stored
    mx_dtype = getattr(mx, dtype)
    scales = mx.array(aff.scales.view(np.uint16) if dtype == "bfloat16" else aff.scales)
    biases = mx.array(aff.biases.view(np.uint16) if dtype == "bfloat16" else aff.biases)
    if dtype == "bfloat16":
        scales, biases = scales.view(mx_dtype), biases.view(mx_dtype)
    # (in float32: MLX computes in the scales' dtype, which would round differently)
    theirs = np.array(mx.dequantize(mx.array(aff.packed()), scales.astype(mx.float32),
                                    biases.astype(mx.float32), group, bits))
    np.testing.assert_allclose(theirs, search.dequantize(aff), rtol=1e-6, atol=1e-6)
    # per group the weighted error is at most MLX's round-to-nearest
    rtn = search.dequantized_rtn(w, bits, group, None, dtype)
    err = lambda x: ((x - w) ** 2 * imp).reshape(48, -1, group).sum(-1)
    ours = search.dequantize(aff)
    assert np.all(err(ours) <= err(rtn) * (1 + 1e-6) + 1e-12)
    assert err(ours).sum() < 0.9 * err(rtn).sum()


# -- on a tiny model: damage estimate vs measured output error, budgets, reproducibility ---------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    pytest.importorskip("mlx_lm")
    from tiny_models import tiny_bundle

    return tiny_bundle("llama", tmp_path_factory.mktemp("mixed") / "tiny")


CALIB = {"tokens": 256, "ctx": 128, "positions": 32}


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_damage_ranks_like_measured_kl(tiny):
    """Predicted damage of (tensor, option) pairs against the KL mlx-lm measures on held-out text
    with only that tensor quantized (the same quantizer)."""
    import mlx.core as mx
    import mlx_lm

    from mlxedge import texts
    from mlxedge.convert import open_source

    source = open_source(tiny)
    table = planner.analyze(source, show_progress=False, **CALIB).table
    model, tok = mlx_lm.load(str(tiny))
    ids = mx.array(tok.encode(texts.evaluation_text())[:200])[None]
    logp = lambda: np.array(mx.log(mx.softmax(model(ids)[0].astype(mx.float32), axis=-1)), dtype=np.float64)
    base = logp()
    original = dict(__import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(model.parameters()))
    predicted, measured = [], []
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight",
             "model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight", "lm_head.weight",
             "model.embed_tokens.weight"]
    for name in names:
        entry = table[name]
        w = np.array(original[name])
        for opt in [(2, 64), (3, 64), (4, 64), (4, 32), (6, 64)]:
            wq = search.dequantized_search(w, *opt, entry["importance"], "float16")
            model.load_weights([(name, mx.array(wq))], strict=False)
            lq = logp()
            measured.append(float(np.mean(np.sum(np.exp(base) * (base - lq), -1))))
            predicted.append(entry["damages"][entry["options"].index(opt)])
        model.load_weights([(name, original[name])], strict=False)
    assert spearman(predicted, measured) > 0.9
    # and the scale is right within a small factor, not only the order
    ratio = np.array(measured) / np.array(predicted)
    assert 0.2 < np.median(ratio) < 5


def count_stored(directory: Path) -> tuple[int, int]:
    """(stored bits, parameters) from the safetensors header and config.json, independently."""
    data = (directory / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    quant = json.loads((directory / "config.json").read_text()).get("quantization", {})
    bits = params = 0
    size = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count = int(np.prod(info["shape"]))
        bits += count * size[info["dtype"]] * 8
        module = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")):
            continue
        if f"{module}.scales" in header:
            spec = quant.get(module) if isinstance(quant.get(module), dict) else quant
            count = count * 32 // spec["bits"]
        params += count
    return bits, params


@pytest.mark.parametrize("target", [2.75, 3.5, 4.5])
def test_convert_target_bpw_budget(tiny, tmp_path, target):
    from mlxedge.convert import convert

    out = convert(tiny, tmp_path / "out", quant=f"bpw{target}", show_progress=False, **CALIB)
    bits, params = count_stored(out)
    assert bits <= target * params
    assert bits / params > target - 0.25  # the budget is used, not just respected
    meta = json.loads((out / "mlxedge.json").read_text())
    assert meta["recipe"] == f"bpw{target}" and meta["recipe_info"]["bpw"] <= target
    # mlx-lm loads and runs what we wrote
    import mlx.core as mx
    import mlx_lm

    model, _ = mlx_lm.load(str(out))
    assert np.isfinite(np.array(model(mx.array([[1, 2, 3]])))).all()


def test_cli_target_bpw_seed_picks_windows_and_reproduces(tmp_path):
    """Same seed: byte-identical bundle. Another seed: other calibration windows, so another
    measured KL and other weights. On a committed tiny bundle, so no MLX is needed."""
    from mlxedge import cli

    src = Path(__file__).parent / "goldens" / "tiny" / "llama_f32"
    calib = tmp_path / "calib.txt"
    # Numbered lines, so that every window differs in content (a periodic text would not).
    calib.write_text("".join(f"Line {i}: text that the user supplies, {i * i} squared.\n" for i in range(300)))
    runs = []
    for k, seed in enumerate((7, 7, 8)):
        out = tmp_path / f"out{k}"
        assert cli.main(["convert", str(src), "-o", str(out), "--target-bpw", "3.25", "--calib", str(calib),
                         "--seed", str(seed), "--quiet"]) == 0
        runs.append(((out / "model.safetensors").read_bytes(), json.loads((out / "mlxedge.json").read_text())))
    (a, meta_a), (b, meta_b), (c, meta_c) = runs
    assert a == b and meta_a == meta_b
    info_a, info_c = meta_a["recipe_info"], meta_c["recipe_info"]
    assert (info_a["calibration"]["seed"], info_c["calibration"]["seed"]) == (7, 8)
    assert info_a["calibration_kl"] != info_c["calibration_kl"]  # measured on another probe window
    assert a != c  # other input moments -> other importances -> other quantized weights


def test_cli_errors(tiny, tmp_path, capsys):
    from mlxedge import cli

    assert cli.main(["convert", str(tiny), "-o", str(tmp_path / "a"), "--target-bpw", "1", "--quiet"]) == 1
    assert "below the smallest" in capsys.readouterr().err
    assert cli.main(["convert", str(tiny), "-o", str(tmp_path / "b"), "--target-bpw", "3",
                     "--calib", str(tmp_path / "missing.txt"), "--quiet"]) == 1
    assert "calibration text" in capsys.readouterr().err


def test_calibration_kl_is_what_mlx_lm_sees(tiny, tmp_path):
    """The plan's joint KL recorded in mlxedge.json, recomputed from the written bundle by mlx-lm
    on the same calibration window (so the tensors written are the ones measured)."""
    import mlx.core as mx
    import mlx_lm

    from mlxedge import texts
    from mlxedge.calibrate import calibration_chunks, probe_positions
    from mlxedge.convert import convert

    out = convert(tiny, tmp_path / "out", quant="bpw3", show_progress=False, **CALIB)
    info = json.loads((out / "mlxedge.json").read_text())["recipe_info"]
    (ids,) = calibration_chunks(tiny, texts.calibration_text(), CALIB["tokens"], CALIB["ctx"], 0)[:1]
    pos = probe_positions(len(ids), CALIB["positions"])

    def logp(d):
        model, _ = mlx_lm.load(str(d))
        x = np.array(model(mx.array(ids)[None])[0].astype(mx.float32), dtype=np.float64)[pos]
        x -= x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = logp(tiny), logp(out)
    kl = float(np.mean(np.sum(np.exp(p) * (p - q), -1)))
    assert info["calibration_kl"] == pytest.approx(kl, rel=0.05)
    assert set(info["joint_factors"]) == {"blocks", "embedding"}
