"""Ollama's routes: /api/generate and /api/chat (NDJSON streams by default), /api/tags, /api/show,
/api/ps, /api/version; and the store's /api/pull, /api/delete, /api/copy, /api/create (admin keys).

Shapes as in Ollama's docs/api.md: every streamed object has `model`, `created_at` and `done`; the
last one adds `done_reason`, `total_duration`, `load_duration`, `prompt_eval_count`,
`prompt_eval_duration`, `eval_count`, `eval_duration` (nanoseconds).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .. import __version__
from .limits import ApiError, get, model_name, read_json, stop_list
from .ollama_store import router as store_router, model_details, show_model
from .service import FINISH, Caller, Service, timings

router = APIRouter()
router.include_router(store_router)
# Ollama option -> (our sampling name, kind, lo, hi)
OPTIONS = {"temperature": ("temp", "number", 0, None), "top_k": ("top_k", "int", 0, None),
           "top_p": ("top_p", "number", 0, 1), "min_p": ("min_p", "number", 0, 1),
           "repeat_penalty": ("repetition_penalty", "number", 0, None),
           "repeat_last_n": ("repetition_context_size", "int", 1, None), "seed": ("seed", "int", None, None)}


def service(request: Request) -> Service:
    return request.app.state.service


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def keep_alive(value) -> float | None | str:
    """Ollama's keep_alive: seconds (number) or a duration ("5m", "1h30m", "0"); negative: forever."""
    if value is None:
        return "default"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return keep_alive(float(text))
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if text.startswith("-"):
            return None
        if parts and "".join(n + u for n, u in parts) == text:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
            return sum(float(n) * scale[u] for n, u in parts)
    raise ApiError(400, f"'keep_alive' must be a number of seconds or a duration like \"5m\", got {value!r}",
                   param="keep_alive")


def options(body: dict) -> dict:
    opts = get(body, "options", "dict", {})
    out = {}
    for name, (ours, kind, lo, hi) in OPTIONS.items():
        out[ours] = get(opts, name, kind, None, lo=lo, hi=hi, where="options.")
    num_predict = get(opts, "num_predict", "int", None, where="options.")
    out["max_tokens"] = None if num_predict is None or num_predict < 0 else max(1, num_predict)
    out["num_ctx"] = get(opts, "num_ctx", "int", None, lo=1, where="options.")
    out["stop"] = stop_list(opts.get("stop"), "options.stop")
    return out


@router.get("/api/version")
async def version(request: Request):
    return {"version": __version__}


@router.get("/api/ps")
async def ps(request: Request):
    svc = service(request)
    svc.authorize(request, "/api/ps")
    models = []
    for name, e in list(svc.registry.loaded.items()):
        size = sum(p.stat().st_size for p in e.model.path.glob("*.safetensors"))
        expires = e.expires_at
        digest = e.model.defaults.get("id") or ""  # a store model's id (names and cached .gguf paths)
        models.append({"name": name, "model": name, "size": size, "digest": digest, "size_vram": 0,
                       "details": model_details(e.model.path),
                       "expires_at": datetime.fromtimestamp(expires or 4102444800, timezone.utc).isoformat(),
                       "context_length": e.model.context_length, "backend": e.model.backend,
                       "active": len(e.scheduler.active), "queued": e.scheduler.queue_depth})
    return {"models": models}


@router.post("/api/show")
async def show(request: Request):
    svc = service(request)
    svc.authorize(request, "/api/show")
    body = await read_json(request, svc.settings.max_body_bytes)
    name = model_name(body)
    return show_model(svc, name)


@router.post("/api/generate")
async def generate(request: Request):
    return await _generate(request, chat=False)


@router.post("/api/chat")
async def chat(request: Request):
    return await _generate(request, chat=True)


def _chat_ids(entry, body: dict) -> tuple[list[int], str]:
    messages = get(body, "messages", "list", [])
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content", ""), str):
            raise ApiError(400, f"'messages[{i}]' must be an object with string 'role' and 'content'",
                           param=f"messages[{i}]")
        if m.get("images"):
            raise ApiError(400, f"'messages[{i}].images': images are not supported", param=f"messages[{i}].images")
        out.append({"role": m["role"], "content": m.get("content", "")})
    system = entry.model.defaults.get("system")
    if system and not any(m["role"] == "system" for m in out):
        out = [{"role": "system", "content": system}] + out
    if entry.model.tokenizer.chat_template is None:
        raise ApiError(400, f"model {entry.name!r} has no chat template: use /api/generate", param="model")
    return entry.model.tokenizer.encode_chat(out), json.dumps(out, ensure_ascii=False)


def _prompt_ids(entry, body: dict) -> tuple[list[int], str]:
    prompt = get(body, "prompt", "str", "")
    system = get(body, "system", "str", None)
    if get(body, "suffix", "str"):
        raise ApiError(400, "'suffix' (fill-in-the-middle) is not supported", param="suffix")
    if get(body, "raw", "bool", False) or entry.model.tokenizer.chat_template is None:
        return entry.model.tokenizer.encode(prompt), prompt
    return entry.model.encode_prompt(prompt, system=system), prompt


async def _generate(request: Request, chat: bool):
    svc = service(request)
    route = "/api/chat" if chat else "/api/generate"
    caller = svc.authorize(request, route)
    body = await read_json(request, svc.settings.max_body_bytes)
    if get(body, "format", ("str", "dict")) or get(body, "tools", "list"):
        raise ApiError(400, "'format' and 'tools' are not supported by this server", param="format")
    opts = options(body)
    stream = get(body, "stream", "bool", True)
    alive = keep_alive(body.get("keep_alive"))
    t0 = time.perf_counter()
    entry = await svc.model(get(body, "model", "str"), alive)
    load_ns = int((time.perf_counter() - t0) * 1e9)
    base = {"model": entry.name}
    empty = not body.get("messages") if chat else not body.get("prompt")
    if empty:  # Ollama: an empty request loads (or with keep_alive 0 unloads) the model
        reason = "load"
        if alive == 0:
            svc.registry.unload(entry.name)
            reason = "unload"
        done = {**base, "created_at": now_iso(), "done": True, "done_reason": reason,
                **({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})}
        return JSONResponse(done)
    ids, prompt_text = _chat_ids(entry, body) if chat else _prompt_ids(entry, body)
    params = svc.sampling(entry, **{k: opts[k] for k in (v[0] for v in OPTIONS.values())})
    max_tokens = svc.limits(entry, ids, opts["max_tokens"], opts["num_ctx"])
    stop = opts["stop"] or tuple(entry.model.defaults.get("options", {}).get("stop", ()))
    job = svc.submit(entry, ids, params, max_tokens, stop)

    def piece(text: str) -> dict:
        out = {**base, "created_at": now_iso()}
        out.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
        return {**out, "done": False}

    def final(text: str = "") -> dict:
        out = piece(text)
        out.update(done=True, done_reason=FINISH.get(job.finish_reason, "stop"), load_duration=load_ns,
                   **timings(job))
        if not chat:
            out["context"] = job.ids + job.tokens
        return out

    if not stream:
        try:
            text = await svc.watch(request, entry, job)
        except ApiError as e:
            svc.finished(entry, job, caller, outcome="error", error=e.message, prompt_text=prompt_text)
            raise
        svc.finished(entry, job, caller, prompt_text=prompt_text)
        return JSONResponse(final(text))
    return StreamingResponse(_ndjson(svc, entry, job, caller, piece, final, prompt_text),
                             media_type="application/x-ndjson")


async def _ndjson(svc: Service, entry, job, caller: Caller, piece, final, prompt_text: str):
    outcome, error = "ok", None
    try:
        async for text in svc.events(entry, job):
            yield json.dumps(piece(text), ensure_ascii=False) + "\n"
        yield json.dumps(final(), ensure_ascii=False) + "\n"
    except ApiError as e:
        outcome, error = "error", e.message
        yield json.dumps({"error": e.message}) + "\n"
    finally:
        svc.finished(entry, job, caller, outcome=outcome, error=error, prompt_text=prompt_text)
