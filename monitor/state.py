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
- promotion → first answer: a ``current`` announcement's timestamp on ``adapter-updates`` → the first answer
  at or after it whose ``adapter_version`` is the announced version, outside the canary arm (a canary answers
  with its version before it is promoted); a ``canary`` announcement waits the same way for its first answer
  on the canary arm (shown on the page, not in the promotion histogram); a ``rolled_back`` one waits for none;
- the rollout: each tenant's current version and running canary, folded from its announcements with
  ``streamtune.rollout.fold`` as ``serve`` folds them, so a rolled-back version is never shown as current;
- live quality: ``feedback.recorded`` events on ``domain-events`` joined to the answers they rate
  (``streamtune.quality.LiveQuality``: per tenant, version and canary arm; ratings of an unknown query, of
  another tenant's answer, or rating a query twice are counted and ignored). It keeps LiveQuality's own
  bounds, not ``monitor.max_pending``: they are the ones the canary's decision step (``training/canary.py``)
  joins with, so that the page shows the figures the decision is taken on.
- freshness (event → searchable): a ``document.upserted`` record's timestamp → the time Weaviate last wrote
  the document's first chunk, once that chunk carries the event's id (the app looks it up, rate-limited).
- knowledge gaps: the share of ungrounded answers (``grounded`` false: no document passed serve's
  ``retrieval.min_similarity``; the threshold is applied once, by serve) among the tenant's last
  ``monitor.knowledge_gap_window`` answers that say (a count window: sparse traffic still gives a figure;
  error answers and older producers, ``grounded`` None, are not counted), and the last
  ``monitor.knowledge_gap_questions`` ungrounded questions, joined from ``queries`` by ``query_id``;
- adapter age and pending examples: seconds since the announcement of the tenant's current adapter, and the
  ``training-examples`` records beyond the offsets it was trained on (its manifest's ``trained_up_to``): the
  trainer's own definition of pending (``training/watch.py``), whichever of the two topics is read first;
- the signals against their thresholds, and since when (``monitor/signals.py``), with question drift as
  ``serve`` publishes it (``on_drift``: the app reads serve's /metrics).

Every other map that waits for a partner is bounded by ``monitor.max_pending``: the oldest entries go first.
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
from monitor.signals import Alert, GapGroup, Reading, SinceWhen, group_questions
from streamtune.contracts import (
    TENANT_PATTERN,
    AdapterUpdate,
    Answer,
    DocumentUpserted,
    FeedbackRecorded,
    Query,
    TrainingExample,
)
from streamtune.dlq import DeadLetter
from streamtune.exposition import DriftSource
from streamtune.manifest import Manifest
from streamtune.quality import BASE, IGNORED_REASONS, Figures, LiveQuality
from streamtune.rollout import Rollout, fold
from streamtune.settings import MonitorSettings

__all__ = [
    "UNKNOWN_TENANT",
    "AdapterRecord",
    "LetterRecord",
    "LiveVersion",
    "MonitorState",
    "PendingDocument",
    "TenantState",
    "Window",
    "letter_tenant",
    "manifest_figures",
    "percentile",
]

UNKNOWN_TENANT = "(unknown)"
_QUESTION_CHARS = 500
"""Of a question waiting for its answer, or kept as a knowledge gap, the first this many characters are kept
(a question may be 64 KiB; the page shows questions, it does not need them whole)."""
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
    """One announcement on ``adapter-updates``: a version made current, put on trial as a canary
    (``canary_percent`` % of the queries), or rolled back."""

    version: str
    announced_at: float
    promoted: bool
    reason: str
    compared_with: str
    created_at: float
    figures: dict[str, float | None]
    state: str = "current"
    """``current``, ``canary`` or ``rolled_back`` (an announcement from before canaries: ``current``)."""
    canary_percent: int = 0
    trained_up_to: dict[int, int] = field(default_factory=dict)
    """Per partition of ``training-examples``, the first offset the version was not trained on."""
    first_answer_at: float | None = None
    """The first answer in the announced role: outside the canary arm for ``current``, on it for ``canary``."""

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
    gap_window: int = 200
    gap_questions_kept: int = 500
    examples_kept: int = 10_000
    queries: int = 0
    answers: int = 0
    errors: int = 0
    dead_letters: int = 0
    latency: Window = field(init=False)
    freshness: Window = field(init=False)
    outcomes: Window = field(init=False)
    letter_times: Window = field(init=False)
    adapters: list[AdapterRecord] = field(default_factory=list)
    rollout: Rollout = field(default_factory=Rollout)
    letters: deque[LetterRecord] = field(init=False)
    grounded: deque[bool] = field(init=False)
    """The last answers that say whether they were grounded (``gap_window`` of them)."""
    gap_questions: deque[str] = field(init=False)
    """The last ungrounded questions, oldest first."""
    gap_over_since: float | None = None
    """The time of the answer that took the knowledge-gap share over its threshold (None: not over)."""
    examples: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    """Per partition of ``training-examples``, the (offset, timestamp) of the tenant's last examples."""

    def __post_init__(self) -> None:
        self.latency = Window(self.window_s)
        self.freshness = Window(self.window_s)
        self.outcomes = Window(self.window_s)
        self.letter_times = Window(self.window_s)
        self.letters = deque(maxlen=self.letters_kept)
        self.grounded = deque(maxlen=self.gap_window)
        self.gap_questions = deque(maxlen=self.gap_questions_kept)

    @property
    def knowledge_gap_ratio(self) -> float | None:
        """Ungrounded answers / answers that say, over the count window (None: none says yet)."""
        return sum(not g for g in self.grounded) / len(self.grounded) if self.grounded else None

    def pending_examples(self) -> list[float]:
        """The timestamps of the examples beyond what the current adapter was trained on (all, without one)."""
        current = self.current
        floor = current.trained_up_to if current else {}
        pending: list[float] = []
        for partition, seen in self.examples.items():
            start = bisect.bisect_left(seen, (floor.get(partition, 0), -math.inf))
            pending += [at for _, at in seen[start:]]
        return pending

    @property
    def current(self) -> AdapterRecord | None:
        """The announcement that made the rollout's current version current (None: the base model)."""
        return self._last("current", self.rollout.current)

    @property
    def canary(self) -> AdapterRecord | None:
        """The announcement of the canary on trial now, if one is."""
        return self._last("canary", self.rollout.canary)

    def _last(self, state: str, version: str | None) -> AdapterRecord | None:
        if version is None:
            return None
        return next((r for r in reversed(self.adapters) if r.state == state and r.version == version), None)


@dataclass(frozen=True)
class LiveVersion:
    """One version's live figures (every arm summed) and its role in the tenant's rollout now."""

    version: str
    """The adapter version, or ``streamtune.quality.BASE`` for the base model."""
    role: str
    """``current``, ``canary`` or ``earlier`` (any other version that answered)."""
    figures: Figures


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
        self._queries = _Bounded(limit)  # (tenant, query_id) -> (query timestamp, question), waiting for the answer
        self._answers = _Bounded(limit)  # (tenant, query_id) -> (answer timestamp, ungrounded), read before its query
        self._last_served: dict[tuple[str, str], float] = {}  # (tenant, version or BASE) -> its last answer's time
        # (tenant, version, role) -> sorted timestamps of its answers in that role (current or canary)
        self._served: dict[tuple[str, str, str], list[float]] = {}
        self.pending_documents = _Bounded(limit)  # (tenant, doc_id) -> PendingDocument
        self.quality = LiveQuality()
        self.drift: dict[str, DriftSource] = {}  # serve /metrics URL -> what it said last
        self.since = SinceWhen()

    def tenant(self, name: str) -> TenantState:
        if name not in self.tenants:
            conf = self.settings
            self.tenants[name] = TenantState(
                conf.window_s,
                conf.dead_letters_shown,
                gap_window=conf.knowledge_gap_window,
                gap_questions_kept=conf.knowledge_gap_questions,
                examples_kept=conf.max_pending,
            )
        return self.tenants[name]

    # -- records --------------------------------------------------------------------------------
    def on_query(self, query: Query, at: float) -> None:
        state = self.tenant(query.tenant)
        state.queries += 1
        self.metrics.queries.labels(query.tenant).inc()
        answered = self._answers.pop((query.tenant, query.query_id), None)
        if answered is not None:
            answered_at, ungrounded = answered
            self._latency(query.tenant, answered_at, answered_at - at)
            if ungrounded:
                state.gap_questions.append(query.question[:_QUESTION_CHARS])
        else:
            self._queries.put((query.tenant, query.query_id), (at, query.question[:_QUESTION_CHARS]))

    def on_answer(self, answer: Answer, at: float) -> None:
        tenant = answer.tenant
        state = self.tenant(tenant)
        state.answers += 1
        self.metrics.answers.labels(tenant).inc()
        state.outcomes.add(at, 1.0 if answer.error is not None else 0.0)
        if answer.error is not None:
            state.errors += 1
            self.metrics.errors.labels(tenant, answer.error.code).inc()
        ungrounded = answer.grounded is False
        if answer.grounded is not None:
            self._grounded(state, answer.grounded, at)
        asked = self._queries.pop((tenant, answer.query_id), None)
        if asked is not None:
            asked_at, question = asked
            self._latency(tenant, at, at - asked_at)
            if ungrounded:
                state.gap_questions.append(question)
        else:
            self._answers.put((tenant, answer.query_id), (at, ungrounded))
        if answer.error is None:
            key = (tenant, answer.adapter_version or BASE)
            self._last_served[key] = max(self._last_served.get(key, at), at)
        if answer.adapter_version and answer.error is None:
            self._served_with(state, tenant, answer.adapter_version, _role(answer), at)
        self.quality.on_answer(answer)

    def _grounded(self, state: TenantState, grounded: bool, at: float) -> None:
        state.grounded.append(grounded)
        ratio = state.knowledge_gap_ratio
        if ratio is not None and ratio > self.settings.knowledge_gap_threshold:
            if state.gap_over_since is None:
                state.gap_over_since = at
        else:
            state.gap_over_since = None

    def on_training_example(self, example: TrainingExample, at: float, partition: int, offset: int) -> None:
        """A record of ``training-examples``: pending until an adapter trained beyond its offset is current."""
        state = self.tenant(example.tenant)
        seen = state.examples.setdefault(partition, [])
        if seen and offset <= seen[-1][0]:  # a partition is read in order: this is a re-delivery (a rebalance)
            index = bisect.bisect_left(seen, (offset, -math.inf))
            if index == len(seen) or seen[index][0] != offset:
                seen.insert(index, (offset, at))
        else:
            seen.append((offset, at))
        if len(seen) > state.examples_kept:
            del seen[: len(seen) - state.examples_kept]

    def on_drift(self, source: DriftSource) -> None:
        """What a serve /metrics endpoint said (or why it said nothing), read by the app."""
        self.drift[source.url] = source

    def on_feedback(self, event: FeedbackRecorded) -> None:
        """A rating on ``domain-events``: joined to the answer it rates (``streamtune.quality``)."""
        self.tenant(event.tenant)
        self.quality.on_feedback(event)

    def on_adapter_update(self, update: AdapterUpdate, at: float) -> None:
        state = self.tenant(update.tenant)
        manifest = update.manifest
        before = state.rollout
        state.rollout = fold(before, update)
        record = AdapterRecord(
            version=update.version,
            announced_at=at,
            promoted=manifest.gate.promoted,
            reason=manifest.gate.reason,
            compared_with=manifest.gate.compared_with,
            created_at=manifest.created_at.timestamp(),
            figures=manifest_figures(manifest),
            state=update.state or "current",
            canary_percent=(update.canary_percent or 0) if update.state == "canary" else 0,
            trained_up_to=manifest.data.trained_up_to(),
        )
        if record.state != "rolled_back":  # the end of a trial (or a withdrawal) waits for no answer
            served = self._served.get((update.tenant, update.version, record.state), [])
            index = bisect.bisect_left(served, at)
            if index < len(served):
                self._first_answer(update.tenant, record, served[index])
        state.adapters.append(record)
        self.metrics.adapter_updates.labels(update.tenant, "promoted" if record.promoted else "rejected").inc()
        if before.current != state.rollout.current:
            if before.current is not None:
                with contextlib.suppress(KeyError):
                    self.metrics.current_adapter.remove(update.tenant, before.current)
            if state.rollout.current is not None:
                self.metrics.current_adapter.labels(update.tenant, state.rollout.current).set(1)

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

    def _served_with(self, state: TenantState, tenant: str, version: str, role: str, at: float) -> None:
        served = self._served.setdefault((tenant, version, role), [])
        bisect.insort(served, at)
        if len(served) > self.settings.max_pending:
            served.pop()
        for record in state.adapters:
            if record.version != version or record.state != role or record.announced_at > at:
                continue
            if record.first_answer_at is None:
                self._first_answer(tenant, record, at)
            elif at < record.first_answer_at:  # read out of order: an earlier answer than the one seen first
                record.first_answer_at = at

    def _first_answer(self, tenant: str, record: AdapterRecord, at: float) -> None:
        record.first_answer_at = at
        if record.state == "current":  # the histogram is promotion → first answer; a canary's is on the page
            self.metrics.promotion.labels(tenant).observe(at - record.announced_at)

    def live(self, tenant: str) -> list[LiveVersion]:
        """``tenant``'s live figures per version: the current one, the canary, then the others, newest first.
        The current version and the canary are listed even before they answered."""
        rollout = self.tenant(tenant).rollout
        current, canary = rollout.current or BASE, rollout.canary
        by_version = self.quality.versions(tenant)
        rows = [LiveVersion(current, "current", by_version.pop(current, Figures()))]
        if canary is not None and canary != current:
            rows.append(LiveVersion(canary, "canary", by_version.pop(canary, Figures())))
        rows += [LiveVersion(v, "earlier", by_version[v]) for v in sorted(by_version, reverse=True)]
        return rows

    def arms(self, tenant: str) -> tuple[Figures, Figures] | None:
        """While a canary runs: its arm's figures and the current version's on the incumbent arm."""
        rollout = self.tenant(tenant).rollout
        if rollout.canary is None:
            return None
        return (
            self.quality.arm(tenant, rollout.canary, "canary"),
            self.quality.arm(tenant, rollout.current, "incumbent"),
        )

    def figures(self, tenant: str) -> dict[str, float | None]:
        """The tenant's windowed figures now (None: nothing in the window)."""
        state = self.tenant(tenant)
        now = self.clock()
        latency = state.latency.values(now)
        freshness = state.freshness.values(now)
        outcomes = state.outcomes.values(now)
        letters = state.letter_times.values(now)
        current = state.current
        pending = state.pending_examples()
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
            "knowledge_gap_ratio": state.knowledge_gap_ratio,
            "knowledge_gap_n": float(len(state.grounded)),
            "adapter_age_s": now - current.announced_at if current else None,
            "pending_examples": float(len(pending)),
        }

    def gap_groups(self, tenant: str) -> list[GapGroup]:
        """The tenant's ungrounded questions grouped by likeness, largest group first."""
        conf = self.settings
        questions = list(self.tenant(tenant).gap_questions)
        return group_questions(questions, conf.knowledge_gap_similarity, conf.knowledge_gap_groups)

    def readings(self, tenant: str) -> list[Reading]:
        """Every signal of ``tenant`` now, against its threshold (``monitor/signals.py``); a signal without a
        figure (an empty window, no adapter, no drift test) gives no reading."""
        conf, state, now = self.settings, self.tenant(tenant), self.clock()
        figures = self.figures(tenant)
        out: list[Reading] = []

        def windowed(alert: str, name: str, threshold: float, unit: Any) -> None:
            value = figures[name]
            if value is not None:
                out.append(Reading(tenant, alert, value, threshold, value > threshold, unit))

        gap = figures["knowledge_gap_ratio"]
        if gap is not None:
            over = gap > conf.knowledge_gap_threshold
            detail = f"of the last {len(state.grounded)} answers that say"
            onset = state.gap_over_since if over else None
            out.append(
                Reading(
                    tenant,
                    "KnowledgeGaps",
                    gap,
                    conf.knowledge_gap_threshold,
                    over,
                    "share",
                    onset=onset,
                    detail=detail,
                )
            )
        for live in self.live(tenant):
            share, rated = live.figures.negative_share, live.figures.rated
            if share is None or rated < conf.negative_min_ratings:
                continue
            active = self._last_served.get((tenant, live.version), -math.inf) >= now - conf.negative_active_s
            over = share > conf.negative_share_threshold and active
            detail = f"of {rated} ratings" + ("" if active else ", not answering lately")
            threshold = conf.negative_share_threshold
            out.append(
                Reading(tenant, "NegativeFeedback", share, threshold, over, "share", live.version, detail=detail)
            )
        age = figures["adapter_age_s"]
        if age is not None and state.current is not None:
            pending = sorted(state.pending_examples())
            over = age > conf.adapter_max_age_s and len(pending) >= conf.stale_min_pending
            onset = None
            if over:  # the later of: the adapter became too old, enough examples were waiting
                onset = max(state.current.announced_at + conf.adapter_max_age_s, pending[conf.stale_min_pending - 1])
            detail = f"old, {len(pending)} examples waiting (at least {conf.stale_min_pending})"
            version = state.current.version
            out.append(
                Reading(tenant, "StaleAdapter", age, conf.adapter_max_age_s, over, "seconds", version, onset, detail)
            )
        windowed("FreshnessSLO", "freshness_p99_s", conf.freshness_p99_slo_s, "seconds")
        windowed("DeadLetterRate", "dlq_per_s", conf.dlq_rate_slo, "per_second")
        windowed("ErrorAnswers", "error_ratio", conf.error_ratio_slo, "share")
        drift = [(source.url, source.figures[tenant]) for source in self.drift.values() if tenant in source.figures]
        if drift:
            url, worst = min(drift, key=lambda pair: pair[1].p_value)  # every replica tests its own share
            detail = f"from {url}" + (f", window {worst.window:.0f}" if worst.window is not None else "")
            over = worst.p_value < conf.drift_significance
            significance = conf.drift_significance
            out.append(Reading(tenant, "QuestionDrift", worst.p_value, significance, over, "p_value", detail=detail))
        return out

    def alerts(self) -> dict[str, list[Alert]]:
        """Per tenant, the signals over their threshold now and since when (an evaluation: it moves since-when)."""
        readings = [reading for tenant in list(self.tenants) for reading in self.readings(tenant)]
        return self.since.evaluate(readings, self.clock())

    def drift_unreachable(self) -> list[DriftSource]:
        """The serve /metrics endpoints whose last read failed."""
        return [source for source in self.drift.values() if source.error is not None]

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
                (m.knowledge_gap_ratio, "knowledge_gap_ratio"),
                (m.adapter_age, "adapter_age_s"),
            ):
                value = figures[name]
                gauge.labels(tenant).set(math.nan if value is None else value)
        self._refresh_live()

    def _refresh_live(self) -> None:
        """The live-quality gauges, set from the join (it only grows: no series goes away but the canary's)."""
        m, quality = self.metrics, self.quality
        for (tenant, version, arm), figures in list(quality.figures.items()):
            arm_label = arm or _NO_ARM
            m.live_answers.labels(tenant, version, arm_label).set(figures.served)
            m.live_ratings.labels(tenant, version, arm_label, "positive").set(figures.positive)
            m.live_ratings.labels(tenant, version, arm_label, "negative").set(figures.negative)
        for tenant in quality.tenants():
            for version, figures in quality.versions(tenant).items():
                m.live_corrections.labels(tenant, version).set(figures.corrections)
                share = figures.negative_share
                m.live_negative_share.labels(tenant, version).set(math.nan if share is None else share)
        m.canary_percent.clear()  # a canary ends (promoted or rolled back): its series goes
        for tenant, state in list(self.tenants.items()):
            if tenant == UNKNOWN_TENANT:
                continue  # a dead letter's, never a rating's
            for reason in IGNORED_REASONS:
                m.feedback_ignored.labels(tenant, reason).set(quality.ignored[(tenant, reason)])
            m.feedback_unknown.labels(tenant).set(quality.unknown(tenant))
            if state.rollout.canary is not None:
                m.canary_percent.labels(tenant, state.rollout.canary).set(state.rollout.canary_percent)


_NO_ARM = "none"
"""The arm label of answers given outside a canary (or pinned to a version)."""


def _role(answer: Answer) -> str:
    """The role an answer's version answered in: ``canary`` on the canary arm, else ``current``."""
    return "canary" if answer.arm == "canary" else "current"
