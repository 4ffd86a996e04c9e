"""Llama 3.1-style rope_freqs (llama.cpp stores per-frequency divisors) -> rope_scaling, checked
against mlx-lm's own Llama3RoPE frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from mlxedge.errors import MlxEdgeError
from mlxedge.formats.gguf import _llama3_scaling


@pytest.mark.parametrize("factor,base,head_dim", [(8.0, 500000.0, 128), (32.0, 500000.0, 64)])
def test_rope_freqs_give_back_llama3_scaling(factor, base, head_dim):
    mx = pytest.importorskip("mlx.core")
    rope_utils = pytest.importorskip("mlx_lm.models.rope_utils")
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    rope = rope_utils.Llama3RoPE(head_dim, 131072, False, base, scaling)
    periods = np.array(rope._freqs.astype(mx.float32))  # base^(2i/d), scaled per mlx-lm
    divisors = (periods / base ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
    got = _llama3_scaling(divisors, base, head_dim)
    assert got["rope_type"] == "llama3" and got["factor"] == factor
    assert (got["low_freq_factor"], got["high_freq_factor"]) == (1.0, 4.0)
    assert got["original_max_position_embeddings"] == 8192
    # and mlx-lm, given what we wrote, computes the same frequencies
    back = rope_utils.Llama3RoPE(head_dim, 131072, False, base, got)
    assert np.allclose(np.array(back._freqs), np.array(rope._freqs), rtol=1e-6)


def test_unknown_rope_freqs_are_refused():
    with pytest.raises(MlxEdgeError, match="rope_freqs"):
        _llama3_scaling(np.linspace(1, 3, 64).astype(np.float32), 500000.0, 128)
