"""The prompt cache: KV caches of recent prompts and finished sequences, reused by any new request
that starts with the same tokens (a shared system prompt, the earlier turns of a chat), so that
only the rest is prefilled. NumPy backend caches (`KVCache.copy`/`trim`); bounded in bytes, least
recently used dropped first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from ..backends.numpy.cache import KVCache


class PromptCache:
    def __init__(self, max_bytes: int = 64 << 20, min_tokens: int = 4):
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens  # shorter common prefixes are not worth a copy
        self.entries: OrderedDict[int, tuple[np.ndarray, KVCache]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.reused_tokens = 0
        self._next = 0

    def lookup(self, ids: Sequence[int]) -> tuple[KVCache, int] | None:
        """A copy of the cache sharing the longest prefix with `ids`, trimmed to it (always leaving
        at least one token of `ids` to feed), and the prefix length; None below `min_tokens`."""
        if not self.entries or len(ids) <= self.min_tokens:
            return None
        want = np.asarray(ids, dtype=np.int64)
        best, best_n = None, 0
        for key, (tokens, _) in self.entries.items():
            n = min(len(tokens), len(want) - 1)
            differ = np.flatnonzero(tokens[:n] != want[:n])
            common = int(differ[0]) if differ.size else n
            if common > best_n:
                best, best_n = key, common
        if best is None or best_n < self.min_tokens:
            return None
        self.entries.move_to_end(best)
        cache = self.entries[best][1].copy()
        cache.trim(cache.offset - best_n)
        self.hits += 1
        self.reused_tokens += best_n
        return cache, best_n

    def store(self, tokens: Sequence[int], cache: KVCache) -> None:
        """Keep a copy of `cache`, which holds exactly `tokens`."""
        if cache.offset < self.min_tokens or self.max_bytes <= 0:
            return
        held = np.asarray(tokens[:cache.offset], dtype=np.int64)
        for key, (tokens_, _) in self.entries.items():  # already covered by a longer entry
            if len(tokens_) >= len(held) and np.array_equal(tokens_[:len(held)], held):
                self.entries.move_to_end(key)
                return
        copy = cache.copy()
        if copy.nbytes > self.max_bytes:
            return
        self.entries[self._next] = (held, copy)
        self._next += 1
        self.nbytes += copy.nbytes
        while self.nbytes > self.max_bytes:
            _, (_, old) = self.entries.popitem(last=False)
            self.nbytes -= old.nbytes
