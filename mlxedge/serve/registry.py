"""The server's loaded models: one `Model` and one `Scheduler` each, loaded on demand, LRU-unloaded.

A request names a model by what `--model` said (path or store name), by a bundle folder's name, or
by a store name (loaded on first use). `keep_alive` (Ollama's) unloads a model once it has been
idle that long; 0 unloads it when its last request ends; negative keeps it forever.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import api, store
from ..errors import MlxEdgeError
from ..store import names
from .batch import stepper_for
from .scheduler import Scheduler


class UnknownModel(MlxEdgeError):
    """No such model (404)."""


@dataclass
class Loaded:
    name: str
    model: api.Model
    scheduler: Scheduler
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float | None = None  # seconds idle before unloading; None: forever
    load_seconds: float = 0.0

    @property
    def expires_at(self) -> float | None:
        return None if self.keep_alive is None else time.time() + max(0.0, self.keep_alive -
                                                                        (time.monotonic() - self.last_used))


class Registry:
    def __init__(self, models: list[str], backend: str = "auto", max_loaded: int = 2, max_batch: int = 16,
                 matmul: str | None = None,
                 max_queue: int = 64, keep_alive: float | None = 300.0, allow_paths: bool = False,
                 on_step=None, prompt_cache_bytes: int = 64 << 20):
        self.configured = list(models)
        self.backend = backend
        self.matmul = matmul  # the NumPy backend's kernels (None: MLXEDGE_MATMUL, else auto)
        self.max_loaded = max(1, max_loaded)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.default_keep_alive = keep_alive
        self.allow_paths = allow_paths
        self.on_step = on_step
        self.prompt_cache_bytes = prompt_cache_bytes
        self.loaded: dict[str, Loaded] = {}
        self.loading: set[str] = set()
        self.lock = threading.Lock()
        self.load_locks: dict[str, threading.Lock] = {}

    @property
    def default(self) -> str:
        return self.configured[0] if self.configured else store.default_model()

    def key(self, requested: str | None) -> str:
        """The registry key for a request's `model` (404 for nothing we may load)."""
        if not requested:
            return self.default
        if requested in self.loaded or requested in self.configured:
            return requested
        for name in list(self.loaded) + self.configured:  # a bundle folder's name for its path
            if Path(name).name == requested:
                return name
        if names.is_name(requested) and not Path(requested).exists():
            try:
                store.get(requested)
                return names.canonical(requested)
            except MlxEdgeError:
                pass
        elif self.allow_paths and Path(requested).exists():
            return requested
        raise UnknownModel(f"model {requested!r} not found (loaded: {', '.join(self.loaded) or 'none'}; "
                           f"`mlxedge list` shows the store)")

    def get(self, requested: str | None, keep_alive: float | None | str = "default") -> Loaded:
        """The loaded model for a request, loading it (and unloading the least recently used) first."""
        key = self.key(requested)
        with self.lock:
            lock = self.load_locks.setdefault(key, threading.Lock())
        with lock:
            entry = self.loaded.get(key)
            if entry is None:
                entry = self._load(key)
        entry.last_used = time.monotonic()
        if keep_alive != "default":
            entry.keep_alive = keep_alive
        return entry

    def _load(self, key: str) -> Loaded:
        self.loading.add(key)
        try:
            t0 = time.perf_counter()
            model = api.load(key, backend=self.backend, matmul=self.matmul)
            scheduler = Scheduler(stepper_for(model.engine, self.max_batch, self.prompt_cache_bytes), model.tokenizer, self.max_batch,
                                  self.max_queue, on_step=self.on_step)
            entry = Loaded(key, model, scheduler, keep_alive=None if key in self.configured
                           else self.default_keep_alive, load_seconds=time.perf_counter() - t0)
            with self.lock:
                self.loaded[key] = entry
                while len(self.loaded) > self.max_loaded:
                    idle = [e for e in self.loaded.values() if e is not entry]
                    oldest = min(idle, key=lambda e: (e.scheduler.busy > 0, e.last_used))
                    self._unload_locked(oldest.name)
            return entry
        finally:
            self.loading.discard(key)

    def unload(self, key: str) -> bool:
        with self.lock:
            return self._unload_locked(key)

    def _unload_locked(self, key: str) -> bool:
        entry = self.loaded.pop(key, None)
        if entry is None:
            return False
        entry.scheduler.close()
        return True

    def expire(self) -> list[str]:
        """Unload the idle models whose keep_alive has run out."""
        now = time.monotonic()
        gone = []
        for entry in list(self.loaded.values()):
            if (entry.keep_alive is not None and entry.scheduler.busy == 0
                    and now - entry.last_used >= entry.keep_alive):
                if self.unload(entry.name):
                    gone.append(entry.name)
        return gone

    async def reaper(self, every: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every)
            self.expire()

    def close(self) -> None:
        with self.lock:
            for key in list(self.loaded):
                self._unload_locked(key)
