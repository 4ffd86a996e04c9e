"""NumPy sampling against mlx-lm's `make_sampler` / `make_logits_processors` on the same logits.

mlx-lm's sampler ends in `categorical_sampling(logprobs, temp)`; the tests catch what reaches it
(the filtered log-probabilities) and compare it with ours, so order and semantics are checked
exactly. Randomness differs between the two RNGs, so draws are checked statistically.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlxedge.errors import MlxEdgeError
from mlxedge.sampling import Sampler, SamplingParams, process_logits

mx = pytest.importorskip("mlx.core")
sample_utils = pytest.importorskip("mlx_lm.sample_utils")

VOCAB = 64


def _logits(seed: int, scale: float = 3.0, vocab: int = VOCAB) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)


def mlx_filtered(logits: np.ndarray, history: list[int], params: SamplingParams, monkeypatch):
    """What mlx-lm hands to categorical sampling: processors -> log-softmax -> sampler filters."""
    caught = {}

    def catch(logprobs, temp):
        caught["logprobs"], caught["temp"] = np.array(logprobs), temp
        return mx.argmax(logprobs, axis=-1)

    monkeypatch.setattr(sample_utils, "categorical_sampling", catch)
    sampler = sample_utils.make_sampler(temp=params.temp, top_p=params.top_p, min_p=params.min_p,
                                        min_tokens_to_keep=params.min_tokens_to_keep, top_k=params.top_k)
    processors = sample_utils.make_logits_processors(
        repetition_penalty=params.repetition_penalty, repetition_context_size=params.repetition_context_size)
    x = mx.array(logits)[None]
    tokens = mx.array(history, dtype=mx.uint32)
    for p in processors:
        x = p(tokens, x)
    sampler(x - mx.logsumexp(x, keepdims=True))
    return caught["logprobs"].reshape(-1), caught["temp"]


CASES = [
    dict(temp=1.0, top_p=0.9),
    dict(temp=0.7, top_p=0.5),
    dict(temp=1.0, min_p=0.1),
    dict(temp=1.0, min_p=0.3, min_tokens_to_keep=5),
    dict(temp=1.0, top_k=5),
    dict(temp=0.8, top_p=0.8, min_p=0.05, top_k=10),
    dict(temp=0.8, top_p=0.95, top_k=3),  # top-k after top-p
    dict(temp=1.3, top_p=0.6, min_p=0.2),
    dict(temp=1.0, repetition_penalty=1.5, repetition_context_size=4),
    dict(temp=0.9, repetition_penalty=0.7, top_p=0.9, top_k=20),
]


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filtered_distribution_matches_mlx_lm(case, seed, monkeypatch):
    params = SamplingParams(**case)
    logits = _logits(seed)
    history = [3, 7, 7, 11, 60, 3, 42, 5]  # repeats, and more than the context window
    ours = process_logits(logits, history, params)
    theirs, temp = mlx_filtered(logits, history, params, monkeypatch)
    assert temp == params.temp
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))  # same support
    keep = np.isfinite(ours)
    np.testing.assert_allclose(ours[keep], theirs[keep], rtol=1e-5, atol=1e-5)
    assert 0 < keep.sum() < VOCAB or "repetition_penalty" in case


def test_repetition_penalty_window_and_sign(monkeypatch):
    """Positive logits are divided, negative multiplied, only for the last N tokens, each once."""
    logits = np.array([2.0, -2.0, 1.0, -1.0, 0.5, 4.0], dtype=np.float32)
    params = SamplingParams(temp=1.0, repetition_penalty=2.0, repetition_context_size=3)
    history = [5, 0, 1, 1]  # token 5 is outside the window of 3
    ours = process_logits(logits, history, params)
    theirs, _ = mlx_filtered(logits, history, params, monkeypatch)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    penalized = np.array([1.0, -4.0, 1.0, -1.0, 0.5, 4.0])
    expected = penalized - np.log(np.exp(penalized).sum())
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


@pytest.mark.parametrize("penalty", [None, 1.4])
def test_greedy_matches_mlx_lm(penalty):
    params = SamplingParams(temp=0.0, repetition_penalty=penalty, repetition_context_size=20)
    processors = sample_utils.make_logits_processors(repetition_penalty=penalty)
    greedy = sample_utils.make_sampler(temp=0.0)
    for seed in range(20):
        logits = _logits(seed, scale=1.0)
        history = [int(i) for i in np.argsort(-logits)[:2]]  # penalize the two leaders so the penalty matters
        x = mx.array(logits)[None]
        for p in processors:
            x = p(mx.array(history, dtype=mx.uint32), x)
        assert Sampler(params)(logits, history) == int(greedy(x - mx.logsumexp(x, keepdims=True)).item())


def test_seed_reproducible_and_seed_dependent():
    logits = _logits(5, scale=0.5)
    draws = [_many(SamplingParams(temp=1.0, seed=seed), logits, 50) for seed in (3, 3, 4)]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def _many(params: SamplingParams, logits: np.ndarray, n: int) -> list[int]:
    s = Sampler(params)
    return [s(logits) for _ in range(n)]


@pytest.mark.parametrize("case", [dict(temp=0.7, top_p=0.9), dict(temp=1.5, min_p=0.05, top_k=6)])
def test_draws_follow_mlx_lm_distribution(case, monkeypatch):
    """Empirical frequencies of our draws and of mlx-lm's draws both fit mlx-lm's distribution."""
    vocab, n = 12, 6000
    logits = _logits(9, scale=1.5, vocab=vocab)
    params = SamplingParams(seed=0, **case)
    filtered, temp = mlx_filtered(logits, [], params, monkeypatch)
    monkeypatch.undo()
    z = np.where(np.isfinite(filtered), filtered / temp, -np.inf)
    expected = np.exp(z - z.max())
    expected /= expected.sum()

    ours = np.bincount(_many(params, logits, n), minlength=vocab) / n
    mx.random.seed(0)
    sampler = sample_utils.make_sampler(temp=params.temp, top_p=params.top_p, min_p=params.min_p,
                                        top_k=params.top_k)
    lp = mx.array(logits)[None]
    lp = lp - mx.logsumexp(lp, keepdims=True)
    theirs = np.bincount(np.array(sampler(mx.broadcast_to(lp, (n, vocab)))), minlength=vocab) / n

    assert np.all(ours[expected == 0] == 0)  # never outside the support
    assert np.all(theirs[expected == 0] == 0)
    tol = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-3  # 5 sigma
    assert np.all(np.abs(ours - expected) < tol), (ours, expected)
    assert np.all(np.abs(theirs - expected) < tol), (theirs, expected)


@pytest.mark.parametrize("bad", [dict(temp=-1), dict(top_p=1.5), dict(min_p=-0.1), dict(top_k=-2)])
def test_bad_parameters_are_user_errors(bad):
    with pytest.raises(MlxEdgeError):
        SamplingParams(**bad)
