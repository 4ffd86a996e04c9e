"""Building blocks shared by the NumPy architectures: norms, activations, RoPE, attention.

Activations are laid out (T, ...) for one sequence: the NumPy backend runs batch size 1.
Everything computes in float32, as mlx-lm does for float32 weights.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import MlxEdgeError


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (mx.fast.rms_norm)."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    return x * (1.0 / np.sqrt(ms + eps)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    # sigmoid via tanh: no overflow warnings for large negative x
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))


def gelu_approx(x: np.ndarray) -> np.ndarray:
    """The tanh approximation of GELU (mlx.nn.gelu_approx, gemma's `gelu_pytorch_tanh`)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - np.max(x, axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= np.sum(x, axis=-1, keepdims=True)
    return x


# -- rotary position embedding ------------------------------------------------------------------

class Rope:
    """Rotary embedding on the first `dims` features of each head (the rest pass through).

    `inv_freq` (dims/2,) are the angular speeds: position p rotates pair i by p * inv_freq[i].
    Non-traditional pairs feature i with i + dims/2 (mlx's default); traditional pairs 2i, 2i+1.
    """

    def __init__(self, dims: int, inv_freq: np.ndarray, traditional: bool = False,
                 input_scale: float = 1.0, dynamic: dict | None = None):
        self.dims = dims
        self.inv_freq = np.asarray(inv_freq, dtype=np.float64)
        self.traditional = traditional
        self.input_scale = input_scale  # longrope / yarn multiply the rotated part first
        self.dynamic = dynamic          # dynamic NTK: the base grows with the sequence length
        self._last = None               # ((start, T), cos, sin) of the latest call

    def _cos_sin(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        # every layer asks for the same positions in one forward: compute them once
        if self._last is None or self._last[0] != (start, n):
            ang = self._angles(start, n)
            cos = np.cos(ang).astype(np.float32)[:, None, :]  # (T, 1, dims/2)
            sin = np.sin(ang).astype(np.float32)[:, None, :]
            self._last = ((start, n), cos, sin)
        return self._last[1], self._last[2]

    def _angles(self, start: int, n: int) -> np.ndarray:
        inv_freq = self.inv_freq
        if self.dynamic is not None:
            d = self.dynamic
            seq_len = max(n + start, d["max_position_embeddings"])
            base = d["base"] * ((d["factor"] * seq_len / d["max_position_embeddings"])
                                - (d["factor"] - 1)) ** (self.dims / (self.dims - 2))
            inv_freq = base ** (-np.arange(0, self.dims, 2) / self.dims)
        pos = np.arange(start, start + n, dtype=np.float64)
        return np.outer(pos, inv_freq)  # (T, dims/2)

    def __call__(self, x: np.ndarray, start: int) -> np.ndarray:
        """x (T, n_heads, head_dim), rotated for positions start .. start+T-1."""
        return self.rotate(x, *self._cos_sin(start, x.shape[0]))  # cos, sin (T, 1, dims/2) each

    def rotate(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x (T, n_heads, head_dim) rotated by angles whose cos/sin are (T, 1, dims/2)."""
        out = np.array(x, dtype=np.float32)  # a copy; pass-through features stay as they are
        rot = out[..., : self.dims]
        if self.input_scale != 1.0:
            rot *= self.input_scale
        if self.traditional:
            x1, x2 = rot[..., 0::2].copy(), rot[..., 1::2].copy()
            rot[..., 0::2] = x1 * cos - x2 * sin
            rot[..., 1::2] = x1 * sin + x2 * cos
        else:
            h = self.dims // 2
            x1, x2 = rot[..., :h].copy(), rot[..., h:].copy()
            rot[..., :h] = x1 * cos - x2 * sin
            rot[..., h:] = x1 * sin + x2 * cos
        return out


def make_rope(dims: int, base: float, traditional: bool = False, scaling: dict | None = None,
              max_position_embeddings: int | None = None) -> Rope:
    """The rotary embedding mlx-lm's `initialize_rope` builds for this config (rope_utils.py)."""
    exponents = np.arange(0, dims, 2, dtype=np.float64) / dims
    rope_type = "default"
    if scaling:
        rope_type = scaling.get("type") or scaling.get("rope_type") or "default"
    if rope_type == "default":
        return Rope(dims, base ** -exponents, traditional)
    if rope_type == "linear":
        return Rope(dims, base ** -exponents / scaling["factor"], traditional)
    if rope_type == "llama3":
        return Rope(dims, 1.0 / _llama3_periods(dims, base, scaling), traditional)
    if rope_type == "yarn":
        periods, mscale = _yarn_periods(dims, base, scaling)
        return Rope(dims, 1.0 / periods, traditional, input_scale=mscale)
    if rope_type in ("longrope", "su"):
        return longrope(dims, base, scaling, max_position_embeddings,
                        scaling["original_max_position_embeddings"])
    if rope_type == "dynamic":
        return Rope(dims, base ** -exponents, traditional,
                    dynamic={"base": base, "factor": scaling["factor"],
                             "max_position_embeddings": max_position_embeddings})
    raise MlxEdgeError(f"rope scaling type {rope_type!r} is not supported by the NumPy backend")


def longrope(dims: int, base: float, scaling: dict, max_position_embeddings: int,
             original_max_position_embeddings: int) -> Rope:
    """Phi-3's "su"/longrope as mlx-lm runs it: always the long factors, one input scale."""
    periods = np.asarray(scaling["long_factor"], np.float64) * base ** (np.arange(0, dims, 2) / dims)
    factor = max_position_embeddings / original_max_position_embeddings
    scale = scaling.get("long_mscale") or (
        1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings)))
    return Rope(dims, 1.0 / periods, False, input_scale=scale)


def _llama3_periods(dims: int, base: float, cfg: dict) -> np.ndarray:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    factor = cfg["factor"]
    low, high = cfg.get("low_freq_factor", 1.0), cfg.get("high_freq_factor", 4.0)
    old_len = cfg.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    periods = base ** (np.arange(0, dims, 2) / dims)
    wavelens = 2 * np.pi * periods
    periods = np.where(wavelens > low_wavelen, periods * factor, periods)
    medium = (wavelens > high_wavelen) & (wavelens < low_wavelen)
    smooth = (old_len / wavelens - low) / (high - low)
    return np.where(medium, periods / ((1 - smooth) / factor + smooth), periods)


def _yarn_periods(dims: int, base: float, cfg: dict) -> tuple[np.ndarray, float]:
    factor = cfg["factor"]
    orig = cfg.get("original_max_position_embeddings", 4096)
    beta_fast, beta_slow = cfg.get("beta_fast", 32), cfg.get("beta_slow", 1)
    mscale, mscale_all_dim = cfg.get("mscale", 1), cfg.get("mscale_all_dim", 0)

    def correction_dim(n_rot):
        return dims * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    def get_mscale(scale, m):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dims - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dims // 2) - low) / (high - low), 0, 1)
    keep = 1.0 - ramp
    extra = base ** (np.arange(0, dims, 2) / dims)
    inter = factor * extra
    periods = inter * extra / (inter * keep + extra * (1 - keep))
    return periods, get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)


# -- attention ----------------------------------------------------------------------------------

SCORES_LIMIT = 1 << 24  # attention scores held at once (64 MB of float32)
LONG = 384  # keys from which a decoding query's scores are computed as K q^T (docs/serving.md)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
              q_start: int, k_start: int, window: int | None = None) -> np.ndarray:
    """Causal (optionally sliding-window) grouped-query attention for one sequence.

    q (T, n_heads, D) at positions q_start..; k, v (n_kv, S, D) at positions k_start...
    A query at position p sees keys at positions j with j <= p and, if `window`, j > p - window.
    Returns (T, n_heads * D).
    """
    T, n_heads, D = q.shape
    n_kv, S, _ = k.shape
    block = max(1, SCORES_LIMIT // (n_heads * S))
    if T > block:  # long prefill: bound the (heads, T, S) score matrix by splitting the queries
        outs = []
        for i in range(0, T, block):
            first, last = q_start + i, q_start + min(i + block, T) - 1  # positions of this chunk
            lo = 0 if window is None else max(0, first - window + 1 - k_start)
            hi = last + 1 - k_start  # later keys are all masked for this chunk
            outs.append(attention(q[i:i + block], k[:, lo:hi], v[:, lo:hi], scale, first,
                                  k_start + lo, window))
        return np.concatenate(outs)
    rep = n_heads // n_kv
    if T == 1 and k_start + S - 1 <= q_start and (window is None or k_start > q_start - window):
        # one decoding query that sees every key given: no mask (the same arithmetic as below)
        qh = (q * scale).reshape(n_kv, rep, D)
        if S < LONG:
            scores = qh @ k.transpose(0, 2, 1)  # (n_kv, rep, S)
        else:  # keys times queries: OpenBLAS is ~3x slower with the few-row queries on the left
            scores = np.ascontiguousarray((k @ np.ascontiguousarray(qh.transpose(0, 2, 1))).transpose(0, 2, 1))
        return (softmax(scores) @ v).reshape(1, n_heads * D)
    # query head h reads kv head h // rep
    qh = (q * scale).reshape(T, n_kv, rep, D).transpose(1, 2, 0, 3).reshape(n_kv, rep * T, D)
    scores = (qh @ k.transpose(0, 2, 1)).reshape(n_kv, rep, T, S)  # (n_kv, rep, T, S)
    q_pos = np.arange(q_start, q_start + T)[:, None]
    k_pos = np.arange(k_start, k_start + S)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    if not allowed.all():
        scores = np.where(allowed, scores, np.float32(-np.inf))
    probs = softmax(scores).reshape(n_kv, rep * T, S)
    out = (probs @ v).reshape(n_kv, rep, T, D)  # (n_kv, rep, T, D)
    return out.transpose(2, 0, 1, 3).reshape(T, n_heads * D)
