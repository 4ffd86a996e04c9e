"""Prometheus metrics (`GET /metrics`), one registry per app so that several servers can share a process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mlxedge_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("mlxedge_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("mlxedge_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.queue_depth = Gauge("mlxedge_queue_depth", "Requests waiting for a slot", ["model"], registry=r)
        self.active = Gauge("mlxedge_active_sequences", "Sequences being generated", ["model"], registry=r)
        self.loaded = Gauge("mlxedge_loaded_models", "Models loaded", registry=r)
        self.ttft = Histogram("mlxedge_time_to_first_token_seconds", "Submission to first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.per_token = Histogram("mlxedge_time_per_output_token_seconds", "Decode step time (each "
                                   "sequence in the step gets one token)", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mlxedge_decode_batch_size", "Sequences per decode step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)

    def step(self, scheduler, seconds: float, batch: int) -> None:
        """After each decode step of any scheduler (called on its thread)."""
        self.per_token.observe(seconds)
        self.batch_size.observe(batch)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
