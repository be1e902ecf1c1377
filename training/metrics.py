"""What `train watch` and `train worker` measure, as Prometheus series, served on ``training.metrics_port`` and
``training.worker_metrics_port`` (on ``training.metrics_host``).

Pending examples per tenant, refreshes by tenant and outcome (promoted, rejected, skipped, failed) with their
duration, and the gate's figures of the latest candidate per tenant (held-out and anchor loss, exact match
and token F1, beside the current adapter's); with ``training.distribute = "kafka"`` the watcher counts the
requests it published. A worker adds its health: whether it waits for Kafka, the partitions it owns, whether a
refresh is running, and the refreshes fenced because their partition went to another worker mid-way.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streamtune.manifest import Manifest

__all__ = ["WatchMetrics", "WorkerMetrics"]


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.pending = Gauge("streamtune_pending_examples", "New examples waiting per tenant.", ["tenant"], registry=r)
        self.refreshes = Counter(
            "streamtune_refreshes", "Refreshes by tenant and outcome.", ["tenant", "outcome"], registry=r
        )
        self.refresh_seconds = Histogram(
            "streamtune_refresh_seconds",
            "Duration of a refresh.",
            ["tenant"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
            registry=r,
        )
        self.gate = Gauge(
            "streamtune_gate_score",
            "The latest gate evaluation per tenant: side (candidate/current), slice (held_out/anchor), metric.",
            ["tenant", "side", "slice", "metric"],
            registry=r,
        )
        self.requests = Counter(
            "streamtune_refresh_requests",
            "Refresh requests published for the trainer workers (training.distribute = kafka), by tenant.",
            ["tenant"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def refreshed(self, tenant: str, outcome: str, seconds: float, manifest: Manifest | None) -> None:
        self.refreshes.labels(tenant, outcome).inc()
        self.refresh_seconds.labels(tenant).observe(seconds)
        if manifest is None:
            return
        for side, scores in (("candidate", manifest.metrics.candidate), ("current", manifest.metrics.current)):
            for slice_, figures in (("held_out", scores.held_out), ("anchor", scores.anchor)):
                for metric in ("loss", "exact_match", "token_f1"):
                    self.gate.labels(tenant, side, slice_, metric).set(getattr(figures, metric))


class WorkerMetrics(WatchMetrics):
    """`train worker`: the refreshes it ran (``streamtune_refreshes``, by outcome, ``failed`` and ``invalid``
    included) and its health."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.waiting = Gauge(
            "streamtune_dependency_waiting",
            "1 while the worker waits for the dependency (at start-up or through an outage).",
            ["dependency"],
            registry=r,
        )
        self.waiting.labels("kafka").set(0)
        self.partitions = Gauge(
            "streamtune_worker_partitions", "Partitions of refresh-requests this worker owns now.", registry=r
        )
        self.busy = Gauge("streamtune_worker_busy", "1 while a refresh runs in this worker.", registry=r)
        self.fenced = Counter(
            "streamtune_refresh_fenced",
            "Refreshes stopped before they published or announced anything because their partition was revoked "
            "(or the group no longer knew this worker): the partition's next owner runs the request.",
            ["tenant"],
            registry=r,
        )
