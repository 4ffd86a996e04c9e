"""Batched steps for the NumPy backend: several sequences through the model in one weight pass.

`decode_step`: B sequences, one new token each. `extend_step`: B sequences, any number of new tokens
each (prompts, or what the prompt cache did not hold). Every linear (q/k/v, o, gate/up, down) sees
all new tokens as one (rows, hidden) matmul, so the weights are read once per step however many
sequences run; RoPE, the KV cache update and attention run per sequence over its own cache (their
lengths differ; no padding); the head runs on each sequence's last row only. For one sequence the
arithmetic is exactly `NumpyModel.forward(..., last_only=True)`. Llama-family blocks (llama.py)
only: `supports(model)` is False for the others, which the server runs one sequence at a time.
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


def linears(model: NumpyModel) -> list:
    """Every Linear a batched step multiplies by."""
    found = [model.lm_head]
    for b in model.blocks:
        for f in (b.self_attn.qkv, b.mlp.gate_up):
            found += [f.one] if f.one is not None else f.parts
        found += [b.self_attn.o_proj, b.mlp.down_proj]
    return found


def decode_step(model: NumpyModel, tokens: Sequence[int], caches: Sequence[KVCache]) -> np.ndarray:
    """Logits (B, vocab) float32: token b fed after what caches[b] holds (each cache advances by 1)."""
    return extend_step(model, [[t] for t in tokens], caches)


def extend_step(model: NumpyModel, segments: Sequence[Sequence[int]], caches: Sequence[KVCache]) -> np.ndarray:
    """Logits (B, vocab) float32 of each segment's last token; segment b is fed after caches[b]."""
    lengths = [len(s) for s in segments]
    if len(segments) != len(caches) or not segments or min(lengths) == 0:
        raise MlxEdgeError(f"extend_step needs one non-empty segment per cache, got {lengths} and {len(caches)}")
    ids = np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1) for s in segments])  # (rows,)
    if ids.min() < 0 or ids.max() >= model.embed_rows:
        raise MlxEdgeError(f"token id out of range 0..{model.embed_rows - 1}")
    ends = np.cumsum(lengths)
    bounds = list(zip((ends - lengths).tolist(), ends.tolist()))  # rows of each segment
    positions = np.concatenate([np.arange(c.offset, c.offset + n) for c, n in zip(caches, lengths)])
    h = model.embed_tokens(ids)  # (rows, hidden)
    for i, block in enumerate(model.blocks):
        h = _block(block, h, caches, positions, bounds, i)
    for c, n in zip(caches, lengths):
        c.advance(n)
    return model.head(model.norm(h[ends - 1])).astype(np.float32, copy=False)


def _block(block: TransformerBlock, x: np.ndarray, caches, positions, bounds, layer: int) -> np.ndarray:
    h = x + _attention(block.self_attn, rms_norm(x, block.input_layernorm, block.eps), caches, positions,
                       bounds, layer)
    return h + block.mlp(rms_norm(h, block.post_attention_layernorm, block.eps))


def _attention(a: Attention, x: np.ndarray, caches, positions: np.ndarray, bounds, layer: int) -> np.ndarray:
    R = x.shape[0]
    q, k, v = a.qkv(x)                        # (R, n_heads*D), (R, n_kv*D) x2
    q = q.reshape(R, a.n_heads, a.head_dim)  # (R, n_heads, D): each row at its own position
    k = k.reshape(R, a.n_kv, a.head_dim)
    v = v.reshape(R, a.n_kv, a.head_dim)
    if a.q_norm is not None:
        q = rms_norm(q, a.q_norm, a.eps)
        k = rms_norm(k, a.k_norm, a.eps)
    q, k = rope_rows(a.rope, q, positions), rope_rows(a.rope, k, positions)
    out = np.empty((R, a.n_heads * a.head_dim), np.float32)
    for (s, e), cache in zip(bounds, caches):
        start = cache.offset
        keys, values = cache.update(layer, k[s:e], v[s:e])  # (n_kv, start+T, D)
        k0 = 0 if a.window is None else max(0, start - a.window + 1)
        out[s:e] = attention(q[s:e], keys[:, k0:], values[:, k0:], a.scale, start, k0, a.window)
    return a.o_proj(out)


def rope_rows(rope: Rope, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`rope(x[b:b+1], positions[b])` for every row b at once (the same float64 -> float32 steps)."""
    if rope.dynamic is not None:  # the base depends on the sequence's length: one row at a time
        return np.concatenate([rope(x[b:b + 1], int(p)) for b, p in enumerate(positions)])
    ang = positions.astype(np.float64)[:, None] * rope.inv_freq[None, :]  # (B, dims/2), as np.outer
    cos = np.cos(ang).astype(np.float32)[:, None, :]  # (B, 1, dims/2)
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    return rope.rotate(x, cos, sin)
