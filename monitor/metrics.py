"""Every series `streamtune monitor` publishes on ``/metrics``, declared once, on a registry of its own.

Every name starts with ``PREFIX`` but ``streamtune_knowledge_gap_ratio``, which the alert rules name so (it is a
figure of the service, not of the monitor: the monitor just happens to be what can compute it).

``NAMES`` lists the series as Prometheus shows them (a counter ``x`` appears as ``x_total``, a histogram
``x`` as ``x_bucket``/``x_sum``/``x_count``); dashboards and their tests import it instead of spelling names.
Importing this module creates nothing: ``MonitorMetrics(registry)`` makes the series on the given registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["KNOWLEDGE_GAP_RATIO", "LATENCY_BUCKETS", "NAMES", "PREFIX", "MonitorMetrics"]

PREFIX = "streamtune_monitor_"
KNOWLEDGE_GAP_RATIO = "streamtune_knowledge_gap_ratio"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf"))
FRESHNESS_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, float("inf"))
PROMOTION_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3600, float("inf"))

NAMES = (
    f"{PREFIX}records_total",
    f"{PREFIX}skipped_total",
    f"{PREFIX}queries_total",
    f"{PREFIX}answers_total",
    f"{PREFIX}errors_total",
    f"{PREFIX}dlq_total",
    f"{PREFIX}adapter_updates_total",
    f"{PREFIX}answer_latency_seconds",
    f"{PREFIX}answer_latency_p50_seconds",
    f"{PREFIX}answer_latency_p99_seconds",
    f"{PREFIX}freshness_seconds",
    f"{PREFIX}freshness_p50_seconds",
    f"{PREFIX}freshness_p99_seconds",
    f"{PREFIX}freshness_overdue_total",
    f"{PREFIX}error_ratio",
    f"{PREFIX}dlq_per_second",
    f"{PREFIX}promotion_to_first_answer_seconds",
    f"{PREFIX}current_adapter",
    f"{PREFIX}last_record_timestamp_seconds",
    f"{PREFIX}live_answers",
    f"{PREFIX}live_ratings",
    f"{PREFIX}live_corrections",
    f"{PREFIX}live_negative_share",
    f"{PREFIX}feedback_ignored",
    f"{PREFIX}feedback_unknown",
    f"{PREFIX}canary_percent",
    f"{PREFIX}adapter_age_seconds",
    KNOWLEDGE_GAP_RATIO,
)
"""The metric families (histograms by their base name)."""


class MonitorMetrics:
    """The monitor's series, made on ``registry`` (a fresh one by default, so tests and processes never
    share a series)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, PREFIX
        self.records = Counter(f"{p}records", "Records read, per topic (as on the broker).", ["topic"], registry=r)
        self.skipped = Counter(
            f"{p}skipped", "Records the monitor could not use, by reason (it writes nothing: counted and logged).",
            ["topic", "error_class"], registry=r,
        )  # fmt: skip
        self.queries = Counter(f"{p}queries", "Queries read.", ["tenant"], registry=r)
        self.answers = Counter(f"{p}answers", "Answers read (errors included).", ["tenant"], registry=r)
        self.errors = Counter(f"{p}errors", "Error answers, by their contract code.", ["tenant", "code"], registry=r)
        self.dlq = Counter(f"{p}dlq", "Dead letters, by error class.", ["tenant", "error_class"], registry=r)
        self.adapter_updates = Counter(
            f"{p}adapter_updates", "Adapter announcements, by the gate's verdict.", ["tenant", "verdict"], registry=r
        )
        self.latency = Histogram(
            f"{p}answer_latency_seconds", "Query record → answer record (Kafka timestamps).", ["tenant"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency_p50, self.latency_p99 = _window_percentiles(r, "answer_latency", "answer latency")
        self.freshness = Histogram(
            f"{p}freshness_seconds", "domain-events record → its chunks written to Weaviate (searchable).", ["tenant"],
            buckets=FRESHNESS_BUCKETS, registry=r,
        )  # fmt: skip
        self.freshness_p50, self.freshness_p99 = _window_percentiles(r, "freshness", "event → searchable")
        self.freshness_overdue = Counter(
            f"{p}freshness_overdue", "Documents not searchable within monitor.freshness_give_up_s.", ["tenant"],
            registry=r,
        )  # fmt: skip
        self.error_ratio = Gauge(f"{p}error_ratio", "Share of error answers over the window.", ["tenant"], registry=r)
        self.dlq_rate = Gauge(f"{p}dlq_per_second", "Dead letters per second over the window.", ["tenant"], registry=r)
        self.promotion = Histogram(
            f"{p}promotion_to_first_answer_seconds",
            "Adapter announcement → first answer served with that version (Kafka timestamps).", ["tenant"],
            buckets=PROMOTION_BUCKETS, registry=r,
        )  # fmt: skip
        self.current_adapter = Gauge(
            f"{p}current_adapter", "1 for each tenant's last announced adapter version.", ["tenant", "version"],
            registry=r,
        )  # fmt: skip
        self.last_record = Gauge(
            f"{p}last_record_timestamp_seconds", "Kafka timestamp of the last record read, per topic.", ["topic"],
            registry=r,
        )  # fmt: skip
        # Live quality (streamtune.quality): gauges set from the join at each scrape, since the join is rebuilt
        # from the topics at every start; arm is canary, incumbent, or none (outside a canary, or pinned).
        self.live_answers = Gauge(
            f"{p}live_answers", "Answers served (errors excluded), per version and canary arm.",
            ["tenant", "version", "arm"], registry=r,
        )  # fmt: skip
        self.live_ratings = Gauge(
            f"{p}live_ratings", "Ratings joined to the answer they rate, per version, arm and rating.",
            ["tenant", "version", "arm", "rating"], registry=r,
        )  # fmt: skip
        self.live_corrections = Gauge(
            f"{p}live_corrections", "Joined ratings that carry a correction, per version.", ["tenant", "version"],
            registry=r,
        )  # fmt: skip
        self.live_negative_share = Gauge(
            f"{p}live_negative_share", "Negative share of the version's joined ratings (NaN: none rated yet).",
            ["tenant", "version"], registry=r,
        )  # fmt: skip
        self.feedback_ignored = Gauge(
            f"{p}feedback_ignored", "Ratings never joined, by reason (unknown_query, other_tenant, duplicate).",
            ["tenant", "reason"], registry=r,
        )  # fmt: skip
        self.feedback_unknown = Gauge(
            f"{p}feedback_unknown", "Ratings whose answer has not been read (yet): neither joined nor ignored.",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.canary_percent = Gauge(
            f"{p}canary_percent", "Share of the tenant's queries its running canary answers (absent: no canary).",
            ["tenant", "version"], registry=r,
        )  # fmt: skip
        self.adapter_age = Gauge(
            f"{p}adapter_age_seconds",
            "Seconds since the announcement of the tenant's current adapter (NaN: the base model serves it).",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.knowledge_gap_ratio = Gauge(
            KNOWLEDGE_GAP_RATIO,
            "Share of ungrounded answers (no document passed retrieval.min_similarity) among the tenant's last "
            "monitor.knowledge_gap_window answers that say (NaN: none yet).",
            ["tenant"], registry=r,
        )  # fmt: skip


def _window_percentiles(registry: CollectorRegistry, name: str, what: str) -> tuple[Gauge, Gauge]:
    """Per tenant, the window's median and 99th percentile of ``what``: ``<name>_p50_seconds`` and ``_p99_seconds``."""

    def gauge(quantile: str, label: str) -> Gauge:
        help_text = f"{label} {what} over the window."
        return Gauge(f"{PREFIX}{name}_{quantile}_seconds", help_text, ["tenant"], registry=registry)

    return gauge("p50", "Median"), gauge("p99", "99th percentile")
