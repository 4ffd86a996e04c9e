"""OpenAI's routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.

Shapes as in OpenAI's API reference: `chat.completion` / `text_completion` objects with `usage`,
server-sent events of `*.chunk` objects ending in `data: [DONE]`, `stream_options.include_usage`
adding a last chunk with empty `choices` and the usage. Unsupported features answer 400.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .. import store
from .limits import ApiError, get, read_json, stop_list
from .service import FINISH, Caller, Service

router = APIRouter()
UNSUPPORTED = ("tools", "functions", "logit_bias", "response_format", "prediction", "audio")


def service(request: Request) -> Service:
    return request.app.state.service


def message_text(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"'messages[{i}].content[{j}]' must be a text part "
                                    f"({{\"type\": \"text\", \"text\": ...}}); images and audio are not supported",
                               param=f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"'messages[{i}].content' must be a string or an array of text parts",
                   param=f"messages[{i}].content")


def chat_messages(body: dict) -> list[dict]:
    messages = get(body, "messages", "list")
    if not messages:
        raise ApiError(400, "'messages' is required: a non-empty array", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"'messages[{i}]' must be an object with a string 'role'", param=f"messages[{i}]")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": message_text(m.get("content") or "", i)})
    return out


def sampling_fields(body: dict) -> dict:
    """The sampling and length fields every OpenAI generation request has; 400 for what we do not do."""
    for name in UNSUPPORTED:
        if body.get(name):
            raise ApiError(400, f"'{name}' is not supported by this server", param=name)
    if get(body, "n", "int", 1, lo=1) != 1:
        raise ApiError(400, "'n' > 1 is not supported: send n requests", param="n")
    for name in ("frequency_penalty", "presence_penalty"):
        if get(body, name, "number", 0, lo=-2, hi=2) != 0:
            raise ApiError(400, f"'{name}' is not supported (use 'repetition_penalty')", param=name)
    if get(body, "logprobs", ("bool", "int")) or get(body, "top_logprobs", "int"):
        raise ApiError(400, "'logprobs' is not supported by this server", param="logprobs")
    max_tokens = get(body, "max_completion_tokens", "int", None, lo=1)
    if max_tokens is None:
        max_tokens = get(body, "max_tokens", "int", None, lo=1)
    opts = get(body, "stream_options", "dict", {})
    return {"max_tokens": max_tokens, "stop": stop_list(body.get("stop")),
            "stream": get(body, "stream", "bool", False),
            "include_usage": get(opts, "include_usage", "bool", False, where="stream_options."),
            "temp": get(body, "temperature", "number", None, lo=0, hi=2),
            "top_p": get(body, "top_p", "number", None, lo=0, hi=1),
            "top_k": get(body, "top_k", "int", None, lo=0),
            "min_p": get(body, "min_p", "number", None, lo=0, hi=1),
            "repetition_penalty": get(body, "repetition_penalty", "number", None, lo=0),
            "seed": get(body, "seed", "int", None),
            "ignore_eos": get(body, "ignore_eos", "bool", False)}  # vLLM's and llama.cpp's extension


def usage(job) -> dict:
    return {"prompt_tokens": len(job.ids), "completion_tokens": len(job.tokens),
            "total_tokens": len(job.ids) + len(job.tokens)}


@router.get("/v1/models")
async def models(request: Request):
    svc = service(request)
    svc.authorize(request, "/v1/models")
    seen, data = set(), []
    for name, entry in list(svc.registry.loaded.items()):
        seen.add(name)
        data.append({"id": name, "object": "model", "created": int(entry.loaded_at), "owned_by": "mlxedge"})
    for name in svc.registry.configured:
        if name not in seen:
            seen.add(name)
            data.append({"id": name, "object": "model", "created": int(time.time()), "owned_by": "mlxedge"})
    for row in store.list_models():
        if row["name"] not in seen:
            data.append({"id": row["name"], "object": "model", "created": int(time.time()), "owned_by": "mlxedge"})
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await _complete(request, chat=True)


@router.post("/v1/completions")
async def completions(request: Request):
    return await _complete(request, chat=False)


def _prompt_ids(entry, body: dict, chat: bool) -> tuple[list[int], str]:
    tok = entry.model.tokenizer
    if chat:
        messages = chat_messages(body)
        system = entry.model.defaults.get("system")
        if system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}] + messages
        if tok.chat_template is None:
            raise ApiError(400, f"model {entry.name!r} has no chat template: use /v1/completions", param="model")
        return tok.encode_chat(messages), json.dumps(messages, ensure_ascii=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tok.encode(prompt), prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t < tok.vocab_size for t in prompt):
            raise ApiError(400, "'prompt' holds a token id out of the vocabulary", param="prompt")
        return list(prompt), str(prompt)
    raise ApiError(400, "'prompt' must be a string (or one string, or an array of token ids)", param="prompt")


async def _complete(request: Request, chat: bool):
    svc = service(request)
    route = "/v1/chat/completions" if chat else "/v1/completions"
    caller = svc.authorize(request, route)
    body = await read_json(request, svc.settings.max_body_bytes)
    f = sampling_fields(body)
    entry = await svc.model(get(body, "model", "str"))
    ids, prompt_text = _prompt_ids(entry, body, chat)
    params = svc.sampling(entry, temp=f["temp"], top_p=f["top_p"], top_k=f["top_k"], min_p=f["min_p"],
                          repetition_penalty=f["repetition_penalty"], seed=f["seed"])
    max_tokens = svc.limits(entry, ids, f["max_tokens"])
    stop = f["stop"] or tuple(entry.model.defaults.get("options", {}).get("stop", ()))  # a store model's
    job = svc.submit(entry, ids, params, max_tokens, stop, f["ignore_eos"])
    meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], "created": int(time.time()),
            "model": entry.name, "system_fingerprint": f"mlxedge-{entry.model.backend}"}
    if f["stream"]:
        return StreamingResponse(_stream(svc, entry, job, caller, meta, chat, f["include_usage"], prompt_text),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        text = await svc.watch(request, entry, job)
    except ApiError as e:
        svc.finished(entry, job, caller, outcome="error", error=e.message, prompt_text=prompt_text)
        raise
    svc.finished(entry, job, caller, prompt_text=prompt_text)
    finish = FINISH.get(job.finish_reason, "stop")
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
               "finish_reason": finish} if chat else
              {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
    return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion",
                         "choices": [choice], "usage": usage(job)})


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(svc: Service, entry, job, caller: Caller, meta: dict, chat: bool, include_usage: bool,
                  prompt_text: str):
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str | None, finish: str | None = None, first: bool = False) -> dict:
        if chat:
            delta = ({"role": "assistant", "content": ""} if first else
                     {} if piece is None else {"content": piece})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        return {**meta, "object": obj, "choices": [choice], **({"usage": None} if include_usage else {})}

    outcome, error = "ok", None
    try:
        if chat:
            yield _sse(chunk(None, first=True))
        async for piece in svc.events(entry, job):
            yield _sse(chunk(piece))
        yield _sse(chunk(None, FINISH.get(job.finish_reason, "stop")))
        if include_usage:
            yield _sse({**meta, "object": obj, "choices": [], "usage": usage(job)})
    except ApiError as e:
        outcome, error = "error", e.message
        yield _sse({"error": {"message": e.message, "type": "server_error", "param": None, "code": None}})
    finally:
        svc.finished(entry, job, caller, outcome=outcome, error=error, prompt_text=prompt_text)
    yield "data: [DONE]\n\n"
