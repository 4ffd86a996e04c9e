"""The KV cache of the NumPy backend: keys and values of every layer for positions [0, offset).

Every layer keeps all positions, sliding-window layers included (attention slices out the
window), so the cache can be trimmed back to any earlier position, e.g. when a chat turn rewrites
the end of the conversation. The cost is memory for the full context in sliding layers too
(Gemma 3 270M: 36 KB per token for all 18 layers).
"""

from __future__ import annotations

import numpy as np

GROW = 256  # positions added per reallocation


class KVCache:
    """Keys/values per layer, (n_kv_heads, capacity, head_dim) float32 buffers grown on demand."""

    def __init__(self, n_layers: int):
        self.keys: list[np.ndarray | None] = [None] * n_layers
        self.values: list[np.ndarray | None] = [None] * n_layers
        self.offset = 0  # positions held; the next token goes at position `offset`

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v (T, n_kv, D) at positions offset.. and return all keys/values (n_kv, offset+T, D).

        The model calls this for every layer, then `advance(T)` once.
        """
        T = k.shape[0]
        end = self.offset + T
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or buf_k.shape[1] < end:
            cap = (end + GROW - 1) // GROW * GROW
            new_k = np.zeros((k.shape[1], cap, k.shape[2]), np.float32)
            new_v = np.zeros((v.shape[1], cap, v.shape[2]), np.float32)
            if buf_k is not None:
                new_k[:, : self.offset] = buf_k[:, : self.offset]
                new_v[:, : self.offset] = buf_v[:, : self.offset]
            self.keys[layer], self.values[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, self.offset:end] = k.transpose(1, 0, 2)
        buf_v[:, self.offset:end] = v.transpose(1, 0, 2)
        return buf_k[:, :end], buf_v[:, :end]

    def advance(self, n: int) -> None:
        self.offset += n

    def trim(self, n: int) -> int:
        """Forget the last `n` positions (fewer if the cache holds fewer); returns how many."""
        n = max(0, min(n, self.offset))
        self.offset -= n
        return n

    def reset(self) -> None:
        """Forget everything; buffers are kept for reuse."""
        self.offset = 0

    def copy(self) -> "KVCache":
        """An independent cache with the same content (e.g. to branch from a shared prompt)."""
        c = KVCache(len(self.keys))
        c.offset = self.offset
        c.keys = [None if b is None else b[:, : self.offset].copy() for b in self.keys]
        c.values = [None if b is None else b[:, : self.offset].copy() for b in self.values]
        return c

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.keys + self.values if b is not None)
