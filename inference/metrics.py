"""What `serve` measures, as Prometheus series (prometheus-client), served on ``inference.metrics_port``.

Latency is per tenant and stage (queued, adapter, embed, retrieve, first_token, generate, total); answers are counted by
tenant and code (``ok`` or the error code); the adapter cache counts loads, load time and evictions, and
which version serves each tenant; refused announcements are counted by the check they failed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "streamtune_answer_stage_seconds",
            # No tenant label: with a thousand tenants it made 119 samples each (bench/tenants.py, BENCHMARKS.md);
            # per-tenant latency is the monitor's, from the answers' own timings.
            "Time a query spent in each stage of serve.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.answers = Counter(
            "streamtune_answers", "Answers produced, by tenant and code.", ["tenant", "code"], registry=r
        )
        self.answered_twice = Counter(
            "streamtune_answered_twice", "Queries this process answered more than once (redelivery).", registry=r
        )
        self.batch_size = Histogram(
            "streamtune_serve_batch_size",
            "Rows per generation step (continuous batching) or per batch (static).",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.adapter_loads = Counter("streamtune_adapter_loads", "Adapters loaded, by tenant.", ["tenant"], registry=r)
        self.adapter_load_seconds = Histogram(
            "streamtune_adapter_load_seconds", "Time to load one adapter.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.adapter_evictions = Counter(
            "streamtune_adapter_evictions", "Adapters unloaded by the cache, by tenant.", ["tenant"], registry=r
        )
        self.adapters_loaded = Gauge("streamtune_adapters_loaded", "Adapters loaded now.", registry=r)
        self.served_version = Gauge(
            "streamtune_adapter_serving",
            "1 for the version that serves each tenant.",
            ["tenant", "version"],
            registry=r,
        )
        self.refused = Counter(
            "streamtune_adapter_refusals",
            "Announcements refused at the trust boundary, by check.",
            ["check"],
            registry=r,
        )
        self.deadline_exceeded = Counter(
            "streamtune_deadline_exceeded",
            "Queries answered deadline_exceeded: their deadline passed before or during generation.",
            ["tenant"],
            registry=r,
        )
        self.generation_cut = Counter(
            "streamtune_generation_cut",
            "Rows stopped mid-generation because their query's deadline passed (also in deadline_exceeded).",
            ["tenant"],
            registry=r,
        )
        self.ungrounded = Counter(
            "streamtune_ungrounded_answers",
            "Answers to questions with no hit at or above retrieval.min_similarity (grounded: false), by what "
            "inference.no_context did: abstain (no generation) or answer (generated without context).",
            ["tenant", "policy"],
            registry=r,
        )
        self.running_rows = Gauge("streamtune_serve_running_rows", "Rows in the running generation batch.", registry=r)
        self.deltas = Counter("streamtune_answer_deltas", "Pieces of streamed answers published.", registry=r)
        self.waiting = Gauge(
            "streamtune_dependency_waiting",
            "1 while serve waits out an outage of this dependency.",
            ["dependency"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)

    def adapter_loaded(self, tenant: str, seconds: float) -> None:
        self.adapter_loads.labels(tenant).inc()
        self.adapter_load_seconds.observe(seconds)

    def serving(self, tenant: str, version: str, previous: str | None) -> None:
        if previous is not None:
            self.served_version.labels(tenant, previous).set(0)
        self.served_version.labels(tenant, version).set(1)
