"""Sampling in NumPy with mlx-lm's semantics (`mlx_lm/sample_utils.py`).

Order, as in mlx-lm's `generate_step`: logits processors (repetition penalty over the last
`repetition_context_size` tokens, prompt included) -> log-softmax -> top-p -> min-p -> top-k on the
untempered log-probabilities -> sample from softmax(logprobs / temp); temp 0 is argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Sequence

import numpy as np

from .errors import MlxEdgeError


@dataclass(frozen=True)
class SamplingParams:
    """What decides the next token. The defaults are mlx-lm's: greedy, no filtering, no penalty."""

    temp: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    min_tokens_to_keep: int = 1
    repetition_penalty: float | None = None
    repetition_context_size: int = 20
    seed: int | None = None

    def __post_init__(self):
        for name in ("temp", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise MlxEdgeError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.temp < 0:
            raise MlxEdgeError(f"--temp must be >= 0, got {self.temp}")
        if not 0 <= self.top_p <= 1:
            raise MlxEdgeError(f"--top-p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise MlxEdgeError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise MlxEdgeError(f"--min-p must be in [0, 1], got {self.min_p}")
        if self.min_tokens_to_keep < 1:
            raise MlxEdgeError(f"min_tokens_to_keep must be >= 1, got {self.min_tokens_to_keep}")
        if self.repetition_penalty is not None and self.repetition_penalty < 0:
            raise MlxEdgeError(f"--repetition-penalty must be >= 0, got {self.repetition_penalty}")
        if self.repetition_context_size < 1:
            raise MlxEdgeError(f"repetition_context_size must be >= 1, got {self.repetition_context_size}")

    def as_dict(self) -> dict:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., vocab) in float32 throughout, as mlx-lm's sampler computes it (metrics.log_softmax sums
    in float64 for evaluation; sampling follows mlx-lm's rounding instead)."""
    x = np.asarray(logits, dtype=np.float32)
    m = np.max(x, axis=-1, keepdims=True)
    return x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float,
                             context_size: int = 20) -> np.ndarray:
    """Divide positive / multiply negative logits of the tokens seen in the last `context_size`."""
    if len(history) == 0:
        return logits
    ids = np.unique(np.asarray(history[-context_size:], dtype=np.int64))  # each token penalized once
    out = np.array(logits, dtype=np.float32, copy=True)
    sel = out[..., ids]
    out[..., ids] = np.where(sel < 0, sel * penalty, sel / penalty)
    return out


def apply_top_p(logprobs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the most likely tokens whose mass reaches top_p (a token is dropped only if the tokens
    more likely than it already hold at least top_p of the mass)."""
    sorted_lp = np.sort(logprobs, axis=-1)  # ascending
    probs = np.exp(sorted_lp.astype(np.float32))
    # mass strictly above each position: reverse exclusive cumsum
    mass_above = np.cumsum(probs[..., ::-1], axis=-1)[..., ::-1] - probs
    total = mass_above[..., :1] + probs[..., :1]
    n_dropped = np.sum(mass_above >= top_p * total, axis=-1, keepdims=True)
    threshold = np.take_along_axis(sorted_lp, n_dropped, axis=-1)
    return np.where(logprobs < threshold, -np.inf, logprobs).astype(np.float32)


def apply_min_p(logprobs: np.ndarray, min_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Drop tokens less likely than min_p times the most likely one (keeping at least the top few)."""
    remove = logprobs < np.max(logprobs, axis=-1, keepdims=True) + math.log(min_p)
    if min_tokens_to_keep > 1:
        top = np.argpartition(logprobs, -min_tokens_to_keep, axis=-1)[..., -min_tokens_to_keep:]
        np.put_along_axis(remove, top, False, axis=-1)
    return np.where(remove, -np.inf, logprobs).astype(np.float32)


def apply_top_k(logprobs: np.ndarray, top_k: int) -> np.ndarray:
    """Keep the top_k most likely tokens."""
    vocab = logprobs.shape[-1]
    if not 0 < top_k < vocab:
        raise MlxEdgeError(f"--top-k must be in (0, {vocab}), got {top_k}")
    drop = np.argpartition(-logprobs, top_k - 1, axis=-1)[..., top_k:]
    out = np.array(logprobs, dtype=np.float32, copy=True)
    np.put_along_axis(out, drop, -np.inf, axis=-1)
    return out


def filter_logprobs(logprobs: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The log-probabilities left after top-p, min-p and top-k (removed tokens are -inf)."""
    if 0 < params.top_p < 1:
        logprobs = apply_top_p(logprobs, params.top_p)
    if params.min_p != 0:
        logprobs = apply_min_p(logprobs, params.min_p, params.min_tokens_to_keep)
    if params.top_k > 0:
        logprobs = apply_top_k(logprobs, params.top_k)
    return logprobs


def process_logits(logits: np.ndarray, history: Sequence[int], params: SamplingParams) -> np.ndarray:
    """Logits -> filtered log-probabilities, before the temperature."""
    if params.repetition_penalty:  # None and 0 mean off, as in make_logits_processors
        logits = apply_repetition_penalty(logits, history, params.repetition_penalty,
                                          params.repetition_context_size)
    return filter_logprobs(log_softmax(logits), params)


class Sampler:
    """Pick next tokens from (vocab,) logits. One instance per generation: it owns the seeded RNG."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        if p.temp == 0:  # the filters never remove the most likely token
            if p.repetition_penalty:
                logits = apply_repetition_penalty(logits, history, p.repetition_penalty,
                                                  p.repetition_context_size)
            return int(np.argmax(logits))
        logprobs = process_logits(logits, history, p)
        # Gumbel-max: argmax(x + Gumbel noise) is a draw from softmax(x), like mx.random.categorical
        scaled = logprobs * (1.0 / p.temp)
        return int(np.argmax(scaled + self.rng.gumbel(size=scaled.shape).astype(np.float32)))
