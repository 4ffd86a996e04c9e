"""Log-probabilities, KL divergence and perplexity: the numbers eval and calibration report."""

from __future__ import annotations

import numpy as np

ROWS = 64  # positions per block when reducing over the vocabulary (bounds the temporaries)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32, in blocks of ROWS rows: (T, V) -> (T, V)."""
    out = np.empty(logits.shape, dtype=np.float32)
    for i in range(0, len(logits), ROWS):
        x = np.asarray(logits[i: i + ROWS], dtype=np.float32)
        m = x.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
        out[i: i + ROWS] = x - m - lse
    return out


def kl_rows(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row from log-probabilities (T, V) -> (T,) float64."""
    return np.sum(np.exp(p_log) * (p_log - q_log), axis=-1, dtype=np.float64)


def mean_kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    """Mean over rows of KL(P || Q)."""
    return float(np.mean(kl_rows(p_log, q_log)))


def token_nll(logprobs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log P(target) per position: logprobs (T, V), targets (T,) -> (T,) float64."""
    return -logprobs[np.arange(len(targets)), targets].astype(np.float64)


def perplexity(nll: np.ndarray) -> float:
    return float(np.exp(np.mean(nll)))
