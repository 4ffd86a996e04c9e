"""What both dialects share once a request is parsed: resolve the model, tokenize, check the context
and limits, submit a `Job`, read its events, count it (metrics) and log it (the store's audit log)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator

from ..errors import MlxEdgeError
from ..sampling import SamplingParams
from ..store import audit
from .limits import ApiError, Keys
from .metrics import Metrics
from .registry import Loaded, Registry, UnknownModel
from .scheduler import Job, QueueFull

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "timeout": "length", "cancelled": "stop"}


@dataclass
class Settings:
    max_body_bytes: int = 4 << 20
    max_tokens_cap: int = 4096
    default_max_tokens: int = 512
    timeout: float = 600.0       # seconds a request may generate for
    log_prompts: bool = False
    retry_after: int = 1


@dataclass
class Caller:
    key_id: str | None
    role: str
    route: str


class Service:
    def __init__(self, registry: Registry, metrics: Metrics, settings: Settings, keys: Keys | None = None):
        self.registry, self.metrics, self.settings = registry, metrics, settings
        self.keys = keys or Keys({})
        self.shutting_down = False

    def authorize(self, request, route: str, admin: bool = False) -> Caller:
        """401 without a valid key (when keys are configured), 403 when a `user` key asks for an admin route."""
        key, role = self.keys.check(request.headers.get("authorization"))
        if admin and role != "admin":
            raise ApiError(403, f"{route} changes the model store: it needs an admin key", code="forbidden")
        return Caller(key, role, route)

    async def watch(self, request, entry: Loaded, job: Job) -> str:
        """Wait for a non-streamed job, cancelling it if the client disconnects meanwhile."""
        task = asyncio.ensure_future(self.run(entry, job))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.1)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    job.cancel()
        finally:
            if not task.done():
                task.cancel()

    async def model(self, name: str | None, keep_alive="default") -> Loaded:
        try:
            return await asyncio.to_thread(self.registry.get, name, keep_alive)
        except UnknownModel as e:
            raise ApiError(404, str(e), param="model", code="model_not_found") from None
        except MlxEdgeError as e:
            raise ApiError(500, f"cannot load model {name!r}: {e}", param="model") from None

    def sampling(self, entry: Loaded, **given) -> SamplingParams:
        """Request values over the store model's PARAMETERs over mlx-lm's defaults (greedy)."""
        options = entry.model.defaults.get("options", {})
        merged = {k: v for k, v in options.items() if k in SamplingParams.__dataclass_fields__}
        merged.update({k: v for k, v in given.items() if v is not None})
        try:
            return SamplingParams(**merged)
        except MlxEdgeError as e:
            raise ApiError(400, str(e).replace("--", "").replace("-", "_")) from None

    def limits(self, entry: Loaded, ids: list[int], max_tokens: int | None, num_ctx: int | None = None) -> int:
        """The max_tokens a job gets; 400 when the prompt does not fit the context."""
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        context = entry.model.context_length
        if num_ctx:
            context = min(context, num_ctx) if context else num_ctx
        if context and len(ids) >= context:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; the model's context is {context} tokens "
                                f"(it must leave room for at least one generated token)",
                           param="messages", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = entry.model.defaults.get("options", {}).get("max_tokens") or self.settings.default_max_tokens
        max_tokens = min(max_tokens, self.settings.max_tokens_cap)
        if context:
            max_tokens = min(max_tokens, context - len(ids))
        return max(1, max_tokens)

    def submit(self, entry: Loaded, ids: list[int], params: SamplingParams, max_tokens: int,
               stop: tuple[str, ...], ignore_eos: bool = False) -> Job:
        if self.shutting_down:
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
        loop = asyncio.get_running_loop()
        job = Job(list(ids), params, max_tokens, stop, deadline=time.monotonic() + self.settings.timeout,
                  loop=loop, queue=asyncio.Queue(), ignore_eos=ignore_eos)
        try:
            entry.scheduler.submit(job)
        except QueueFull:
            raise ApiError(429, f"{entry.scheduler.max_queue} requests are already waiting for {entry.name}; "
                                f"retry later", code="queue_full",
                           headers={"Retry-After": str(self.settings.retry_after)}) from None
        except MlxEdgeError as e:
            raise ApiError(503, str(e), headers={"Retry-After": "5"}) from None
        self._gauges(entry)
        return job

    async def events(self, entry: Loaded, job: Job) -> AsyncIterator[str]:
        """The job's text pieces; cancels the job if the consumer stops early (client gone)."""
        try:
            while True:
                kind, value = await job.queue.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    return
                else:
                    raise ApiError(500, f"generation failed: {value}")
        finally:
            job.cancel()
            entry.last_used = time.monotonic()
            self._gauges(entry)

    async def run(self, entry: Loaded, job: Job) -> str:
        async for _ in self.events(entry, job):
            pass
        return job.text

    def finished(self, entry: Loaded, job: Job, caller: Caller, outcome: str = "ok", error: str | None = None,
                 prompt_text: str | None = None) -> None:
        """Count the request and append it to the audit log (prompts only with --log-prompts)."""
        if not job.finish_reason and outcome == "ok":
            job.finish_reason, outcome = "cancelled", "cancelled"
        if job.finish_reason == "cancelled" and outcome == "ok":
            outcome = "cancelled"
        self.metrics.prompt_tokens.labels(entry.name).inc(len(job.ids) if job.started else 0)
        self.metrics.generated_tokens.labels(entry.name).inc(len(job.tokens))
        if job.first_token:
            self.metrics.ttft.labels(entry.name).observe(job.first_token - job.submitted)
        fields = {"route": caller.route, "key_id": caller.key_id, "prompt_tokens": len(job.ids),
                  "completion_tokens": len(job.tokens), "finish_reason": job.finish_reason,
                  "duration_s": round((job.finished or time.perf_counter()) - job.submitted, 4)}
        if error:
            fields["error"] = error
        if self.settings.log_prompts:
            fields.update(prompt=prompt_text, reply=job.text)
        audit.record("request", model=entry.name, outcome=outcome, **fields)

    def _gauges(self, entry: Loaded) -> None:
        self.metrics.queue_depth.labels(entry.name).set(entry.scheduler.queue_depth)
        self.metrics.active.labels(entry.name).set(len(entry.scheduler.active))


def timings(job: Job) -> dict:
    """Ollama's durations (nanoseconds) from a finished job."""
    ns = lambda s: max(0, int(s * 1e9))  # noqa: E731
    end = job.finished or time.perf_counter()
    first = job.first_token or end
    return {"total_duration": ns(end - job.submitted), "prompt_eval_count": len(job.ids),
            "prompt_eval_duration": ns(first - (job.started or first)), "eval_count": len(job.tokens),
            "eval_duration": ns(end - first)}
