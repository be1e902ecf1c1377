"""The monitor's per-tenant state: windows, joins and adapter history, pure and in memory.

Nothing here touches Kafka, Weaviate or faust: the app (``monitor/app.py``) hands each decoded record to one
``on_*`` method with its Kafka timestamp, and every figure is a function of what was handed in, so the
window and percentile logic is unit-tested without a broker.

Why plain dicts and deques, not faust tables: a faust table is backed by a changelog topic that it creates
and writes, and recovers from at start; the monitor must write nothing. Its state is instead rebuilt from
the topics at every start (``monitor.from_beginning``), which is also what makes it safe to lose.

The figures:

- answer latency: a ``queries`` record's timestamp → its ``answers`` record's timestamp (joined on
  ``query_id``, whichever of the two is read first);
- error and DLQ rates: the share of error answers, and dead letters per second, over ``monitor.window_s``;
- promotion → first answer: an ``adapter-updates`` record's timestamp → the first answer at or after it
  whose ``adapter_version`` is the announced version;
- freshness (event → searchable): a ``document.upserted`` record's timestamp → the time Weaviate last wrote
  the document's first chunk, once that chunk carries the event's id (the app looks it up, rate-limited).

Every map that waits for a partner is bounded by ``monitor.max_pending``: the oldest entries go first.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from monitor.metrics import MonitorMetrics
from streamtune.contracts import TENANT_PATTERN, AdapterUpdate, Answer, DocumentUpserted, Query
from streamtune.dlq import DeadLetter
from streamtune.manifest import Manifest
from streamtune.settings import MonitorSettings

__all__ = [
    "UNKNOWN_TENANT",
    "AdapterRecord",
    "LetterRecord",
    "MonitorState",
    "PendingDocument",
    "TenantState",
    "Window",
    "letter_tenant",
    "manifest_figures",
    "percentile",
]

UNKNOWN_TENANT = "(unknown)"
"""Dead letters whose tenant cannot be told (not JSON, no valid tenant); no real tenant can be named so."""
_TENANT = re.compile(TENANT_PATTERN)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of ``values``: a value that occurred; None when empty."""
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class Window:
    """Timestamped values of the last ``span_s`` seconds (by record timestamp; records may come out of order)."""

    def __init__(self, span_s: float, max_items: int = 100_000) -> None:
        self.span_s = span_s
        self._items: deque[tuple[float, float]] = deque(maxlen=max_items)

    def add(self, at: float, value: float) -> None:
        self._items.append((at, value))

    def values(self, now: float) -> list[float]:
        cutoff = now - self.span_s
        if self._items and min(self._items)[0] < cutoff:
            kept = [item for item in self._items if item[0] >= cutoff]
            self._items.clear()
            self._items.extend(kept)
        return [value for _, value in self._items]


@dataclass
class AdapterRecord:
    """One announcement on ``adapter-updates``: the version that became the tenant's current one."""

    version: str
    announced_at: float
    promoted: bool
    reason: str
    compared_with: str
    created_at: float
    figures: dict[str, float | None]
    first_answer_at: float | None = None

    @property
    def to_first_answer_s(self) -> float | None:
        return None if self.first_answer_at is None else self.first_answer_at - self.announced_at


@dataclass(frozen=True)
class LetterRecord:
    at: float
    reason: str
    source: str


@dataclass(frozen=True)
class PendingDocument:
    tenant: str
    doc_id: str
    event_id: str
    at: float
    source: tuple[int, int]
    """Partition and offset of the event on ``domain-events`` (a dead letter names its source so)."""


@dataclass
class TenantState:
    window_s: float
    letters_kept: int
    queries: int = 0
    answers: int = 0
    errors: int = 0
    dead_letters: int = 0
    latency: Window = field(init=False)
    freshness: Window = field(init=False)
    outcomes: Window = field(init=False)
    letter_times: Window = field(init=False)
    adapters: list[AdapterRecord] = field(default_factory=list)
    letters: deque[LetterRecord] = field(init=False)

    def __post_init__(self) -> None:
        self.latency = Window(self.window_s)
        self.freshness = Window(self.window_s)
        self.outcomes = Window(self.window_s)
        self.letter_times = Window(self.window_s)
        self.letters = deque(maxlen=self.letters_kept)

    @property
    def current(self) -> AdapterRecord | None:
        return self.adapters[-1] if self.adapters else None


class _Bounded(OrderedDict[Any, Any]):
    """An insertion-ordered map that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self.pop(key, None)
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)


def manifest_figures(manifest: Manifest) -> dict[str, float | None]:
    """What the history shows of a version's scores: the candidate's, and the held-out loss it was compared to."""
    candidate = manifest.metrics.candidate
    return {
        "train_final_loss": manifest.metrics.train.final_loss,
        "held_out_loss": candidate.held_out.loss,
        "current_held_out_loss": manifest.metrics.current.held_out.loss,
        "held_out_exact_match": candidate.held_out.exact_match,
        "held_out_token_f1": candidate.held_out.token_f1,
        "anchor_loss": candidate.anchor.loss,
    }


def letter_tenant(letter: DeadLetter) -> str:
    """The tenant a dead letter belongs to: its value's ``tenant`` when that is JSON naming a valid one, else
    the ``<tenant>:`` of a document key, else ``UNKNOWN_TENANT`` (a dead letter is by definition malformed)."""
    try:
        value = json.loads(letter.value or b"")
    except (ValueError, UnicodeDecodeError):
        value = None
    candidate = value.get("tenant") if isinstance(value, dict) else None
    if isinstance(candidate, str) and _TENANT.match(candidate):
        return candidate
    key = (letter.key or b"").decode("utf-8", "replace")
    prefix, sep, _ = key.partition(":")
    if sep and _TENANT.match(prefix):
        return prefix
    return UNKNOWN_TENANT


class MonitorState:
    """Every tenant's figures, fed one decoded record at a time; ``refresh`` sets the windowed gauges."""

    def __init__(
        self, settings: MonitorSettings, metrics: MonitorMetrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.tenants: dict[str, TenantState] = {}
        limit = settings.max_pending
        self._queries = _Bounded(limit)  # query_id -> query timestamp, waiting for the answer
        self._answers = _Bounded(limit)  # query_id -> answer timestamp, read before its query
        self._served: dict[tuple[str, str], list[float]] = {}  # (tenant, version) -> sorted answer timestamps
        self.pending_documents = _Bounded(limit)  # (tenant, doc_id) -> PendingDocument

    def tenant(self, name: str) -> TenantState:
        if name not in self.tenants:
            self.tenants[name] = TenantState(self.settings.window_s, self.settings.dead_letters_shown)
        return self.tenants[name]

    # -- records --------------------------------------------------------------------------------
    def on_query(self, query: Query, at: float) -> None:
        state = self.tenant(query.tenant)
        state.queries += 1
        self.metrics.queries.labels(query.tenant).inc()
        answered = self._answers.pop((query.tenant, query.query_id), None)
        if answered is not None:
            self._latency(query.tenant, answered, answered - at)
        else:
            self._queries.put((query.tenant, query.query_id), at)

    def on_answer(self, answer: Answer, at: float) -> None:
        tenant = answer.tenant
        state = self.tenant(tenant)
        state.answers += 1
        self.metrics.answers.labels(tenant).inc()
        state.outcomes.add(at, 1.0 if answer.error is not None else 0.0)
        if answer.error is not None:
            state.errors += 1
            self.metrics.errors.labels(tenant, answer.error.code).inc()
        asked = self._queries.pop((tenant, answer.query_id), None)
        if asked is not None:
            self._latency(tenant, at, at - asked)
        else:
            self._answers.put((tenant, answer.query_id), at)
        if answer.adapter_version and answer.error is None:
            self._served_with(state, tenant, answer.adapter_version, at)

    def on_adapter_update(self, update: AdapterUpdate, at: float) -> None:
        state = self.tenant(update.tenant)
        manifest = update.manifest
        previous = state.current
        record = AdapterRecord(
            version=update.version,
            announced_at=at,
            promoted=manifest.gate.promoted,
            reason=manifest.gate.reason,
            compared_with=manifest.gate.compared_with,
            created_at=manifest.created_at.timestamp(),
            figures=manifest_figures(manifest),
        )
        served = self._served.get((update.tenant, update.version), [])
        index = bisect.bisect_left(served, at)
        if index < len(served):
            record.first_answer_at = served[index]
            self.metrics.promotion.labels(update.tenant).observe(served[index] - at)
        state.adapters.append(record)
        self.metrics.adapter_updates.labels(update.tenant, "promoted" if record.promoted else "rejected").inc()
        if previous is not None and previous.version != record.version:
            with contextlib.suppress(KeyError):  # announced before but not as the current one
                self.metrics.current_adapter.remove(update.tenant, previous.version)
        self.metrics.current_adapter.labels(update.tenant, record.version).set(1)

    def on_dead_letter(self, letter: DeadLetter, at: float) -> str:
        """Record a dead letter; returns the tenant it was counted for."""
        tenant = letter_tenant(letter)
        state = self.tenant(tenant)
        state.dead_letters += 1
        state.letter_times.add(at, 1.0)
        state.letters.appendleft(LetterRecord(at, letter.reason, letter.source))
        self.metrics.dlq.labels(tenant, letter.error_class).inc()
        # an event that went to the DLQ will never be searchable: it is not waited for
        for key, pending in list(self.pending_documents.items()):
            if (letter.source_partition, letter.source_offset) == pending.source and pending.tenant == tenant:
                del self.pending_documents[key]
        return tenant

    def on_document(self, event: DocumentUpserted, at: float, partition: int, offset: int) -> None:
        """A document event on ``domain-events``: it is waited for until its chunks are searchable."""
        self.tenant(event.tenant)
        pending = PendingDocument(event.tenant, event.data.doc_id, event.event_id, at, (partition, offset))
        self.pending_documents.put((event.tenant, event.data.doc_id), pending)

    def on_document_deleted(self, tenant: str, doc_id: str) -> None:
        self.pending_documents.pop((tenant, doc_id), None)

    def on_indexed(self, pending: PendingDocument, written_at: float) -> None:
        """``pending``'s chunks were found in Weaviate, written at ``written_at`` with its event id."""
        if self.pending_documents.get((pending.tenant, pending.doc_id)) != pending:
            return  # superseded by a newer event of the same document meanwhile
        del self.pending_documents[(pending.tenant, pending.doc_id)]
        delay = max(written_at - pending.at, 0.0)
        self.tenant(pending.tenant).freshness.add(written_at, delay)
        self.metrics.freshness.labels(pending.tenant).observe(delay)

    def due_documents(self, limit: int) -> list[PendingDocument]:
        """The oldest ``limit`` documents still waiting; those waited for too long are dropped as overdue."""
        cutoff = self.clock() - self.settings.freshness_give_up_s
        due: list[PendingDocument] = []
        for key, pending in list(self.pending_documents.items()):
            if pending.at < cutoff:
                del self.pending_documents[key]
                self.metrics.freshness_overdue.labels(pending.tenant).inc()
            elif len(due) < limit:
                due.append(pending)
        for pending in due:  # looked at now: to the back of the queue, behind the ones not yet looked at
            self.pending_documents.move_to_end((pending.tenant, pending.doc_id))
        return due

    # -- figures --------------------------------------------------------------------------------
    def _latency(self, tenant: str, at: float, seconds: float) -> None:
        seconds = max(seconds, 0.0)  # producers' clocks may disagree by a little
        self.tenant(tenant).latency.add(at, seconds)
        self.metrics.latency.labels(tenant).observe(seconds)

    def _served_with(self, state: TenantState, tenant: str, version: str, at: float) -> None:
        served = self._served.setdefault((tenant, version), [])
        bisect.insort(served, at)
        if len(served) > self.settings.max_pending:
            served.pop()
        for record in state.adapters:
            if record.version != version or record.announced_at > at:
                continue
            if record.first_answer_at is None:
                self.metrics.promotion.labels(tenant).observe(at - record.announced_at)
                record.first_answer_at = at
            elif at < record.first_answer_at:  # read out of order: an earlier answer than the one seen first
                record.first_answer_at = at

    def figures(self, tenant: str) -> dict[str, float | None]:
        """The tenant's windowed figures now (None: nothing in the window)."""
        state = self.tenant(tenant)
        now = self.clock()
        latency = state.latency.values(now)
        freshness = state.freshness.values(now)
        outcomes = state.outcomes.values(now)
        letters = state.letter_times.values(now)
        current = state.current
        return {
            "latency_p50_s": percentile(latency, 0.5),
            "latency_p99_s": percentile(latency, 0.99),
            "latency_n": float(len(latency)),
            "freshness_p50_s": percentile(freshness, 0.5),
            "freshness_p99_s": percentile(freshness, 0.99),
            "freshness_n": float(len(freshness)),
            "error_ratio": sum(outcomes) / len(outcomes) if outcomes else None,
            "answers_in_window": float(len(outcomes)),
            "dlq_per_s": len(letters) / self.settings.window_s,
            "promotion_to_first_answer_s": current.to_first_answer_s if current else None,
        }

    def refresh(self) -> None:
        """Set every tenant's windowed gauges (before ``/metrics`` is served)."""
        m = self.metrics
        for tenant in list(self.tenants):
            figures = self.figures(tenant)
            for gauge, name in (
                (m.latency_p50, "latency_p50_s"),
                (m.latency_p99, "latency_p99_s"),
                (m.freshness_p50, "freshness_p50_s"),
                (m.freshness_p99, "freshness_p99_s"),
                (m.error_ratio, "error_ratio"),
                (m.dlq_rate, "dlq_per_s"),
            ):
                value = figures[name]
                gauge.labels(tenant).set(math.nan if value is None else value)
