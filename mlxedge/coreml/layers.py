"""MIL building blocks of the Core ML decoder: linear, RMSNorm, RoPE, cached attention.

The MIL counterparts of backends/numpy/layers.py, over one sequence laid out (T, ...). Ops are
named after the module they compute ("model_layers_0_input_layernorm_rms_...") so that a float16
export can keep chosen ones in float32 by name (export.py). Imported only by the export command.
"""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

MASKED = -30000.0  # added to masked scores: exp() is 0 in float32, and it fits float16


def linear(x, weight, bias: np.ndarray | None, name: str):
    """x (T, in) @ weight (out, in).T (+ bias)."""
    y = mb.matmul(x=x, y=weight, transpose_y=True, name=f"{name}_matmul")
    return mb.add(x=y, y=bias, name=f"{name}_bias") if bias is not None else y


def rms_norm(x, weight: np.ndarray, eps: float, name: str):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (ops named `*_rms_*`)."""
    ms = mb.reduce_mean(x=mb.mul(x=x, y=x, name=f"{name}_rms_sq"), axes=[-1], keep_dims=True,
                        name=f"{name}_rms_mean")
    r = mb.rsqrt(x=ms, epsilon=np.float32(eps), name=f"{name}_rms_rsqrt")
    return mb.mul(x=mb.mul(x=x, y=r, name=f"{name}_rms_scale"), y=weight, name=f"{name}_rms_out")


class RopeTables:
    """cos/sin (context, dims/2) of one numpy-backend Rope, gathered per call at the positions."""

    def __init__(self, rope, context: int, key: str):
        pos = np.arange(context, dtype=np.float64)
        ang = np.outer(pos, rope.inv_freq)  # (context, dims/2), as the NumPy backend computes it
        self.cos = np.cos(ang).astype(np.float32)
        self.sin = np.sin(ang).astype(np.float32)
        self.dims = rope.dims
        self.traditional = rope.traditional
        self.input_scale = float(rope.input_scale)
        self.key = key
        self._at = None

    def at(self, positions):
        """(T, 1, dims/2) cos and sin for positions (T,), built once per program."""
        if self._at is None:
            c = mb.gather(x=self.cos, indices=positions, axis=0, name=f"rope_{self.key}_cos")
            s = mb.gather(x=self.sin, indices=positions, axis=0, name=f"rope_{self.key}_sin")
            self._at = (mb.expand_dims(x=c, axes=[1]), mb.expand_dims(x=s, axes=[1]))
        return self._at

    def apply(self, x, positions, head_dim: int, name: str):
        """x (T, heads, head_dim) rotated on its first `dims` features (the rest pass through)."""
        cos, sin = self.at(positions)
        d, h = self.dims, self.dims // 2
        rot = x if d == head_dim else mb.slice_by_index(x=x, begin=[0, 0, 0], end=[0, 0, d],
                                                        end_mask=[True, True, False])
        if self.input_scale != 1.0:
            rot = mb.mul(x=rot, y=np.float32(self.input_scale))
        if self.traditional:  # pairs (2i, 2i+1)
            pairs = mb.reshape(x=rot, shape=[-1, x.shape[1], h, 2])
            x1 = mb.slice_by_index(x=pairs, begin=[0, 0, 0, 0], end=[0, 0, 0, 1], end_mask=[True, True, True, False],
                                   squeeze_mask=[False, False, False, True])
            x2 = mb.slice_by_index(x=pairs, begin=[0, 0, 0, 1], end=[0, 0, 0, 2], end_mask=[True, True, True, False],
                                   squeeze_mask=[False, False, False, True])
        else:  # pairs (i, i + dims/2)
            x1 = mb.slice_by_index(x=rot, begin=[0, 0, 0], end=[0, 0, h], end_mask=[True, True, False])
            x2 = mb.slice_by_index(x=rot, begin=[0, 0, h], end=[0, 0, d], end_mask=[True, True, False])
        y1 = mb.sub(x=mb.mul(x=x1, y=cos), y=mb.mul(x=x2, y=sin))
        y2 = mb.add(x=mb.mul(x=x1, y=sin), y=mb.mul(x=x2, y=cos))
        if self.traditional:
            out = mb.reshape(x=mb.stack(values=[y1, y2], axis=-1), shape=[-1, x.shape[1], d])
        else:
            out = mb.concat(values=[y1, y2], axis=-1)
        if d != head_dim:
            rest = mb.slice_by_index(x=x, begin=[0, 0, d], end=[0, 0, head_dim], end_mask=[True, True, False])
            out = mb.concat(values=[out, rest], axis=-1)
        return mb.identity(x=out, name=f"{name}_rope")


def causal_mask(q_pos, k_pos, window: int | None, name: str):
    """(T, S) float: 0 where query at q_pos (T,) may see key at k_pos (S,), MASKED elsewhere."""
    q = mb.expand_dims(x=q_pos, axes=[1])  # (T, 1)
    k = mb.expand_dims(x=k_pos, axes=[0])  # (1, S)
    allowed = mb.less_equal(x=k, y=q)
    if window is not None:
        allowed = mb.logical_and(x=allowed, y=mb.greater(x=k, y=mb.sub(x=q, y=np.int32(window))))
    blocked = mb.sub(x=np.float32(1.0), y=mb.cast(x=allowed, dtype="fp32"))  # 1 where masked
    return mb.mul(x=blocked, y=np.float32(MASKED), name=name)


def cached_attention(q, k, v, k_state, v_state, offset, end, mask, n_kv: int, head_dim: int,
                     scale: float, name: str):
    """Grouped-query attention of q (T, H, D) over the cache after writing k, v (T, K, D) into it.

    The states (K, context, D) float16 receive k, v at positions [offset, end); attention reads
    positions [0, end). Returns (T, H * D).
    """
    n_heads = q.shape[1]
    rep = n_heads // n_kv
    begin = mb.concat(values=[np.array([0], np.int32), offset, np.array([0], np.int32)], axis=0)
    stop = mb.concat(values=[np.array([n_kv], np.int32), end, np.array([head_dim], np.int32)], axis=0)
    read = []
    for x, state, kind in ((k, k_state, "key"), (v, v_state, "value")):
        x16 = mb.cast(x=mb.transpose(x=x, perm=[1, 0, 2]), dtype="fp16")  # (K, T, D)
        full = mb.slice_update(x=mb.read_state(input=state), update=x16, begin=begin, end=stop,
                               name=f"{name}_{kind}_write")
        mb.coreml_update_state(state=state, value=full, name=f"{name}_{kind}_update")
        seen = mb.slice_by_index(x=full, begin=np.zeros(3, np.int32), end=stop, name=f"{name}_{kind}_read")
        read.append(mb.cast(x=seen, dtype="fp32"))  # (K, end, D)
    keys, values = read
    qs = mb.mul(x=q, y=np.float32(scale))
    # query head h reads kv head h // rep: (T, K, rep, D) -> (K, rep * T, D)
    qh = mb.transpose(x=mb.reshape(x=qs, shape=[-1, n_kv, rep, head_dim]), perm=[1, 2, 0, 3])
    qh = mb.reshape(x=qh, shape=[n_kv, -1, head_dim])
    scores = mb.matmul(x=qh, y=keys, transpose_y=True, name=f"{name}_scores")  # (K, rep*T, end)
    if rep > 1:
        mask = mb.tile(x=mask, reps=[rep, 1])
    probs = mb.softmax(x=mb.add(x=scores, y=mask), axis=-1, name=f"{name}_probs")
    out = mb.matmul(x=probs, y=values)  # (K, rep*T, D)
    out = mb.transpose(x=mb.reshape(x=out, shape=[n_kv, rep, -1, head_dim]), perm=[2, 0, 1, 3])
    return mb.reshape(x=out, shape=[-1, n_heads * head_dim], name=f"{name}_out")  # (T, H*D)
