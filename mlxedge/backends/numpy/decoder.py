"""The decoder skeleton every NumPy architecture shares: embed -> blocks -> norm -> lm_head."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ...errors import MlxEdgeError
from .cache import KVCache
from .lean import matmul_t
from .weights import Embedding, Linear


class Block(Protocol):
    def __call__(self, h: np.ndarray, cache: KVCache, layer: int) -> np.ndarray: ...


class NumpyModel:
    """A causal LM in float32 NumPy: `forward(tokens, cache) -> logits (T, vocab)`.

    Built by the architecture modules (llama.py, gemma3.py, phi3.py); use `load(directory)`.
    """

    weight_mode = "float32"  # how the weights are held (weights.py); set by load()
    matmul = "numpy"         # whose kernels multiply them (gemm.py); set by load()
    kernels = None           # gemm.Kernels when matmul is "onnxruntime"

    def __init__(self, config: dict, embed: Embedding, blocks: list[Block],
                 norm: Callable[[np.ndarray], np.ndarray], lm_head: Linear,
                 embed_scale: float = 1.0, logit_softcap: float | None = None):
        self.config = config
        self.embed = embed
        self.blocks = blocks
        self.norm = norm
        self.lm_head = lm_head
        self.embed_scale = embed_scale
        self.logit_softcap = logit_softcap
        self.vocab_size = lm_head.out_features

    def make_cache(self) -> KVCache:
        """An empty KV cache for this model (keep it across calls for incremental decoding)."""
        return KVCache(len(self.blocks))

    def forward(self, tokens, cache: KVCache | None = None, *, last_only: bool = False) -> np.ndarray:
        """Logits (T, vocab) float32 for `tokens` (T,) placed after what `cache` holds.

        Without a cache the tokens form the whole sequence. With one, they continue it
        (prefill with T > 1 or decode with T == 1) and the cache is extended.
        `last_only=True` returns only the last position's logits, (1, vocab).
        """
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise MlxEdgeError("forward() needs at least one token")
        if ids.min() < 0 or ids.max() >= self.embed_rows:
            raise MlxEdgeError(f"token id out of range 0..{self.embed_rows - 1}")
        cache = cache if cache is not None else self.make_cache()
        h = self.run_blocks(self.embed_tokens(ids), cache)
        cache.advance(len(ids))
        if last_only:
            h = h[-1:]
        return self.head(self.norm(h)).astype(np.float32, copy=False)

    # The steps forward is made of, public so that calibration can run part of the model, feed its
    # own replacement tables, and keep each block's input.
    def embed_tokens(self, ids: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
        """Hidden states (T, hidden) for token ids; `table` (vocab, hidden) replaces the embedding."""
        h = np.ascontiguousarray(table[ids]) if table is not None else self.embed(ids)  # (T, hidden)
        return h * np.float32(self.embed_scale) if self.embed_scale != 1.0 else h

    def run_blocks(self, h: np.ndarray, cache: KVCache, start: int = 0, inputs: list | None = None) -> np.ndarray:
        """Blocks `start`.. over h (T, hidden), before the final norm; `inputs` collects each block's input."""
        for i in range(start, len(self.blocks)):
            if inputs is not None:
                inputs.append(h)
            h = self.blocks[i](h, cache, i)
        return h

    def head(self, hn: np.ndarray, head_w: np.ndarray | None = None) -> np.ndarray:
        """Logits (T, vocab) for normed hidden states; `head_w` (vocab, hidden) replaces the head."""
        logits = matmul_t(head_w, hn) if head_w is not None else self.lm_head(hn)
        if self.logit_softcap:
            logits = np.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    @property
    def embed_rows(self) -> int:
        return self.vocab_size
