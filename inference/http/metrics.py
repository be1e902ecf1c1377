"""The gateway's Prometheus series, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class GatewayMetrics:
    """The gateway's Prometheus series, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "streamtune_http_requests", "HTTP requests answered, by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "streamtune_http_request_seconds",
            "Time to answer an HTTP request (to its first byte for a stream), by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("streamtune_http_in_flight", "HTTP requests being answered now.", registry=r)
        self.open_completions = Gauge(
            "streamtune_http_open_completions",
            "Chat completions being answered now, a stream until its last chunk (bounded by http.max_in_flight).",
            registry=r,
        )
        self.rejected = Counter(
            "streamtune_http_rejected", "Completions refused with 429: http.max_in_flight were open.", registry=r
        )
        self.timeouts = Counter(
            "streamtune_http_answer_timeouts", "Queries with no answer within http.answer_timeout_s.", registry=r
        )
        self.answers = Counter(
            "streamtune_http_answers",
            "Answers handed to requests, by code (ok or serve's error).",
            ["code"],
            registry=r,
        )
        self.feedback = Counter(
            "streamtune_http_feedback",
            "Ratings received on POST /v1/feedback, by outcome (published, unknown, duplicate, forbidden).",
            ["outcome"],
            registry=r,
        )
