"""A batched decode step for the NumPy backend: B sequences, one new token each, one weight pass.

Every linear (q/k/v, o, gate/up, down, lm_head) sees the B new tokens as one (B, hidden) matmul, so
the weights are read once per step however many sequences decode; RoPE, the KV cache update and
attention run per sequence over its own cache (their lengths differ; no padding). For B = 1 the
arithmetic is exactly `NumpyModel.forward` on one token. Llama-family blocks (llama.py) only:
`supports(model)` is False for the others, which the server decodes one sequence at a time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import MlxEdgeError
from .cache import KVCache
from .decoder import NumpyModel
from .layers import Rope, attention, rms_norm
from .llama import Attention, TransformerBlock


def supports(model: NumpyModel) -> bool:
    """The model's blocks are llama-family blocks, which `decode_step` knows how to batch."""
    return bool(model.blocks) and all(isinstance(b, TransformerBlock) for b in model.blocks)


def decode_step(model: NumpyModel, tokens: Sequence[int], caches: Sequence[KVCache]) -> np.ndarray:
    """Logits (B, vocab) float32: token b fed after what caches[b] holds (each cache advances by 1)."""
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if ids.size != len(caches) or ids.size == 0:
        raise MlxEdgeError(f"decode_step needs one token per cache, got {ids.size} and {len(caches)}")
    if ids.min() < 0 or ids.max() >= model.embed_rows:
        raise MlxEdgeError(f"token id out of range 0..{model.embed_rows - 1}")
    positions = np.array([c.offset for c in caches], dtype=np.int64)  # (B,)
    h = model.embed_tokens(ids)  # (B, hidden)
    for i, block in enumerate(model.blocks):
        h = _block(block, h, caches, positions, i)
    for c in caches:
        c.advance(1)
    return model.head(model.norm(h)).astype(np.float32, copy=False)


def _block(block: TransformerBlock, x: np.ndarray, caches, positions, layer: int) -> np.ndarray:
    h = x + _attention(block.self_attn, rms_norm(x, block.input_layernorm, block.eps), caches, positions, layer)
    return h + block.mlp(rms_norm(h, block.post_attention_layernorm, block.eps))


def _attention(a: Attention, x: np.ndarray, caches, positions: np.ndarray, layer: int) -> np.ndarray:
    B = x.shape[0]
    q, k, v = a.qkv(x)                        # (B, n_heads*D), (B, n_kv*D) x2
    q = q.reshape(B, a.n_heads, a.head_dim)  # (B, n_heads, D): one position per row
    k = k.reshape(B, a.n_kv, a.head_dim)
    v = v.reshape(B, a.n_kv, a.head_dim)
    if a.q_norm is not None:
        q = rms_norm(q, a.q_norm, a.eps)
        k = rms_norm(k, a.k_norm, a.eps)
    q, k = rope_rows(a.rope, q, positions), rope_rows(a.rope, k, positions)
    out = np.empty((B, a.n_heads * a.head_dim), np.float32)
    for b, cache in enumerate(caches):
        start = int(positions[b])
        keys, values = cache.update(layer, k[b:b + 1], v[b:b + 1])  # (n_kv, start+1, D)
        k0 = 0 if a.window is None else max(0, start - a.window + 1)
        out[b] = attention(q[b:b + 1], keys[:, k0:], values[:, k0:], a.scale, start, k0, a.window)[0]
    return a.o_proj(out)


def rope_rows(rope: Rope, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`rope(x[b:b+1], positions[b])` for every row b at once (the same float64 -> float32 steps)."""
    if rope.dynamic is not None:  # the base depends on each sequence's length: one row at a time
        return np.concatenate([rope(x[b:b + 1], int(p)) for b, p in enumerate(positions)])
    ang = positions.astype(np.float64)[:, None] * rope.inv_freq[None, :]  # (B, dims/2), as np.outer
    cos = np.cos(ang).astype(np.float32)[:, None, :]  # (B, 1, dims/2)
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    out = np.array(x, dtype=np.float32)
    rot = out[..., : rope.dims]
    if rope.input_scale != 1.0:
        rot *= rope.input_scale
    if rope.traditional:
        x1, x2 = rot[..., 0::2].copy(), rot[..., 1::2].copy()
        rot[..., 0::2] = x1 * cos - x2 * sin
        rot[..., 1::2] = x1 * sin + x2 * cos
    else:
        half = rope.dims // 2
        x1, x2 = rot[..., :half].copy(), rot[..., half:].copy()
        rot[..., :half] = x1 * cos - x2 * sin
        rot[..., half:] = x1 * sin + x2 * cos
    return out
