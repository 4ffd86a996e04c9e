"""Hypothesis fuzzing of everything mlxedge reads from a user (issue 10): mutated GGUF metadata
values and tensor directory entries, raw header bytes, safetensors headers, config.json,
tokenizer.json and tokenizer_config.json of a bundle, ONNX model protos and genai_config.json.

Each example writes one mutated copy of a tiny fixture and runs, in this process, what a user would:
`inspect`, `convert` (to a fresh OUT), then either `generate` on the converted bundle, or, when
conversion refused, `load` through the GGUF cache. The properties:

- only `MlxEdgeError` escapes, and its message is one line;
- a refused input leaves nothing behind: no OUT, no `.OUT.*.partial`, no cache files;
- each example finishes within `--deadline` seconds (hypothesis' deadline);
- memory stays under the address-space cap this process was started with (tests/test_fuzz.py sets
  RLIMIT_AS; a MemoryError is an escape like any other).

    .venv/bin/python tests/fuzz_readers.py --examples 40            # what CI runs (derandomized)
    .venv/bin/python tests/fuzz_readers.py --examples 3000 --seed 1 --mem-gb 3   # a long campaign

It prints one line per target (examples run, escapes) and exits 1 on the first escape, after
hypothesis has shrunk it to a minimal example.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
warnings.simplefilter("ignore", RuntimeWarning)  # garbage weights overflow; that is not an escape

from hypothesis import HealthCheck, given, seed as hyp_seed, settings, strategies as st  # noqa: E402
from gguf import GGUFValueType as T  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import damage  # noqa: E402

from mlxedge.api import load  # noqa: E402
from mlxedge.convert import convert  # noqa: E402
from mlxedge.errors import MlxEdgeError  # noqa: E402
from mlxedge.inspect import inspect  # noqa: E402

HERE = Path(__file__).parent
GGUF = HERE / "fixtures" / "gguf" / "llama-q4_0.gguf"
BUNDLE = HERE / "goldens" / "tiny" / "llama_q4_bf16"
COUNTS: dict[str, int] = {}
CONVERTED: dict[str, int] = {}  # examples that converted and generated (the mutation was harmless)

# --- values -----------------------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2, 3, 7, 31, 32, 33, 64, 255, 256, 511, 512, 2**16, 2**31 - 1, 2**31, 2**32 - 1,
             2**32, 2**40, 2**62, 2**63 - 1, -(2**63)]
INT_RANGES = {T.UINT8: (0, 2**8 - 1), T.INT8: (-(2**7), 2**7 - 1), T.UINT16: (0, 2**16 - 1),
              T.INT16: (-(2**15), 2**15 - 1), T.UINT32: (0, 2**32 - 1), T.INT32: (-(2**31), 2**31 - 1),
              T.UINT64: (0, 2**64 - 1), T.INT64: (-(2**63), 2**63 - 1)}
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)


def int_of(kind: int):
    lo, hi = INT_RANGES[kind]
    return st.one_of(st.sampled_from([v for v in EDGE_INTS if lo <= v <= hi]), st.integers(lo, hi))


def scalar(kind: int):
    if kind in INT_RANGES:
        return int_of(kind)
    if kind == T.FLOAT32:
        return st.floats(width=32)
    if kind == T.FLOAT64:
        return st.floats()
    if kind == T.BOOL:
        return st.booleans()
    return text


SCALAR_KINDS = [*INT_RANGES, T.FLOAT32, T.FLOAT64, T.BOOL, T.STRING]


@st.composite
def gguf_value(draw):
    """(GGUF value type, value) of any type, arrays of up to 6 items (nested once at most)."""
    kind = draw(st.sampled_from(SCALAR_KINDS + [T.ARRAY]))
    if kind != T.ARRAY:
        return kind, draw(scalar(kind))
    item = draw(st.sampled_from(SCALAR_KINDS))
    return kind, (item, draw(st.lists(scalar(item), max_size=6)))


json_value = st.recursive(
    st.none() | st.booleans() | st.sampled_from(EDGE_INTS) | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=8)

# --- running one input ------------------------------------------------------------------------


def _leftovers(root: Path, allowed: set[str]) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in allowed
                  and not str(p.relative_to(root)).startswith("case/"))


def check_message(e: MlxEdgeError) -> None:
    assert "\n" not in str(e), f"a multi-line error: {e}"


def exercise(path: Path, work: Path, gguf: bool) -> bool:
    """inspect, convert, then generate (converted) or load through the cache (refused)."""
    try:
        inspect(path)
    except MlxEdgeError as e:
        check_message(e)
    out = work / "out"
    try:
        convert(path, out, show_progress=False)
        converted = True
    except MlxEdgeError as e:
        check_message(e)
        converted = False
        assert not out.exists() and not [p for p in work.iterdir() if p.name.startswith(".out.")], \
            f"a refused convert left {os.listdir(work)}"
    ran = False
    try:
        model = load(out if converted else path, backend="numpy")
        model.generate("Hi", max_tokens=2)
        ran = True
    except MlxEdgeError as e:
        check_message(e)
        if not converted and gguf:  # a GGUF's conversion goes to the store (MLXEDGE_HOME)
            left = [str(p) for var in ("MLXEDGE_HOME", "MLXEDGE_CACHE")
                    for p in Path(os.environ[var]).rglob("*") if p.is_file()]
            assert not left, f"a refused load left store or cache files {left}"
    shutil.rmtree(out, ignore_errors=True)
    for var in ("MLXEDGE_HOME", "MLXEDGE_CACHE"):
        shutil.rmtree(os.environ[var], ignore_errors=True)
    return ran


def fresh_work() -> Path:
    work = Path(tempfile.mkdtemp(prefix="mlxedge-fuzz-"))
    (work / "case").mkdir()
    os.environ["MLXEDGE_CACHE"] = str(work / "cache")
    os.environ["MLXEDGE_HOME"] = str(work / "home")
    return work


def run(target: str, write) -> None:
    """Write one mutated input with `write(case_dir) -> (path, is_gguf)` and exercise it."""
    COUNTS[target] = COUNTS.get(target, 0) + 1
    work = fresh_work()
    try:
        path, is_gguf = write(work / "case")
        try:
            ran = exercise(path, work, is_gguf)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            raise
        except BaseException as e:  # e.g. a Rust panic from tokenizers: an escape hypothesis can shrink
            raise AssertionError(f"escaped {type(e).__name__}: {e}") from None
        if ran:
            CONVERTED[target] = CONVERTED.get(target, 0) + 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- targets ----------------------------------------------------------------------------------

SOURCE = damage.read_gguf(GGUF)
READ_KEYS = sorted({kv.key for kv in SOURCE.kvs} | {
    "general.alignment", "llama.attention.head_count_kv", "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.scores", "llama.rope.scaling.type",
    "llama.rope.scaling.factor", "tokenizer.ggml.add_eos_token", "general.architecture"})


def gguf_metadata(data) -> None:
    """Replace, drop or duplicate metadata entries (mostly the keys mlxedge reads) with any typed value."""
    def write(case: Path):
        g = damage.read_gguf(GGUF)
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from(READ_KEYS) | text)
            action = data.draw(st.sampled_from(["set", "set", "set", "drop", "dup"]))
            if action == "drop":
                g.kvs = [kv for kv in g.kvs if kv.key != key]
            elif action == "dup" and any(kv.key == key for kv in g.kvs):
                g.kvs.append(damage.KV(key, *data.draw(gguf_value())))
            else:
                g.set(key, *data.draw(gguf_value()))
        return g.write(case / "m.gguf"), True
    run("gguf_metadata", write)


def gguf_tensors(data) -> None:
    """Change a tensor directory entry: dimensions, type, data offset or name."""
    def write(case: Path):
        g = damage.read_gguf(GGUF)
        t = g.tensors[data.draw(st.integers(0, len(g.tensors) - 1))]
        field = data.draw(st.sampled_from(["dims", "type", "offset", "name"]))
        if field == "dims":
            t.dims = data.draw(st.lists(st.sampled_from([v for v in EDGE_INTS if v >= 0]) | st.integers(0, 2**64 - 1),
                                        min_size=1, max_size=5))
        elif field == "type":
            t.type = data.draw(st.integers(0, 45) | st.sampled_from([2**31, 2**32 - 1]))
        elif field == "offset":
            t.offset = data.draw(st.sampled_from([v for v in EDGE_INTS if v >= 0]) | st.integers(0, 2**64 - 1))
        else:
            t.name = data.draw(st.sampled_from([u.name for u in g.tensors]) | text)
        return g.write(case / "t.gguf"), True
    run("gguf_tensors", write)


def gguf_bytes(data) -> None:
    """Overwrite a few header bytes (counts, lengths, type ids...) or cut the file anywhere."""
    def write(case: Path):
        buf = bytearray(GGUF.read_bytes())
        if data.draw(st.booleans()):
            cut = data.draw(st.integers(0, len(buf) - 1))
            buf = buf[:cut]
        else:
            for _ in range(data.draw(st.integers(1, 4))):
                at = data.draw(st.integers(0, SOURCE.data_start - 1))
                width = data.draw(st.sampled_from([1, 4, 8]))
                value = data.draw(st.binary(min_size=width, max_size=width)
                                  | st.sampled_from([struct.pack("<Q", v)[:width] for v in EDGE_INTS if v >= 0]))
                buf[at:at + width] = value
        (case / "b.gguf").write_bytes(bytes(buf))
        return case / "b.gguf", True
    run("gguf_bytes", write)


def safetensors_header(data) -> None:
    """Edit a tensor entry of the bundle's safetensors header, or the header as a whole."""
    def write(case: Path):
        bundle = damage.intact_bundle(BUNDLE, case, "b")
        shard = bundle / "model.safetensors"
        kind = data.draw(st.sampled_from(["entry", "entry", "entry", "header", "length"]))
        if kind == "length":
            with open(shard, "r+b") as f:
                f.write(struct.pack("<Q", data.draw(st.sampled_from([v for v in EDGE_INTS if v >= 0]))))
            return bundle, False

        def edit(header, size):
            if kind == "header":
                header.clear()
                header.update(data.draw(st.dictionaries(text, json_value, max_size=3)))
                return
            name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
            field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry"]))
            if field == "entry":
                header[name] = data.draw(json_value)
            elif field == "dtype":
                header[name]["dtype"] = data.draw(st.sampled_from(["F32", "F16", "BF16", "U32", "I64", "U8",
                                                                   "F8_E4M3", "Q4"]) | json_value)
            elif field == "shape":
                header[name]["shape"] = data.draw(st.lists(st.sampled_from(EDGE_INTS), max_size=4) | json_value)
            else:
                header[name]["data_offsets"] = data.draw(
                    st.lists(st.sampled_from(EDGE_INTS + [size, size + 1]), min_size=2, max_size=2) | json_value)
        damage._rewrite_header(shard, edit)
        return bundle, False
    run("safetensors_header", write)


def json_files(data) -> None:
    """Set, drop or replace fields of config.json, tokenizer.json, tokenizer_config.json, generation_config.json."""
    def write(case: Path):
        bundle = damage.intact_bundle(BUNDLE, case, "b")
        name = data.draw(st.sampled_from(["config.json", "config.json", "tokenizer.json", "tokenizer_config.json",
                                          "generation_config.json", "special_tokens_map.json"]))
        p = bundle / name
        obj = json.loads(p.read_text())
        if data.draw(st.integers(0, 9)) == 0:
            obj = data.draw(json_value)
        else:
            for _ in range(data.draw(st.integers(1, 3))):
                key = data.draw(st.sampled_from(sorted(obj)) | text) if isinstance(obj, dict) and obj else "x"
                if data.draw(st.integers(0, 4)) == 0:
                    obj.pop(key, None)
                else:
                    obj[key] = data.draw(json_value)
        p.write_text(json.dumps(obj))
        return bundle, False
    run("json_files", write)


# MatMulNBits (symmetric, and with zero points), GatherBlockQuantized, QDQ DequantizeLinear,
# MatMulInteger, and the genai builder's layout (fused projections, external data, genai_config.json)
ONNX_EXPORTS = [HERE / "fixtures" / "onnx" / "tiny-llama" / n for n in (
    "optimum-q4", "optimum-q4-asym", "optimum-q4-gather", "optimum-qdq4-asym", "optimum-int8", "genai-int4")]


def onnx_model(data) -> None:
    """Edit the ONNX export's model proto (1-3 edits of an initializer's dims, type, bytes or
    external-data reference; a node's op, inputs or attributes) or its genai_config.json."""
    import onnx  # heavy optional dependency, as in the reader

    def write(case: Path):
        src = data.draw(st.sampled_from(ONNX_EXPORTS))
        folder = case / src.name
        shutil.copytree(src, folder)
        if (folder / "genai_config.json").exists() and data.draw(st.integers(0, 3)) == 0:
            cfg = json.loads((folder / "genai_config.json").read_text())
            dec = cfg.setdefault("model", {}).setdefault("decoder", {})
            dec[data.draw(st.sampled_from(sorted(dec) or ["head_size"]))] = data.draw(json_value)
            (folder / "genai_config.json").write_text(json.dumps(cfg))
            return folder, False
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        graph = model.graph
        for _ in range(data.draw(st.integers(1, 3))):
            if data.draw(st.booleans()) and len(graph.initializer):
                _mutate_initializer(graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))], data)
            else:
                _mutate_node(graph, graph.node[data.draw(st.integers(0, len(graph.node) - 1))], data)
        # the bytes as they are: onnx.save would check (and refuse) some of the mutations
        (folder / "model.onnx").write_bytes(model.SerializeToString())
        return folder, False
    run("onnx_model", write)


ONNX_OPS = ["MatMul", "MatMulNBits", "Gather", "GatherBlockQuantized", "DequantizeLinear", "MatMulInteger",
            "DynamicQuantizeMatMul", "Reshape", "Transpose", "Cast", "Squeeze", "SimplifiedLayerNormalization",
            "Add", "Foo"]
ONNX_ATTRS = ["K", "N", "bits", "block_size", "axis", "axes", "perm", "to", "epsilon", "gather_axis",
              "quantize_axis", "transB", "allowzero", "rotary_interleaved"]


def _mutate_initializer(init, data) -> None:
    """An initializer's dims, type, bytes, external-data reference, or a consistent rewrite."""
    import onnx

    field = data.draw(st.sampled_from(["dims", "type", "bytes", "external", "consistent", "consistent"]))
    if field == "consistent":  # other dims and type, with exactly the bytes they take
        _consistent(init, data)
    elif field == "dims" and len(init.dims):
        init.dims[data.draw(st.integers(0, len(init.dims) - 1))] = data.draw(
            st.sampled_from([v for v in EDGE_INTS if -2**63 <= v < 2**63]))
    elif field == "type":
        init.data_type = data.draw(st.integers(0, 25))
    elif field == "bytes" and init.raw_data:
        init.raw_data = init.raw_data[: data.draw(st.integers(0, len(init.raw_data) - 1))]
    else:
        del init.external_data[:]
        init.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", data.draw(st.sampled_from(["model.onnx.data", "missing.bin", "../escape.bin"]))),
                           ("offset", str(data.draw(st.sampled_from([0, 1, 2**40, -1])))),
                           ("length", str(data.draw(st.sampled_from([0, 4, 2**40, -4]))))):
            init.external_data.add(key=key, value=value)


def _mutate_node(graph, node, data) -> None:
    """A node's op, an input (another value of the graph, or any name, or none), or an attribute
    (changed, or added with an integer value)."""
    import onnx

    field = data.draw(st.sampled_from(["op", "input", "input", "drop_input", "attribute", "attribute", "add_attribute"]))
    if field == "op":
        node.op_type = data.draw(st.sampled_from(ONNX_OPS))
    elif field == "input" and len(node.input):
        values = sorted({t.name for t in graph.initializer} | {o for n in graph.node for o in n.output})
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(values) | text)
    elif field == "drop_input" and len(node.input):
        del node.input[data.draw(st.integers(0, len(node.input) - 1))]
    elif field == "attribute" and len(node.attribute):
        attr = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
        if attr.type == onnx.AttributeProto.FLOAT:
            attr.f = data.draw(st.floats(width=32))
        elif attr.type == onnx.AttributeProto.INTS:
            del attr.ints[:]
            attr.ints.extend(data.draw(st.lists(st.sampled_from([-3, -1, 0, 1, 2, 3, 2**31]), max_size=4)))
        else:
            attr.i = data.draw(st.sampled_from([v for v in EDGE_INTS if -2**63 <= v < 2**63] + [4, 8, 16, 128]))
    else:
        name = data.draw(st.sampled_from(ONNX_ATTRS))
        del_at = [i for i, a in enumerate(node.attribute) if a.name == name]
        for i in reversed(del_at):
            del node.attribute[i]
        node.attribute.append(onnx.helper.make_attribute(name, data.draw(
            st.sampled_from([-1, 0, 1, 2, 3, 4, 8, 16, 32, 64, 2**31]))))


ONNX_BITS = {1: 32, 2: 8, 3: 8, 6: 32, 7: 64, 10: 16, 16: 16, 21: 4, 22: 4, 25: 2, 26: 2}


def _consistent(init, data) -> None:
    """Give an initializer new dims (and maybe a new type) and raw bytes of exactly that size, so
    that it reaches the checks of the op that reads it."""
    dims = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 16, 32, 64, 128, 512]), max_size=3))
    if data.draw(st.booleans()):
        init.data_type = data.draw(st.sampled_from(sorted(ONNX_BITS)))
    while math.prod(dims) > 1 << 18:  # a few MB at most: the proto is built in memory, under the cap
        dims.pop()
    n = math.prod(dims)
    nbytes = (n * ONNX_BITS.get(init.data_type, 8) + 7) // 8
    del init.dims[:]
    init.dims.extend(dims)
    del init.external_data[:]
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        init.ClearField(f)
    init.data_location = 0
    seed_bytes = init.raw_data or bytes(range(256))
    init.raw_data = (seed_bytes * (nbytes // max(len(seed_bytes), 1) + 1))[:nbytes]


TARGETS = {f.__name__: f for f in (gguf_metadata, gguf_tensors, gguf_bytes, safetensors_header, json_files,
                                   onnx_model)}
DEFAULT = list(TARGETS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=40, help="examples per target (default 40)")
    ap.add_argument("--seed", type=int, default=None, help="random seed; without it, derandomized (CI)")
    ap.add_argument("--deadline", type=float, default=20.0, help="seconds one example may take (default 20)")
    ap.add_argument("--mem-gb", type=float, default=None, help="cap this process' address space (RLIMIT_AS)")
    ap.add_argument("--only", action="append", choices=list(TARGETS), default=[], help="run only this target")
    args = ap.parse_args(argv)
    if args.mem_gb:
        limit = int(args.mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    opts = settings(max_examples=args.examples, derandomize=args.seed is None, database=None,
                    deadline=args.deadline * 1000, print_blob=True,
                    suppress_health_check=list(HealthCheck))
    t0 = time.monotonic()
    failed = False
    for name in args.only or DEFAULT:
        test = given(st.data())(TARGETS[name])
        test = opts(hyp_seed(args.seed)(test) if args.seed is not None else test)
        start = time.monotonic()
        try:
            test()
            result = "0 escapes"
        except Exception as e:  # noqa: BLE001 - the report is the point
            failed = True
            result = f"ESCAPE: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            traceback.print_exc()
        print(f"{name:<20} {COUNTS.get(name, 0):>6} examples ({CONVERTED.get(name, 0):>5} ran)  "
              f"{time.monotonic() - start:6.1f} s  {result}",
              flush=True)
        if failed:
            break
    print(f"total {sum(COUNTS.values())} examples in {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
