"""`streamtune train --watch`: refresh a tenant's adapter once ``training.watch_min_examples`` new examples
have accumulated, or ``training.watch_minutes`` have passed with at least one.

Built on confluent-kafka rather than faust-streaming: the trigger only counts committed records per
tenant beyond each adapter's recorded range, which the registry already knows exactly, so the counts
are derived from the manifests and the topic's end offsets on each tick instead of being kept in a
changelog-backed table that could drift from them; and it keeps one Kafka client library in the project.

With ``drift.trigger_refresh``, a tenant whose questions drifted away from what its adapter was trained on
(serve's drift test, read from its /metrics) is refreshed as soon as it has any pending example.

A service that outlives failures. A tenant whose refresh fails (its data, Weaviate or Kafka down, out of
memory) is logged with the cause and not tried again before a doubling delay (``training.retry_initial_s``,
up to ``training.retry_max_s``); the other tenants go on. A Kafka outage while the topic is read is
waited out (``streamtune.retry``, one log line per interval), never a reason to exit. Its figures are
served on ``training.metrics_port`` (``training/metrics.py``). At start, every tenant with a registry is
opened for writing (which repairs what a crash left) and its current version is announced again if the
announcement is missing. Only SIGTERM or Ctrl-C stop it (after the refresh in progress, if any).

With ``training.distribute = "kafka"`` it decides the same way but trains nothing itself: it publishes a request
for each due tenant on ``refresh-requests`` (``training.worker.publish_request``), which the `train worker`
processes of one consumer group run, and reads what became of it on ``refresh-results``. A tenant with a request
in flight is not asked again until its result arrives (or ``training.watch_minutes`` pass without one: a
request asked twice is served once, the worker finding the version made); a ``failed`` result sends the tenant
into the same doubling delay as a local failure, its examples still pending. The start-up repair and the
rollout decisions stay here: they are this process's writes, serialized with the workers' by the tenant's
registry lock (or, on an object store, its conditional writes).

It logs through this module's logger (the refreshes' progress included), which the CLI configures.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamtune import logs
from streamtune.adapter_store import open_store
from streamtune.contracts import RefreshResult
from streamtune.errors import ContractError, StreamtuneError
from streamtune.kafka import committed_end_offsets, read_range, while_unreachable
from streamtune.retry import Backoff
from streamtune.settings import Settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name
from training.canary import decide
from training.data import MissingDocs
from training.publish import Announced, ensure_announced, last_announcements
from training.refresh import refresh
from training.registry import open_registry, tenants
from training.worker import publish_request, read_results

__all__ = ["pending_counts", "watch"]

log = logging.getLogger(__name__)

T = TypeVar("T")

"""After a tenant's refresh fails: 30 s before the next attempt, doubling with each failure, at most 30 min."""


class _Stopped(Exception):
    """SIGTERM arrived while waiting for Kafka: stop instead of trying again."""


@dataclass
class _Failures:
    """Per tenant: consecutive failures, and the earliest time of the next attempt."""

    backoff: Backoff
    count: Counter[str] = field(default_factory=Counter)
    not_before: dict[str, float] = field(default_factory=dict)

    def ready(self, tenant: str, now: float) -> bool:
        return now >= self.not_before.get(tenant, float("-inf"))

    def failed(self, tenant: str, what: str, exc: BaseException) -> None:
        self.count[tenant] += 1
        delay = self.backoff.delay(self.count[tenant])
        self.not_before[tenant] = time.monotonic() + delay
        log.error(
            "watch: %s: %s failed (%s: %s); trying again in %.1fs (failure %d in a row)",
            tenant,
            what,
            type(exc).__name__,
            exc,
            delay,
            self.count[tenant],
            # ours say what went wrong in words; anything else is a bug or an OOM, whose stack is worth keeping
            exc_info=not isinstance(exc, StreamtuneError),
            extra={"tenant": tenant},
        )

    def succeeded(self, tenant: str) -> None:
        self.count.pop(tenant, None)
        self.not_before.pop(tenant, None)


class RemoteRefreshFailed(StreamtuneError):
    """A worker's refresh failed (its ``refresh-results`` record says how)."""


@dataclass
class _Requests:
    """``training.distribute = "kafka"``: the requests this watcher published, and what their results say."""

    settings: Settings
    results_from: dict[int, int] | None = None
    """Where ``refresh-results`` is read from next (None: its end, at the first read)."""
    tenant_of: dict[str, str] = field(default_factory=dict)
    """request id → tenant, for the requests whose result has not come."""
    asked_at: dict[str, float] = field(default_factory=dict)
    """tenant → when its latest request was published (monotonic)."""
    since: Counter[str] = field(default_factory=Counter)
    """tenant → examples counted after its latest request (still pending once it is served)."""

    def in_flight(self, tenant: str, now: float) -> bool:
        asked = self.asked_at.get(tenant)
        return asked is not None and now - asked < self.settings.training.watch_minutes * 60

    def ask(self, tenant: str, up_to: Mapping[int, int], pending: int, reason: str) -> None:
        request = publish_request(self.settings, tenant, up_to, pending=pending, reason=reason)
        self.tenant_of[request.request_id] = tenant
        self.asked_at[tenant] = time.monotonic()
        self.since.pop(tenant, None)
        log.info(
            "watch: %s: %d new examples (%s); requested a refresh (%s)",
            tenant,
            pending,
            reason,
            request.request_id,
            extra={"tenant": tenant},
        )

    def counted(self, counts: Counter[str]) -> None:
        for tenant, count in counts.items():
            if tenant in self.asked_at:
                self.since[tenant] += count

    def results(self) -> list[RefreshResult]:
        """The new results of this watcher's requests; each request's first one only."""
        found, self.results_from = read_results(self.settings, self.results_from)
        ours = []
        for result in found:
            tenant = self.tenant_of.pop(result.request_id, None)
            if tenant is not None and tenant == result.tenant:
                ours.append(result)
                if tenant not in self.tenant_of.values():
                    self.asked_at.pop(tenant, None)
        return ours


def pending_counts(
    settings: Settings, since: dict[int, int], floor: Callable[[str], dict[int, int]]
) -> tuple[Counter[str], dict[int, int]]:
    """Examples per tenant after ``since`` up to the committed end that lie beyond the tenant's current
    adapter (``floor``: per partition, the end of the range it was trained on); and that end."""
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    counts: Counter[str] = Counter()
    for message in read_range(settings.kafka, topic, {p: (since.get(p, 0), end) for p, end in ends.items()}):
        try:
            tenant = TRAINING_EXAMPLES.decode(message.value()).tenant
        except ContractError:
            continue
        if (message.offset() or 0) >= floor(tenant).get(message.partition() or 0, 0):
            counts[tenant] += 1
    return counts, ends


def _on_trial(settings: Settings, tenant: str) -> bool:
    try:
        return open_registry(settings, tenant).canary() is not None
    except (StreamtuneError, OSError, ValueError):
        return False  # the refresh reads the same registry and fails with the reason, with backoff


def _trained_up_to(settings: Settings, tenant: str) -> dict[int, int]:
    try:
        current = open_registry(settings, tenant).current()
    except (StreamtuneError, OSError, ValueError) as exc:
        # Counted from the start; the refresh then fails on the same registry and says so, with backoff.
        log.debug("watch: %s: cannot read the current adapter (%s)", tenant, exc, extra={"tenant": tenant})
        return {}
    return current.manifest.data.trained_up_to() if current else {}


def watch(
    settings: Settings,
    *,
    missing_docs: MissingDocs | None = None,
    poll_s: float | None = None,
    max_refreshes: int | None = None,
    until: Callable[[], bool] | None = None,
) -> int:
    """Run until SIGTERM / Ctrl-C (or, for tests, after ``max_refreshes`` refresh attempts, failed ones
    included, or requests with ``training.distribute = "kafka"``, or once ``until()`` is true, checked between
    steps).

    ``missing_docs`` is handed to every refresh (``training.refresh.refresh``)."""
    from training.metrics import WatchMetrics

    metrics = WatchMetrics()
    if settings.training.metrics_port:
        metrics.serve(settings.training.metrics_port, settings.training.metrics_host)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    failures = _Failures(settings.training.refresh_backoff())
    unreconciled = set(tenants(open_store(settings)))
    requests = _Requests(settings) if settings.training.distribute == "kafka" else None
    seen: dict[int, int] = {}
    waiting_since: dict[str, float] = {}
    pending: Counter[str] = Counter()
    refreshes = 0
    next_decision = time.monotonic() + settings.training.decide_every_s  # at start the repair runs instead

    def done() -> bool:
        return (max_refreshes is not None and refreshes >= max_refreshes) or (until is not None and until())

    log.info(
        "watch: refresh at %d new examples, or after %g min with at least one%s",
        settings.training.watch_min_examples,
        settings.training.watch_minutes,
        " (run by the `train worker` group: training.distribute = kafka)" if requests is not None else "",
    )
    try:
        while not stop.is_set() and not done():
            if unreconciled:
                _reconcile(settings, unreconciled, failures, stop)
            if time.monotonic() >= next_decision:
                _decide(settings, stop)
                next_decision = time.monotonic() + settings.training.decide_every_s
            if requests is not None:
                for result in _kafka(settings, requests.results, stop):
                    _resolved(result, requests, pending, waiting_since, failures, unreconciled, metrics)
            # each tenant's registry is read once per tick, not once per record
            floor = functools.cache(lambda tenant: _trained_up_to(settings, tenant))
            counts, seen = _kafka(settings, functools.partial(pending_counts, settings, seen, floor), stop)
            pending.update(counts)
            if requests is not None:
                requests.counted(counts)
            for tenant, count in pending.items():
                metrics.pending.labels(tenant).set(count)
            now = time.monotonic()
            drifted = drifted_tenants(settings) if settings.drift.trigger_refresh and pending else {}
            for tenant in sorted(pending):
                if stop.is_set() or done():
                    break
                waiting_since.setdefault(tenant, now)
                due = now - waiting_since[tenant] >= settings.training.watch_minutes * 60
                if not (pending[tenant] >= settings.training.watch_min_examples or due or tenant in drifted):
                    continue
                if tenant in drifted and pending[tenant] < settings.training.watch_min_examples and not due:
                    log.info(
                        "watch: %s: its questions drifted (p %.4f < drift.significance); refreshing early",
                        tenant,
                        drifted[tenant],
                        extra={"tenant": tenant},
                    )
                if not failures.ready(tenant, time.monotonic()):
                    continue  # its examples stay pending until its backoff has passed
                if requests is not None and requests.in_flight(tenant, now):
                    continue  # its request waits for a worker, or runs; its result says when it is done
                if _on_trial(settings, tenant):
                    continue  # a canary awaits its decision (every decide_every_s); its examples stay pending
                if requests is not None:
                    why = _why(settings, pending[tenant], due, drifted.get(tenant))
                    _kafka(settings, functools.partial(requests.ask, tenant, seen, pending[tenant], why), stop)
                    metrics.requests.labels(tenant).inc()
                    refreshes += 1
                    continue
                log.info("watch: %s: %d new examples; refreshing", tenant, pending[tenant], extra={"tenant": tenant})
                refreshes += 1
                begin = time.monotonic()
                try:
                    with logs.context(tenant=tenant):  # the refresh's progress lines name the tenant too
                        outcome = refresh(settings, tenant, missing_docs=missing_docs, say=log.info)
                except Exception as exc:  # MemoryError included: that tenant's failure, not the service's
                    failures.failed(tenant, "refresh", exc)
                    metrics.refreshed(tenant, "failed", time.monotonic() - begin, None)
                    continue
                metrics.refreshed(tenant, outcome.status, time.monotonic() - begin, outcome.manifest)
                metrics.pending.labels(tenant).set(0)
                failures.succeeded(tenant)
                unreconciled.discard(tenant)  # a refresh repairs and reconciles first
                log.info(
                    "watch: %s: %s %s (%s)",
                    tenant,
                    outcome.status,
                    outcome.version or "",
                    outcome.reason,
                    extra={"tenant": tenant},
                )
                del pending[tenant], waiting_since[tenant]
            if not done():
                stop.wait(settings.training.watch_poll_s if poll_s is None else poll_s)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("watch: stopped after %d refreshes", refreshes)
    return 0


def _why(settings: Settings, pending: int, due: bool, drift_p: float | None) -> str:
    if pending >= settings.training.watch_min_examples:
        return f"at least training.watch_min_examples ({settings.training.watch_min_examples})"
    if due:
        return f"waited training.watch_minutes ({settings.training.watch_minutes:g})"
    return f"its questions drifted (p {drift_p or 0.0:.4f} < drift.significance)"


def _resolved(
    result: RefreshResult,
    requests: _Requests,
    pending: Counter[str],
    waiting_since: dict[str, float],
    failures: _Failures,
    unreconciled: set[str],
    metrics: Any,
) -> None:
    """A worker's result of one of this watcher's requests: the tenant's examples are served (those counted since
    the request stay pending), or, when it failed, wait for the tenant's backoff and are asked for again."""
    tenant = result.tenant
    if result.status == "failed":
        failures.failed(tenant, "refresh", RemoteRefreshFailed(f"on {result.worker}: {result.reason}"))
        return
    log.info(
        "watch: %s: %s %s (%s) by %s",
        tenant,
        result.status,
        result.version or "",
        result.reason,
        result.worker,
        extra={"tenant": tenant},
    )
    failures.succeeded(tenant)
    unreconciled.discard(tenant)  # the worker's refresh repaired and reconciled first
    left = requests.since.pop(tenant, 0)
    metrics.pending.labels(tenant).set(left)
    if left:
        pending[tenant], waiting_since[tenant] = left, time.monotonic()
    else:
        pending.pop(tenant, None)
        waiting_since.pop(tenant, None)


def drifted_tenants(settings: Settings) -> dict[str, float]:
    """The tenants whose question drift p-value, as serve reports it on ``monitor.serve_metrics_urls``, is below
    ``drift.significance`` (the smallest p-value over the replicas). An unreachable serve says nothing."""
    from streamtune.exposition import read_drift

    found: dict[str, float] = {}
    for url in settings.monitor.serve_metrics_urls:
        source = read_drift(url, settings.monitor.serve_metrics_timeout_s)
        if source.error is not None:
            log.debug("watch: no drift figures from %s: %s", url, source.error)
        for tenant, figures in source.figures.items():
            if figures.p_value < settings.drift.significance:
                found[tenant] = min(figures.p_value, found.get(tenant, 1.0))
    return found


def _reconcile(settings: Settings, unreconciled: set[str], failures: _Failures, stop: threading.Event) -> None:
    """Open each tenant's registry for writing (the repair) and announce its current version again if the
    announcement is missing: a crash after a promotion must not leave a version current but unserved."""
    ready = sorted(t for t in unreconciled if failures.ready(t, time.monotonic()))
    if not ready:
        return
    announced: Mapping[str, Announced] = _kafka(settings, lambda: last_announcements(settings), stop)
    for tenant in ready:
        if stop.is_set():
            return
        try:
            registry = open_registry(settings, tenant)
            with registry.writing():
                ensure_announced(settings, registry, announced=announced)
        except Exception as exc:
            failures.failed(tenant, "repair and announcement check", exc)
            continue
        failures.succeeded(tenant)
        unreconciled.discard(tenant)


def _decide(settings: Settings, stop: threading.Event) -> None:
    """One rollout decision step (``training.canary``) over every tenant; a failure is logged and the step runs
    again at the next interval, never a reason to stop refreshing."""
    try:
        for decision in _kafka(settings, lambda: decide(settings, say=log.debug), stop):
            log.info(
                "watch: %s: %s %s (%s)",
                decision.tenant,
                decision.action,
                decision.version,
                decision.reason,
                extra={"tenant": decision.tenant},
            )
    except _Stopped:
        raise
    except Exception as exc:
        log.error("watch: the rollout decision step failed (%s: %s); it runs again later", type(exc).__name__, exc)


def _kafka(settings: Settings, operation: Callable[[], T], stop: threading.Event) -> T:
    """``operation()``, waiting out a Kafka outage (``kafka.backoff()``: a service never gives up) until it
    succeeds or SIGTERM arrives."""

    def attempt() -> T:
        if stop.is_set():
            raise _Stopped
        return operation()

    return while_unreachable(settings.kafka, "watch", attempt, log=log, stop=stop)  # SIGTERM cuts a wait short
