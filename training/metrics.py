"""What `train watch` measures, as Prometheus series, served on ``training.metrics_port`` (127.0.0.1).

Pending examples per tenant, refreshes by tenant and outcome (promoted, rejected, skipped, failed) with their
duration, and the gate's figures of the latest candidate per tenant (held-out and anchor loss, exact match
and token F1, beside the current adapter's).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streamtune.manifest import Manifest

__all__ = ["WatchMetrics"]


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
