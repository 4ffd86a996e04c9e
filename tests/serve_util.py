"""Shared by tests/test_serve*.py: `mlxedge serve` on a free loopback port, in a thread of this process
(uvicorn.Server over a socket bound to port 0), built from the command's own argument parser."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from mlxedge.serve.cli import build, configure_parser

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "goldens" / "tiny" / "llama_f32"


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure_parser(p)
    return p.parse_args(list(argv))


class Server:
    """`with Server("--model", path, ...) as s:` -> s.url; stopped (and its models unloaded) on exit."""

    def __init__(self, *argv: str, app=None):
        self.app = app if app is not None else build(parse(*argv))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def service(self):
        return self.app.state.service

    def __enter__(self) -> "Server":
        self.thread.start()
        wait_healthy(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def slow_down(scheduler, seconds: float = 0.005) -> None:
    """Make each decode step take at least `seconds` longer: the tiny model's 2000 tokens take
    under half a second, too short for tests that act while a request is generating."""
    decode = scheduler.stepper.decode
    scheduler.stepper.decode = lambda *a: (time.sleep(seconds), decode(*a))[1]


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def wait_for(predicate, timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
