"""The ASGI app: routes from routes_openai.py and routes_ollama.py, /health and /metrics, errors in
each dialect (OpenAI's `{"error": {"message", "type", "param", "code"}}`, Ollama's `{"error": "..."}`),
models loaded in the background at startup (/health answers 503 until they are)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import MlxEdgeError
from .limits import ApiError, Keys
from .metrics import Metrics
from .registry import Registry
from .routes_ollama import router as ollama_router
from .routes_openai import router as openai_router
from .service import Service, Settings

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def error_response(path: str, status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    if path.startswith("/v1"):
        body = {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param,
                          "code": code}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


class CountRequests:
    """Requests by route and status (a plain ASGI middleware: Starlette's BaseHTTPMiddleware would
    hide a client's disconnect from the routes)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.requests.labels(path, str(status["code"])).inc()


def create_app(registry: Registry, settings: Settings | None = None, keys: Keys | None = None,
               preload: bool = True) -> FastAPI:
    """The server for `registry`'s models; `preload` loads the configured models at startup."""
    metrics = Metrics()
    registry.on_step = metrics.step
    service = Service(registry, metrics, settings or Settings(), keys)
    state = {"loading": preload and bool(registry.configured), "error": None}

    def load_all() -> None:
        try:
            for name in registry.configured or [registry.default]:
                registry.get(name)
        except MlxEdgeError as e:
            state["error"] = str(e)
        finally:
            state["loading"] = False

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if preload:
            state["loading"] = True
            threading.Thread(target=load_all, name="mlxedge-preload", daemon=True).start()
        reaper = asyncio.create_task(registry.reaper())
        try:
            yield
        finally:
            service.shutting_down = True
            reaper.cancel()
            await asyncio.to_thread(registry.close)

    app = FastAPI(title="mlxedge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(openai_router)
    app.include_router(ollama_router)

    app.add_middleware(CountRequests, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(request.url.path, e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error_response(request.url.path, e.status_code, str(e.detail), headers=e.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        message = str(e) if isinstance(e, MlxEdgeError) else f"internal error: {type(e).__name__}: {e}"
        return error_response(request.url.path, 500, message)

    @app.get("/health")
    async def health():
        if state["loading"] or registry.loading:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        if state["error"] and not registry.loaded:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        return {"status": "ok", "models": list(registry.loaded)}

    @app.get("/metrics")
    async def metrics_route(request: Request):
        service.authorize(request, "/metrics")
        metrics.loaded.set(len(registry.loaded))
        for name, entry in list(registry.loaded.items()):
            metrics.queue_depth.labels(name).set(entry.scheduler.queue_depth)
            metrics.active.labels(name).set(len(entry.scheduler.active))
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/")
    async def root():
        return Response("mlxedge is running", media_type="text/plain")

    app.state.started = time.time()
    return app
