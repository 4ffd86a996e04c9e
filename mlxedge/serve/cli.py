"""`mlxedge serve`: the OpenAI- and Ollama-compatible server (uvicorn), on 127.0.0.1 by default.

SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish within --grace seconds (then
cancel them), unload, exit 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
from pathlib import Path

import uvicorn
from threadpoolctl import threadpool_limits

from .. import store
from ..store import names
from ..backends import BACKENDS
from ..backends.numpy.gemm import CHOICES, share_threads
from ..errors import MlxEdgeError
from .app import create_app
from .limits import read_keys
from .registry import Registry
from .service import Settings


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=[], metavar="NAME_OR_PATH",
                   help="a store name, bundle directory or .gguf to serve (repeatable; default: the default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--matmul", choices=CHOICES, default=None,
                   help="the NumPy backend's kernels: numpy (its BLAS), onnxruntime (MLAS: 4-bit weights as "
                        "stored, batched float32 products), onnxruntime-int8 (the same with int8 activations, "
                        "as llama.cpp: faster, not mlx-lm's float32 answers) or auto (onnxruntime where "
                        "installed; default: MLXEDGE_MATMUL, else auto)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` (every route but /health)")
    p.add_argument("--api-key-file", help="read the API key from this file")
    p.add_argument("--keys-file", help="one `KEY ROLE` per line, ROLE user (generate, list, show) or admin "
                                       "(also pull, create, copy, delete)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="allow binding a non-loopback address without an API key")
    p.add_argument("--allow-paths", action="store_true",
                   help="let requests name model paths on this machine (default: --model ones and store names)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together per model (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting per model before 429 (default 64)")
    p.add_argument("--max-loaded-models", type=int, default=2)
    p.add_argument("--prompt-cache-mb", type=float, default=64,
                   help="KV caches of recent prompts kept per model for reuse by requests sharing a prefix "
                        "(NumPy backend; 0: off; default 64)")
    p.add_argument("--max-tokens", type=int, default=4096, help="cap on any request's max_tokens (default 4096)")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20, help="request body cap (default 4 MiB)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may run (default 600)")
    p.add_argument("--keep-alive", type=float, default=300.0,
                   help="seconds an idle model loaded on request stays loaded (negative: forever; default 300)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get at shutdown")
    p.add_argument("--log-prompts", action="store_true", help="also write prompts and replies to the audit log")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the NumPy backend's BLAS and MLAS kernels (default: every core; the other "
                        "commands use OPENBLAS_NUM_THREADS, default 1)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(args: argparse.Namespace):
    """The app for parsed arguments (MlxEdgeError for a bad combination)."""
    keys = read_keys(args.api_key, args.api_key_file, args.keys_file)
    if not is_loopback(args.host) and not keys.required and not args.allow_unauthenticated:
        raise MlxEdgeError(f"refusing to serve on {args.host} without an API key: pass --api-key, "
                           f"--api-key-file or --keys-file (or --allow-unauthenticated)")
    for name in ("max_batch", "max_loaded_models", "max_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise MlxEdgeError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_queue < 0 or args.timeout <= 0:
        raise MlxEdgeError("--max-queue must be >= 0 and --timeout > 0")
    if args.threads is not None and args.threads < 1:
        raise MlxEdgeError("--threads must be >= 1")
    # A server decodes several sequences per step: (B, hidden) matmuls, which more cores speed up
    # (docs/serving.md), unlike one sequence's matrix-vector products on a shared box (cli.py).
    threadpool_limits(args.threads or os.cpu_count() or 1, user_api="blas")
    for model in args.model:  # fail now, not at the first request
        if not Path(model).expanduser().exists():
            if not names.is_name(model):
                raise MlxEdgeError(f"--model {model}: no such file or directory")
            store.get(model)
    registry = Registry(args.model, backend=args.backend, matmul=args.matmul, max_loaded=args.max_loaded_models,
                        max_batch=args.max_batch, max_queue=args.max_queue,
                        keep_alive=None if args.keep_alive < 0 else args.keep_alive, allow_paths=args.allow_paths,
                        prompt_cache_bytes=int(args.prompt_cache_mb * (1 << 20)))
    settings = Settings(max_body_bytes=args.max_body_bytes, max_tokens_cap=args.max_tokens,
                        timeout=args.timeout, log_prompts=args.log_prompts)
    return create_app(registry, settings, keys)


def main(args: argparse.Namespace) -> int:
    # this process is ours alone: every MLAS session may share one thread pool (gemm.py)
    share_threads(args.threads or os.cpu_count() or 1)
    app = build(args)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    except OSError as e:
        raise MlxEdgeError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=args.grace,
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn catches SIGTERM/SIGINT, shuts down gracefully, then re-raises them to the handlers in
    # place before it: make those do nothing, so that a requested stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    print(f"mlxedge serve: listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])
    return 0
