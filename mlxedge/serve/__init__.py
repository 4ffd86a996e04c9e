"""`mlxedge serve`: OpenAI- and Ollama-compatible HTTP routes over continuous batching (docs/serving.md).

    app.py            the ASGI app: routers, /health, /metrics, errors in each dialect
    routes_openai.py  /v1/chat/completions, /v1/completions, /v1/models
    routes_ollama.py  /api/generate, /api/chat, /api/ps, /api/show, /api/version (+ ollama_store.py)
    service.py        shared by both: model, limits, submit, audit and metrics per request
    registry.py       loaded models (LRU, keep_alive), one scheduler each
    scheduler.py      continuous batching on a thread per model; batch.py: how a model steps
    prompt_cache.py   KV caches of recent prompts, reused by requests that share a prefix
    limits.py         API keys and roles, body size, JSON field checks
"""

from __future__ import annotations

from .cli import configure_parser, main

__all__ = ["configure_parser", "main"]
