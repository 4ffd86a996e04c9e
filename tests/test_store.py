"""The model store's API and commands on the tiny GGUF fixtures: pull, list, show, cp, rm, create,
verify, audit, and names wherever a model path is taken."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

import mlxedge
from mlxedge import store
from mlxedge.errors import MlxEdgeError
from mlxedge.store import layout, names
from mlxedge.store import importer as pull_module
from store_util import GGUF, ROOT, TINY, assert_consistent, one_line_error, run_cli


@pytest.fixture
def tiny(home):
    return store.pull(str(TINY), name="tiny:q4", quiet=True)


def blob_names(home):
    return sorted(p.name for p in (home / "blobs").iterdir())


@pytest.mark.parametrize("text, expected", [
    ("smollm2", ("smollm2", "latest")), ("SmolLM2:135M", ("smollm2", "135m")),
    ("hf.co/owner/repo:Q4_K_M", ("hf.co/owner/repo", "q4_k_m")), ("a/b:c.d-e_f", ("a/b", "c.d-e_f"))])
def test_names_parse(text, expected):
    assert names.parse(text) == expected


@pytest.mark.parametrize("bad", ["", ":tag", "name:", "bad name", "../x", "a/../b", "/abs", "x:t/a", "-x", "a:b:c!"])
def test_bad_names_are_refused(bad):
    with pytest.raises(MlxEdgeError, match="not a model name"):
        names.parse(bad)


def test_pull_from_a_path(home, tiny):
    sha = hashlib.sha256(TINY.read_bytes()).hexdigest()
    assert tiny["source"] == {"kind": "path", "ref": str(TINY), "sha256": sha, "blob": sha}
    assert tiny["recipe"] == "keep" and tiny["mlxedge_version"] == mlxedge.__version__
    for fname, f in tiny["files"].items():  # every bundle file is a sha256-named blob
        blob = layout.blob_path(f["digest"])
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == f["digest"] and blob.stat().st_size == f["size"]
    assert set(tiny["files"]) >= {"config.json", "model.safetensors", "tokenizer.json", "mlxedge.json"}
    [row] = store.list_models()
    assert row["name"] == "tiny:q4" and row["id"] == tiny["id"][:12] and row["quantization"] == "keep"
    assert row["size"] == sum(f["size"] for f in tiny["files"].values()) and 6 < row["bits_per_weight"] < 7
    info = store.show("tiny:q4")
    assert info["architecture"] == "llama" and info["context_length"] == 256 and info["chat_template"]
    assert info["parameter_count"] == 94528 and info["source"]["sha256"] == sha
    assert_consistent(home)


def test_pull_converts_once(home, tiny, monkeypatch):
    calls = []
    real = pull_module.converter.convert
    monkeypatch.setattr(pull_module.converter, "convert", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = store.pull(str(TINY), name="tiny:q4", quiet=True)
    other = store.pull(str(TINY), name="other:name", quiet=True)
    assert calls == [] and again["id"] == tiny["id"] == other["id"] and again["files"] == other["files"]
    store.pull(str(TINY), name="tiny:f16", quant="f16", quiet=True)  # another recipe is another conversion
    assert len(calls) == 1 and store.get("tiny:f16")["id"] != tiny["id"]
    assert_consistent(home)


def test_pull_a_bundle_and_an_hf_style_checkpoint(home):
    m = store.pull(str(ROOT / "tests/goldens/tiny/qwen2_f16"), name="qwen2:f16", quiet=True)
    assert m["source"]["kind"] == "path" and m["source"]["blob"] is None  # a directory: hashed, not copied
    assert len(m["source"]["sha256"]) == 64 and store.show("qwen2:f16")["architecture"] == "qwen2"
    assert_consistent(home)


def test_cp_shares_blobs(home, tiny):
    before = blob_names(home)
    copy = store.cp("tiny:q4", "tiny:copy")
    assert copy["files"] == tiny["files"] and copy["id"] == tiny["id"] and blob_names(home) == before
    assert [r["name"] for r in store.list_models()] == ["tiny:copy", "tiny:q4"]
    store.rm("tiny:q4")  # the copy keeps every blob
    assert blob_names(home) == before and store.materialize(store.get("tiny:copy")).is_dir()


def test_rm_removes_only_unshared_blobs(home, tiny):
    templated = store.create("tiny:tpl", 'FROM tiny:q4\nTEMPLATE """{{ messages[0].content }}"""')
    new = {f["digest"] for f in templated["files"].values()} - {f["digest"] for f in tiny["files"].values()}
    assert len(new) == 1  # only tokenizer_config.json differs: the weights are shared
    all_blobs = blob_names(home)
    gone = store.rm("tiny:tpl")
    assert gone == [f"sha256-{d}" for d in new] and set(blob_names(home)) == set(all_blobs) - set(gone)
    store.rm("tiny:q4")
    assert blob_names(home) == [] and store.list_models() == []
    assert_consistent(home)


def test_create_directives_reach_generation(home, tiny):
    text = ('# a comment\nFROM tiny:q4\nPARAMETER num_predict 3\nPARAMETER temperature 0.8\nPARAMETER seed 7\n'
            'PARAMETER top_k 5\nPARAMETER stop "<none>"\nSYSTEM """You are\nterse."""\n')
    store.create("tiny:terse", text)
    base = mlxedge.load("tiny:q4", backend="numpy")
    model = mlxedge.load("tiny:terse", backend="numpy")
    assert model.defaults["system"] == "You are\nterse."
    assert model.encode_prompt("hi") == base.encode_prompt("hi", system="You are\nterse.") != base.encode_prompt("hi")
    gen = model.generation(model.encode_prompt("hi"))
    gen.run()
    assert gen.stats.generation_tokens == 3  # num_predict
    explicit = base.generate("hi", system="You are\nterse.", max_tokens=3, temp=0.8, seed=7, top_k=5)
    assert model.generate("hi") == explicit  # the same sampling: temperature, seed, top_k
    one = model.generation(model.encode_prompt("hi"), max_tokens=1)  # an argument wins over num_predict
    one.run()
    assert one.stats.generation_tokens == 1
    assert model.generate("hi", temp=0.0, max_tokens=3) == base.generate("hi", system="You are\nterse.",
                                                                         max_tokens=3)
    tpl = store.create("tiny:tpl", 'FROM tiny:terse\nTEMPLATE """{{ messages[-1].content }}!"""')
    loaded = mlxedge.load("tiny:tpl", backend="numpy")
    assert loaded.tokenizer.chat_template == "{{ messages[-1].content }}!" and tpl["parameters"]["num_predict"] == 3


def test_create_from_a_path_and_the_cli(home, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM ./{TINY.name}\nPARAMETER num_predict 2\nSYSTEM be brief\n")
    (tmp_path / TINY.name).write_bytes(TINY.read_bytes())  # FROM is relative to the Modelfile
    r = run_cli(home, "create", "tiny:brief", "-f", str(mf))
    assert r.returncode == 0, r.stderr
    out = json.loads(run_cli(home, "generate", "--model", "tiny:brief", "-p", "hi", "--json", "--backend",
                             "numpy").stdout)
    base = json.loads(run_cli(home, "generate", "--model", str(TINY), "-p", "hi", "--json", "--backend", "numpy",
                              "--system", "be brief", "-m", "2").stdout)
    assert out["generation_tokens"] == 2 and out["prompt_tokens"] == base["prompt_tokens"]
    assert out["text"] == base["text"]
    r = run_cli(home, "show", "tiny:brief", "--modelfile")
    assert "PARAMETER num_predict 2" in r.stdout and 'SYSTEM """be brief"""' in r.stdout


@pytest.mark.parametrize("text, message", [
    ("FROM tiny:q4\nADAPTER x.bin\n", "line 2: unknown directive 'ADAPTER'"),
    ("FROM tiny:q4\n\nPARAMETER temperature hot\n", "line 3: PARAMETER temperature 'hot' is not a number"),
    ("FROM tiny:q4\nPARAMETER top_p 1.5\n", r"line 2: PARAMETER top_p 1.5 must be in \(0, 1\]"),
    ("FROM tiny:q4\nPARAMETER num_ctx 0\n", "line 2: PARAMETER num_ctx 0 must be >= 1"),
    ("FROM tiny:q4\nPARAMETER top_k 2.5\n", "line 2: PARAMETER top_k '2.5' is not an integer"),
    ("FROM tiny:q4\nPARAMETER mirostat 1\n", "line 2: unknown PARAMETER 'mirostat'"),
    ("FROM tiny:q4\nSYSTEM \"\"\"never closed\n", 'line 2: """ is never closed'),
    ("FROM tiny:q4\nTEMPLATE {% if %}\n", "line 2: TEMPLATE is not valid Jinja"),
    ("PARAMETER seed 1\n", "no FROM line"),
    ("FROM\n", "line 1: FROM needs a value"),
])
def test_bad_modelfiles_name_the_line(home, tiny, text, message):
    with pytest.raises(MlxEdgeError, match=message):
        store.create("bad:one", text)
    assert [r["name"] for r in store.list_models()] == ["tiny:q4"]


def test_modelfile_round_trip():
    parsed = store.modelfile.parse('FROM x\nPARAMETER stop "a b"\nPARAMETER stop \'\nPARAMETER min_p 0.1\n'
                                   'SYSTEM """two\nlines"""\nTEMPLATE "{{ x }}"\n')
    again = store.modelfile.parse(store.modelfile.render("x", parsed["parameters"], parsed["system"],
                                                         parsed["template"]))
    assert again == parsed and parsed["parameters"] == {"stop": ["a b", "'"], "min_p": 0.1}


def test_unknown_and_malformed_names_one_line(home, tiny):
    for args in (["generate", "--model", "nosuch:model", "-p", "hi"], ["show", "nosuch"], ["rm", "nosuch"],
                 ["cp", "nosuch", "x"], ["verify", "nosuch"]):
        line = one_line_error(run_cli(home, *args), args[0])
        assert "unknown model nosuch" in line and "mlxedge list" in line
    assert "not a model name" in one_line_error(run_cli(home, "cp", "tiny:q4", "Bad Name!"), "cp")
    assert "not a model name" in one_line_error(run_cli(home, "pull", str(TINY), "--as", "a:b:c"), "pull")
    with pytest.raises(MlxEdgeError, match="unknown model nosuch:latest.*mlxedge list"):
        mlxedge.load("nosuch")


@pytest.mark.parametrize("content", [b"just some text\n", b"GGUF\x03\x00\x00\x00truncated"])
def test_a_non_model_source_leaves_nothing(home, tmp_path, content):
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(content)
    one_line_error(run_cli(home, "pull", str(bad)), "pull")
    one_line_error(run_cli(home, "pull", str(tmp_path / "missing.gguf")), "pull")
    one_line_error(run_cli(home, "pull", str(tmp_path)), "pull")  # a folder with no model
    assert store.list_models() == []
    assert_consistent(home)


def test_cli_commands_end_to_end(home):
    r = run_cli(home, "pull", str(GGUF / "qwen3-q8_0.gguf"), "--as", "qwen3:tiny", "--quiet")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    r = run_cli(home, "pull", str(GGUF / "qwen3-q8_0.gguf"), "--as", "hf.co/org/qwen3:f16", "--quant", "f16")
    assert r.returncode == 0 and r.stdout.startswith("hf.co/org/qwen3:f16 "), r.stderr
    assert json.loads(run_cli(home, "show", "hf.co/org/qwen3:f16", "--json").stdout)["quantization"] == "f16"
    assert run_cli(home, "rm", "hf.co/org/qwen3:f16").returncode == 0
    assert not (home / "manifests" / "hf.co").exists()  # a namespaced name's folders go with it
    assert run_cli(home, "cp", "qwen3:tiny", "qwen3:copy").returncode == 0
    listed = run_cli(home, "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "ID", "SIZE", "QUANTIZATION", "BITS/WEIGHT", "MODIFIED"]
    assert [line.split()[0] for line in listed[1:]] == ["qwen3:copy", "qwen3:tiny"]
    rows = json.loads(run_cli(home, "list", "--json").stdout)
    assert rows[0]["id"] == rows[1]["id"] and rows[0]["quantization"] == "keep"
    shown = run_cli(home, "show", "qwen3:tiny").stdout
    assert "architecture       qwen3" in shown and "source sha256" in shown
    assert json.loads(run_cli(home, "show", "qwen3:tiny", "--json").stdout)["architecture"] == "qwen3"
    assert run_cli(home, "verify").stdout.startswith("ok")
    assert run_cli(home, "rm", "qwen3:copy", "qwen3:tiny").returncode == 0
    assert json.loads(run_cli(home, "list", "--json").stdout) == []
    assert_consistent(home)


def test_names_resolve_in_eval(home, tiny):
    from mlxedge import eval as eval_module

    directory, _ = eval_module.open_model("tiny:q4")
    assert directory == home / "models" / tiny["id"] and (directory / "model.safetensors").stat().st_nlink >= 2


def test_corrupted_blob_found_by_verify_and_refused_at_load(home, tiny):
    f = tiny["files"]["model.safetensors"]
    blob = layout.blob_path(f["digest"])
    mlxedge.load("tiny:q4", backend="numpy")  # whole: loads (and stamps its blobs)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF  # same size, one byte changed
    blob.write_bytes(bytes(data))
    assert store.verify() == [{"model": "tiny:q4", "file": "model.safetensors", "blob": f"sha256-{f['digest']}",
                               "problem": "changed"}]
    r = run_cli(home, "verify")
    assert r.returncode == 1 and "model.safetensors" in r.stdout and "changed" in r.stdout
    line = one_line_error(run_cli(home, "generate", "--model", "tiny:q4", "-p", "hi"), "generate")
    assert "model.safetensors" in line and "changed" in line
    with pytest.raises(MlxEdgeError, match="is changed"):
        mlxedge.load("tiny:q4")
    store.pull(str(TINY), name="tiny:q4", quiet=True)  # pulling again replaces the damaged blob
    assert store.verify() == [] and mlxedge.load("tiny:q4", backend="numpy").generate("hi", max_tokens=2)
    blob.unlink()
    assert store.verify("tiny:q4")[0]["problem"] == "missing"
    failed = [e for e in store.audit.read() if e["event"] == "load" and e["outcome"] == "error"]
    assert failed and "changed" in failed[0]["error"]


def test_audit_log(home, tiny):
    store.cp("tiny:q4", "tiny:b")
    run_cli(home, "generate", "--model", "tiny:b", "-p", "SECRET-PROMPT-TEXT", "-m", "2", "--backend", "numpy")
    store.rm("tiny:b")
    run_cli(home, "pull", "/no/such.gguf")
    text = (home / "audit.jsonl").read_text()
    assert "SECRET-PROMPT-TEXT" not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e["event"] for e in entries] == ["pull", "cp", "load", "rm"]  # a bad SOURCE fails before the store
    assert all(e["outcome"] == "ok" and e["time"].endswith("Z") for e in entries)
    assert entries[0]["sha256"] == tiny["source"]["sha256"] and entries[2]["id"] == tiny["id"][:12]
    summary = json.loads(run_cli(home, "audit", "--json").stdout)
    assert summary["by_event"] == {"cp": 1, "load": 1, "pull": 1, "rm": 1}
    assert summary["by_model"]["tiny:b"]["load"] == 1 and summary["failures"] == []
    assert json.loads(run_cli(home, "audit", "--json", "--since", "2099-01-01").stdout)["entries"] == 0
    assert json.loads(run_cli(home, "audit", "--json", "--since", "1h").stdout)["entries"] == 4
    assert "--since" in one_line_error(run_cli(home, "audit", "--since", "yesterday"), "audit")
    store.audit.record("request", model="tiny:q4", key_id="k1", route="/api/generate", prompt_tokens=3,
                       completion_tokens=4, outcome="error", error="boom")  # the server's use of the API
    s = store.audit.summarize(store.audit.read())
    assert s["by_key"]["k1"] == {"request": 1, "tokens": 7, "failures": 1} and s["failures"][0]["error"] == "boom"
    assert "failed:" in run_cli(home, "audit").stdout


def test_num_ctx_narrows_the_context(home, tiny):
    store.create("tiny:short", "FROM tiny:q4\nPARAMETER num_ctx 40\n")
    assert mlxedge.load("tiny:q4", backend="numpy").context_length == 256
    model = mlxedge.load("tiny:short", backend="numpy")
    assert model.context_length == 40 and store.show("tiny:short")["parameters"] == {"num_ctx": 40}
    with pytest.raises(MlxEdgeError, match="longer than the model's context of 40"):
        model.generate("word " * 60)


def test_chat_takes_a_name_and_its_system_prompt(home, tiny):
    store.create("tiny:chat", 'FROM tiny:q4\nSYSTEM "be brief"\nPARAMETER num_predict 2\n')
    def stats(*args):
        r = run_cli(home, "chat", "--backend", "numpy", *args, stdin="hello\n/exit\n")
        assert r.returncode == 0, r.stderr
        line = next(x for x in r.stderr.splitlines() if x.startswith("[prompt:"))
        return re.findall(r"(\d+) tokens,", line)  # [prompt tokens, generated tokens]

    named = stats("--model", "tiny:chat")
    assert named == stats("--model", "tiny:q4", "--system", "be brief", "-m", "2")
    assert named[1] == "2" and named != stats("--model", "tiny:q4", "-m", "2")


def test_mlx_lm_reads_a_materialized_model(home, tiny):
    pytest.importorskip("mlx.core")
    load_model = pytest.importorskip("mlx_lm.utils").load_model
    directory = store.resolve("tiny:q4")
    model, config = load_model(directory)
    assert config["model_type"] == "llama" and all((directory / f).samefile(layout.blob_path(d["digest"]))
                                                   for f, d in tiny["files"].items())


@pytest.mark.parametrize("damage", [
    lambda m: "not json{", lambda m: json.dumps([1, 2]), lambda m: json.dumps({**m, "files": {}}),
    lambda m: json.dumps({**m, "files": {"../escape": next(iter(m["files"].values()))}}),
    lambda m: json.dumps({**m, "files": {"config.json": {"digest": "../../etc/passwd", "size": 1}}}),
    lambda m: json.dumps({**m, "source": {**m["source"], "blob": "/etc/passwd"}})])
def test_a_damaged_manifest_is_refused_and_removable(home, tiny, damage):
    store.cp("tiny:q4", "tiny:keep")
    path = layout.manifest_path("tiny", "q4")
    path.write_text(damage(tiny))
    with pytest.raises(MlxEdgeError, match="not a valid manifest|unreadable"):
        mlxedge.load("tiny:q4")
    r = run_cli(home, "list")
    assert r.returncode == 0 and "tiny:keep" in r.stdout and "tiny:q4" not in r.stdout
    assert "skipping unreadable manifest" in r.stderr
    assert re.search("not a valid manifest|unreadable", one_line_error(run_cli(home, "show", "tiny:q4"), "show"))
    assert run_cli(home, "rm", "tiny:q4").returncode == 0
    assert [r["name"] for r in store.list_models()] == ["tiny:keep"] and store.verify() == []
