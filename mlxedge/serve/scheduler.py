"""Continuous batching: one scheduler thread per loaded model.

Between decode steps the thread admits waiting jobs (up to `max_batch` active), prefills each, then
decodes every active sequence in one step (serve/batch.py). A sequence leaves at EOS, a stop string,
`max_tokens`, its deadline or its client's cancel, and its slot (and KV cache) is freed at once.
Text comes out exactly as `engine.Generation` would give it: the same detokenizer, the same stop
string rules, the same order of checks. Events go to the job's asyncio queue, thread-safely.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..engine import StopStrings
from ..errors import MlxEdgeError
from ..sampling import Sampler, SamplingParams
from ..tokenizer import Tokenizer
from .batch import EngineStepper


class QueueFull(Exception):
    """More jobs are waiting than the scheduler's `max_queue`."""


@dataclass
class Job:
    """One request's generation. Events on `queue`: ("text", str), ("done", Job), ("error", str)."""

    ids: list[int]
    params: SamplingParams
    max_tokens: int
    stop: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() after which the job ends ("timeout")
    ignore_eos: bool = False  # generate through EOS (benchmarks: a fixed number of tokens)
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue | None = None
    on_event: Callable[[tuple], None] | None = None  # instead of loop/queue (tests, benchmarks)
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "eos", "stop", "length", "timeout", "cancelled", "error"
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0     # prefill began
    first_token: float = 0.0
    finished: float = 0.0

    def cancel(self) -> None:
        """Called from any thread (a client went away): the scheduler drops the job at its next step."""
        self.cancelled = True

    def emit(self, event: tuple) -> None:
        if self.on_event is not None:
            self.on_event(event)
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is gone
            self.cancelled = True


class _Seq:
    def __init__(self, job: Job, cache: Any, tokenizer: Tokenizer):
        self.job = job
        self.cache = cache
        self.sampler = Sampler(job.params)
        self.seen = list(job.ids)  # the repetition penalty's context includes the prompt
        self.detok = tokenizer.detokenizer()
        self.stops = StopStrings(job.stop)
        self.last = -1  # the latest sampled token, fed at the next step


class Scheduler:
    """Admits, prefills and decodes jobs for one model on its own thread."""

    def __init__(self, stepper: EngineStepper, tokenizer: Tokenizer, max_batch: int = 16,
                 max_queue: int = 64, on_step: Callable[["Scheduler", float, int], None] | None = None):
        self.stepper = stepper
        self.tokenizer = tokenizer
        self.eos = set(tokenizer.eos_token_ids)
        self.max_batch = max(1, max_batch)
        self.max_queue = max_queue
        self.on_step = on_step  # (scheduler, seconds, batch size) after each decode step: metrics
        self.waiting: deque[Job] = deque()
        self.active: list[_Seq] = []
        self.cond = threading.Condition()
        self.closing = False
        self.steps = 0
        self.peak_batch = 0  # the most sequences one decode step has run
        self.thread = threading.Thread(target=self._run, name="mlxedge-scheduler", daemon=True)
        self.thread.start()

    # -- called from the server's threads ----------------------------------------------------------
    def submit(self, *jobs: Job) -> Job:
        """Queue jobs (several at once: admitted together); QueueFull beyond `max_queue`."""
        with self.cond:
            if self.closing:
                raise MlxEdgeError("the server is shutting down")
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull()
            self.waiting.extend(jobs)
            self.cond.notify()
        return jobs[-1]

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def busy(self) -> int:
        """Jobs waiting or generating."""
        return len(self.waiting) + len(self.active)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the thread."""
        with self.cond:
            self.closing = True
            for job in self.waiting:
                job.cancel()
            for seq in self.active:
                seq.job.cancel()
            self.cond.notify()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        if not self.thread.is_alive() and hasattr(self.stepper, "close"):
            self.stepper.close()  # mlx-lm's BatchGenerator restores the wired memory limit

    # -- the scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.active and not self.closing:
                    self.cond.wait()
                if self.closing and not self.active and not self.waiting:
                    return
                admit = []
                while self.waiting and len(self.active) + len(admit) < self.max_batch:
                    admit.append(self.waiting.popleft())
            if admit:
                self._guard(admit, lambda: self._admit(admit))
            self._drop_finished()
            if self.active:
                batch = list(self.active)
                self._guard(None, lambda: self._step(batch))
                self._drop_finished()

    def _guard(self, jobs: list[Job] | None, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 — one failing request must not stop the thread
            message = str(e) if isinstance(e, MlxEdgeError) else f"{type(e).__name__}: {e}"
            victims = jobs if jobs is not None else [s.job for s in self.active]
            for j in victims:
                if not j.finish_reason:
                    j.finish_reason = "error"
                    j.finished = time.perf_counter()
                    j.emit(("error", message))

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill the jobs admitted between two steps (together where the stepper can)."""
        ready = []
        for job in jobs:
            if job.cancelled or self._expired(job):
                self._end(job, "cancelled" if job.cancelled else "timeout")
                continue
            job.started = time.perf_counter()
            if self.stepper.generates:  # the stepper prefills and samples; the first token comes with a step
                seq = _Seq(job, None, self.tokenizer)
                self.stepper.admit(seq)
                self.active.append(seq)
            else:
                ready.append(job)
        if not ready:
            return
        for job, (cache, logits) in zip(ready, self.stepper.start_many([j.ids for j in ready])):
            seq = _Seq(job, cache, self.tokenizer)
            self.active.append(seq)
            self._accept(seq, seq.sampler(logits, seq.seen))

    def _step(self, batch: list[_Seq]) -> None:
        live = [s for s in batch if not s.job.finish_reason]
        if not live:
            return
        t0 = time.perf_counter()
        if self.stepper.generates:
            for seq, token in self.stepper.step():
                if not seq.job.finish_reason:
                    self._accept(seq, token)
        else:
            logits = self.stepper.decode([s.last for s in live], [s.cache for s in live])  # (B, vocab)
            for seq, row in zip(live, logits):
                self._accept(seq, seq.sampler(row, seq.seen))
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(live))
        if self.on_step is not None:
            self.on_step(self, time.perf_counter() - t0, len(live))

    def _accept(self, seq: _Seq, token: int) -> None:
        """One sampled token, checked in `Generation`'s order: EOS, text and stop strings, length."""
        job = seq.job
        seq.seen.append(token)
        seq.last = token
        job.tokens.append(token)
        if len(job.tokens) == 1:
            job.first_token = time.perf_counter()
        if token in self.eos and not job.ignore_eos:
            return self._finish(seq, "eos")
        self._text(job, seq.stops.feed(seq.detok.add(token)))
        if seq.stops.stopped:
            return self._finish(seq, "stop")
        if len(job.tokens) >= job.max_tokens:
            return self._finish(seq, "length")
        if job.cancelled:
            return self._finish(seq, "cancelled")
        if self._expired(job):
            return self._finish(seq, "timeout")

    def _finish(self, seq: _Seq, reason: str) -> None:
        if reason in ("eos", "length"):  # release what the detokenizer and stop strings held back
            piece = seq.stops.feed(seq.detok.flush())
            if seq.stops.stopped:
                reason = "stop"
            else:
                piece += seq.stops.flush()
            self._text(seq.job, piece)
        self._end(seq.job, reason)

    def _end(self, job: Job, reason: str) -> None:
        job.finish_reason = reason
        job.finished = time.perf_counter()
        job.emit(("done", job))

    @staticmethod
    def _text(job: Job, piece: str) -> None:
        if piece:
            job.text += piece
            job.emit(("text", piece))

    @staticmethod
    def _expired(job: Job) -> bool:
        return job.deadline is not None and time.monotonic() > job.deadline

    def _drop_finished(self) -> None:
        with self.cond:
            for seq in self.active:
                if not seq.job.finish_reason and seq.job.cancelled:
                    self._end(seq.job, "cancelled")
            for seq in self.active:
                if not seq.job.finish_reason:
                    continue
                if self.stepper.generates:
                    self.stepper.release(seq)
                elif seq.job.finish_reason != "error":  # the cache holds the prompt and all but the last token
                    self.stepper.retire(seq.seen, seq.cache)
            self.active = [s for s in self.active if not s.job.finish_reason]
