"""Steppers: how a scheduler runs one model — prefill one sequence, then decode many together.

`NumpyStepper` decodes the active sequences in one batched step (backends/numpy/batch.py) when the
architecture allows; any other engine (MLX, NumPy families without a batched step) goes through
`EngineStepper`, one `forward` per sequence per step: still served concurrently, not batched.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..backends.numpy import batch
from ..backends.numpy.engine import NumpyEngine
from ..engine import Engine


class EngineStepper:
    """Any `Engine`: prefill and decode through `engine.forward`, sequence by sequence."""

    batched = False

    def __init__(self, engine: Engine):
        self.engine = engine

    def make_cache(self) -> Any:
        return self.engine.make_cache()

    def prefill(self, ids: Sequence[int], cache: Any) -> np.ndarray:
        """Logits (vocab,) of the last prompt token, the prompt appended to `cache`."""
        return self.engine.forward(list(ids), cache, last_only=True)[-1]

    def decode(self, tokens: Sequence[int], caches: Sequence[Any]) -> np.ndarray:
        """Logits (B, vocab): token b fed after caches[b]."""
        return np.stack([self.engine.forward([t], c, last_only=True)[-1] for t, c in zip(tokens, caches)])


class NumpyStepper(EngineStepper):
    """The NumPy backend: one (B, hidden) matmul per linear for all active sequences."""

    def __init__(self, engine: NumpyEngine):
        super().__init__(engine)
        self.batched = batch.supports(engine.model)

    def decode(self, tokens: Sequence[int], caches: Sequence[Any]) -> np.ndarray:
        if not self.batched or len(tokens) == 1:  # B = 1: exactly the single-sequence path
            return super().decode(tokens, caches)
        return batch.decode_step(self.engine.model, tokens, caches)


def stepper_for(engine: Engine) -> EngineStepper:
    return NumpyStepper(engine) if isinstance(engine, NumpyEngine) else EngineStepper(engine)
