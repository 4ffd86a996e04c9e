"""The generation loop both backends share: feed the prompt, sample, detokenize, stop, measure.

A backend is an `Engine`: it runs the model on a KV cache. The NumPy backend gets its tokens from
`sample_tokens` (our loop over `forward(tokens, cache) -> logits`); the MLX backend from mlx-lm's
`generate_step` with mlx-lm's sampler. Either way the tokens come through `Generation`, which owns
the streaming detokenizer, EOS and stop strings, and the statistics.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer


class Engine(Protocol):
    """What a backend provides. Caches are opaque; `cache_length` says how many tokens one holds."""

    name: str

    def make_cache(self) -> Any: ...

    def cache_length(self, cache: Any) -> int: ...

    def trim_cache(self, cache: Any, n: int) -> bool:
        """Drop the last n tokens; False if this cache cannot be trimmed."""

    def forward(self, ids: Sequence[int], cache: Any, last_only: bool = False) -> np.ndarray:
        """Run `ids` through the model, appending to `cache`: float32 logits (T, vocab), or (1, vocab)."""

    def token_stream(self, ids: Sequence[int], cache: Any, params: SamplingParams,
                     history: Sequence[int]) -> Iterator[int]:
        """Feed `ids` (after `history`, already in the cache) and yield sampled tokens forever."""

    def peak_memory(self) -> int:
        """Peak memory of this process in bytes."""


def sample_tokens(forward: Callable[[Sequence[int], Any], np.ndarray], ids: Sequence[int], cache: Any,
                  params: SamplingParams, history: Sequence[int] = ()) -> Iterator[int]:
    """The NumPy generation loop: prefill `ids`, then sample and feed one token at a time.

    A yielded token is fed to the model only when the next one is asked for, so the cache holds
    everything but the last token yielded.
    """
    sampler = Sampler(params)
    seen = list(history) + list(ids)  # the repetition penalty's context includes the prompt
    logits = forward(ids, cache)[-1]
    while True:
        token = sampler(logits, seen)
        yield token
        seen.append(token)
        logits = forward([token], cache)[-1]


def process_peak_rss() -> int:
    """Peak resident memory of this process in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class StopStrings:
    """Cut the text at the first stop string, even one spread over several tokens.

    Text that could still turn into a stop string is held back until the next piece decides it.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add new text; return what can be shown now. Sets `stopped` once a stop string appears."""
        if not self.stops:
            return text
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return buf[:min(hits)]
        hold = 0  # the longest tail of buf that begins some stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if s.startswith(buf[-k:]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold:]
        return buf[:len(buf) - hold]

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class GenerationStats:
    """Counts and speeds of one generation. Prompt time runs to the first sampled token."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_tokens: int = 0
    generation_seconds: float = 0.0  # from the first token to the last
    peak_memory_bytes: int = 0
    finish_reason: str = ""  # "eos", "stop", "length" or "interrupted"
    weights: str = ""  # how the engine holds weights (NumPy: "float32", "float16" or "lean")
    matmul: str = ""   # whose kernels multiply them (NumPy: "numpy" or "onnxruntime")

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        # the first token's time is prompt time, so it is not counted here
        n = self.generation_tokens - 1
        return n / self.generation_seconds if n > 0 and self.generation_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "prompt_tps": round(self.prompt_tps, 3),
                "time_to_first_token_s": round(self.prompt_seconds, 4),
                "generation_tokens": self.generation_tokens,
                "generation_tps": round(self.generation_tps, 3),
                "peak_memory_gb": round(self.peak_memory_bytes / 1e9, 4),
                "finish_reason": self.finish_reason, **({"weights": self.weights} if self.weights else {}),
                **({"matmul": self.matmul} if self.matmul else {})}

    def summary(self) -> str:
        return (f"prompt: {self.prompt_tokens} tokens, {self.prompt_tps:.1f} tokens/s | "
                f"generation: {self.generation_tokens} tokens, {self.generation_tps:.1f} tokens/s | "
                f"peak memory: {self.peak_memory_bytes / 1e9:.3f} GB"
                + (f" | weights: {self.weights}" if self.weights else "")
                + (f", matmul: {self.matmul}" if self.matmul else ""))


@dataclass
class Generation:
    """One generation: iterate it for text pieces; afterwards `text`, `tokens` and `stats` are set.

    `ids` are fed after `history` (tokens the cache already holds). `should_stop` is polled between
    tokens (Ctrl-C in chat). After the loop, `cache_tokens` lists exactly the tokens in `cache`.
    """

    engine: Engine
    tokenizer: Tokenizer
    ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 256
    stop: Sequence[str] = ()
    cache: Any = None
    history: list[int] = field(default_factory=list)
    should_stop: Callable[[], bool] | None = None
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    cache_tokens: list[int] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        if not self.ids:
            raise ValueError("nothing to feed: the prompt is empty")
        if self.cache is None:
            self.cache = self.engine.make_cache()
        detok = self.tokenizer.detokenizer()
        stops = StopStrings(self.stop)
        eos = self.tokenizer.eos_token_ids
        self.stats = GenerationStats(prompt_tokens=len(self.ids), finish_reason="length")
        stream = self.engine.token_stream(self.ids, self.cache, self.params, self.history)
        start = time.perf_counter()
        first = last = start
        try:
            while len(self.tokens) < self.max_tokens:
                if self.should_stop is not None and self.should_stop():
                    self.stats.finish_reason = "interrupted"
                    break
                token = next(stream, None)
                if token is None:  # engines stream forever; a finite one just ends the text
                    break
                last = time.perf_counter()
                if not self.tokens:
                    first = last
                self.tokens.append(token)
                if token in eos:
                    self.stats.finish_reason = "eos"
                    break
                piece = stops.feed(detok.add(token))
                if piece:
                    self.text += piece
                    yield piece
                if stops.stopped:
                    self.stats.finish_reason = "stop"
                    break
            if self.stats.finish_reason != "stop":  # release what was held back
                piece = stops.feed(detok.flush())
                if stops.stopped:
                    self.stats.finish_reason = "stop"
                else:
                    piece += stops.flush()
                if piece:
                    self.text += piece
                    yield piece
        finally:
            stream.close()
            self.stats.prompt_seconds = first - start
            self.stats.generation_tokens = len(self.tokens)
            self.stats.generation_seconds = last - first
            self.stats.peak_memory_bytes = self.engine.peak_memory()
            self.stats.weights = getattr(self.engine, "weight_mode", "")
            self.stats.matmul = getattr(self.engine, "matmul", "")
            held = self.engine.cache_length(self.cache)
            self.cache_tokens = (self.history + self.ids + self.tokens)[:held]

    def run(self) -> str:
        """Generate to the end and return the text."""
        for _ in self:
            pass
        return self.text
