"""Ollama's store routes over `mlxedge.store`: GET /api/tags, POST /api/show (also for loaded paths),
and the admin-only POST /api/pull (NDJSON progress), DELETE /api/delete, POST /api/copy, POST /api/create."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .. import store
from ..errors import MlxEdgeError
from ..formats.bundle import read_config
from ..store import audit
from .limits import ApiError, get, model_name, read_json

router = APIRouter()


def _service(request: Request):
    return request.app.state.service


def model_details(directory: Path, info: dict | None = None) -> dict:
    info = info or {}
    try:
        config = read_config(directory)
    except MlxEdgeError:
        config = {}
    family = info.get("architecture") or config.get("model_type") or ""
    count = info.get("parameter_count")
    return {"parent_model": "", "format": "mlx", "family": family, "families": [family] if family else None,
            "parameter_size": f"{count / 1e6:.0f}M" if count else "",
            "quantization_level": str(info.get("quantization") or "")}


@router.get("/api/tags")
async def tags(request: Request):
    svc = _service(request)
    svc.authorize(request, "/api/tags")
    models = []
    for row in store.list_models():
        m = store.get(row["name"])
        models.append({"name": row["name"], "model": row["name"], "modified_at": row["modified"],
                       "size": row["size"], "digest": m["id"],
                       "details": {"parent_model": "", "format": "mlx",
                                   "family": m.get("info", {}).get("architecture") or "",
                                   "families": None, "parameter_size": "",
                                   "quantization_level": str(row["quantization"] or "")}})
    return {"models": models}


def show_model(svc, name: str) -> dict:
    """Ollama's show response for a store name, or for a model the server has loaded by path."""
    try:
        m = store.get(name) if store.names.is_name(name) and not Path(name).exists() else None
    except MlxEdgeError:
        m = None
    if m is not None:
        info = m.get("info", {})
        params = "\n".join(f"{k} {json.dumps(v) if isinstance(v, str) else v}"
                           for k, values in m.get("parameters", {}).items()
                           for v in (values if isinstance(values, list) else [values]))
        directory = store.materialize(m)
        return {"modelfile": store.show_modelfile(name), "parameters": params,
                "template": m.get("template") or "", "system": m.get("system") or "",
                "details": model_details(directory, info), "modified_at": m.get("modified"),
                "model_info": {"general.architecture": info.get("architecture"),
                               "general.parameter_count": info.get("parameter_count"),
                               "context_length": info.get("context_length"),
                               "bits_per_weight": info.get("bits_per_weight")},
                "capabilities": ["completion"]}
    try:
        key = svc.registry.key(name)
    except MlxEdgeError as e:
        raise ApiError(404, str(e), param="model") from None
    directory = svc.registry.loaded[key].model.path if key in svc.registry.loaded else Path(key)
    if not (directory / "config.json").is_file():
        raise ApiError(404, f"model {name!r} is not loaded and not in the store", param="model")
    config = read_config(directory)
    return {"modelfile": f"FROM {key}\n", "parameters": "", "template": "", "details": model_details(directory),
            "model_info": {"general.architecture": config.get("model_type"),
                           "context_length": config.get("max_position_embeddings")},
            "capabilities": ["completion"]}


async def _store_call(fn, *args, **kwargs):
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except MlxEdgeError as e:
        status = 404 if "not in the store" in str(e) or "unknown model" in str(e).lower() else 400
        raise ApiError(status, str(e)) from None


@router.post("/api/pull")
async def pull(request: Request):
    svc = _service(request)
    caller = svc.authorize(request, "/api/pull", admin=True)
    body = await read_json(request, svc.settings.max_body_bytes)
    source = model_name(body)
    name = get(body, "as", "str")
    if not get(body, "stream", "bool", True):
        m = await _store_call(store.pull, source, name=name, quiet=True)
        audit.record("serve_pull", model=m["name"], route="/api/pull", key_id=caller.key_id)
        return {"status": "success"}

    async def progress():
        yield json.dumps({"status": f"pulling {source}"}) + "\n"
        try:
            m = await _store_call(store.pull, source, name=name, quiet=True)
        except ApiError as e:
            yield json.dumps({"error": e.message}) + "\n"
            return
        yield json.dumps({"status": "verifying sha256 digest", "digest": m["source"].get("sha256")}) + "\n"
        yield json.dumps({"status": "writing manifest"}) + "\n"
        yield json.dumps({"status": "success"}) + "\n"
        audit.record("serve_pull", model=m["name"], route="/api/pull", key_id=caller.key_id)

    return StreamingResponse(progress(), media_type="application/x-ndjson")


@router.delete("/api/delete")
async def delete(request: Request):
    svc = _service(request)
    caller = svc.authorize(request, "/api/delete", admin=True)
    body = await read_json(request, svc.settings.max_body_bytes)
    name = model_name(body)
    await _store_call(store.rm, name)
    audit.record("serve_delete", model=name, route="/api/delete", key_id=caller.key_id)
    return JSONResponse({})


@router.post("/api/copy")
async def copy(request: Request):
    svc = _service(request)
    caller = svc.authorize(request, "/api/copy", admin=True)
    body = await read_json(request, svc.settings.max_body_bytes)
    src, dst = get(body, "source", "str"), get(body, "destination", "str")
    if not src or not dst:
        raise ApiError(400, "'source' and 'destination' are required", param="source" if not src else "destination")
    await _store_call(store.cp, src, dst)
    audit.record("serve_copy", model=dst, route="/api/copy", key_id=caller.key_id, source=src)
    return JSONResponse({})


@router.post("/api/create")
async def create(request: Request):
    svc = _service(request)
    caller = svc.authorize(request, "/api/create", admin=True)
    body = await read_json(request, svc.settings.max_body_bytes)
    name = model_name(body)
    text = get(body, "modelfile", "str")
    if text is None:
        base = get(body, "from", "str")
        if not base:
            raise ApiError(400, "'from' (or 'modelfile') is required", param="from")
        lines = [f"FROM {base}"]
        for key, value in get(body, "parameters", "dict", {}).items():
            for v in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}")
        for key in ("system", "template"):
            if get(body, key, "str") is not None:
                lines.append(f'{key.upper()} """{body[key]}"""')
        text = "\n".join(lines) + "\n"
    await _store_call(store.create, name, text)
    audit.record("serve_create", model=name, route="/api/create", key_id=caller.key_id)
    if get(body, "stream", "bool", True):
        return StreamingResponse(iter([json.dumps({"status": "success"}) + "\n"]), media_type="application/x-ndjson")
    return {"status": "success"}
