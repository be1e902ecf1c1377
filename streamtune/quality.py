"""Live quality: the ratings users give to served answers, joined to the version (and canary arm) that served them.

An ``answers`` record names the version that answered (``adapter_version``; None: the base model) and, while
a canary runs, its arm. A ``feedback.recorded`` event rates one answer by ``query_id``. ``LiveQuality`` joins
the two and keeps, per tenant, version and arm: answers served, answers rated, positive and negative ratings,
corrections, and each version's ratings in the order they were read (the degradation check needs the order).

The join is strict, so that no rating counts for the wrong version or tenant:

- a rating is joined only to an answer of the *same tenant*; one naming another tenant's query is counted
  as ``other_tenant`` and ignored (a tenant cannot move another's figures);
- one rating per query counts: the earliest (by ``occurred_at``, then ``event_id``), whatever order the
  partitions of ``domain-events`` are read in (two ratings of one query may sit on two partitions when their
  producer keyed them by different event ids); the others are counted as ``duplicate`` and ignored;
- a rating whose answer has not been read (yet) waits for it, up to ``max_pending`` ratings (the oldest are
  dropped and counted as ``unknown_query``), since ``answers`` and ``domain-events`` are read side by side;
  ``unknown`` reports those still waiting;
- an answer read twice (a duplicate answer is allowed by the contract) is served once; error answers are not
  served answers, and a rating of one is never joined.

Everything is a function of the records handed in, in their order: the monitor and the canary's decision
step (``training/canary.py``) rebuild it by reading the topics from the beginning, so nothing is kept only
in memory.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from streamtune.contracts import Answer, FeedbackRecorded

__all__ = ["BASE", "IGNORED_REASONS", "Figures", "LiveQuality"]

BASE = "base"
"""The version label of answers given by the base model (no adapter)."""
IGNORED_REASONS = ("unknown_query", "other_tenant", "duplicate")


@dataclass
class Figures:
    served: int = 0
    rated: int = 0
    positive: int = 0
    negative: int = 0
    corrections: int = 0

    def add(self, other: Figures) -> None:
        self.served += other.served
        self.rated += other.rated
        self.positive += other.positive
        self.negative += other.negative
        self.corrections += other.corrections

    @property
    def negative_share(self) -> float | None:
        return self.negative / self.rated if self.rated else None

    def as_dict(self) -> dict[str, int]:
        return {
            "served": self.served,
            "rated": self.rated,
            "positive": self.positive,
            "negative": self.negative,
            "corrections": self.corrections,
        }


@dataclass(frozen=True)
class _Served:
    tenant: str
    version: str
    arm: str | None


@dataclass
class LiveQuality:
    max_answers: int = 1_000_000
    """Answers remembered for joining (the oldest are forgotten first; a rating of one is then unknown)."""
    max_pending: int = 100_000
    figures: dict[tuple[str, str, str | None], Figures] = field(default_factory=dict)
    """(tenant, version, arm) → figures; arm None: answered outside a canary (or pinned)."""
    _joined: dict[str, tuple[FeedbackRecorded, _Served]] = field(default_factory=dict)
    ignored: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(tenant of the rating, reason) → ratings ignored."""
    _answers: OrderedDict[str, _Served] = field(default_factory=OrderedDict)
    _pending: OrderedDict[str, FeedbackRecorded] = field(default_factory=OrderedDict)

    @property
    def ratings(self) -> dict[tuple[str, str], list[int]]:
        """(tenant, version) → its ratings (1 / -1) in the order they were given (``occurred_at``)."""
        out: dict[tuple[str, str], list[int]] = {}
        for event, served in sorted(self._joined.values(), key=lambda pair: _order(pair[0])):
            out.setdefault((served.tenant, served.version), []).append(event.data.rating)
        return out

    def on_answer(self, answer: Answer) -> None:
        if answer.error is not None or answer.query_id in self._answers:
            return
        served = _Served(answer.tenant, answer.adapter_version or BASE, answer.arm)
        self._answers[answer.query_id] = served
        if len(self._answers) > self.max_answers:
            self._answers.popitem(last=False)
        self._figures(served).served += 1
        waiting = self._pending.pop(answer.query_id, None)
        if waiting is not None:
            self._join(waiting, served)

    def on_feedback(self, event: FeedbackRecorded) -> None:
        query_id = event.data.query_id
        waiting = self._pending.get(query_id)
        if waiting is not None:
            self.ignored[(event.tenant, "duplicate")] += 1
            if _order(event) < _order(waiting):
                self._pending[query_id] = event
            return
        joined = self._joined.get(query_id)
        if joined is not None:
            self.ignored[(event.tenant, "duplicate")] += 1
            if _order(event) < _order(joined[0]) and event.tenant == joined[1].tenant:
                self._count(joined[0], joined[1], -1)  # the earlier rating counts instead
                self._count(event, joined[1], 1)
                self._joined[query_id] = (event, joined[1])
            return
        served = self._answers.get(query_id)
        if served is None:
            self._pending[query_id] = event
            if len(self._pending) > self.max_pending:
                _, dropped = self._pending.popitem(last=False)
                self.ignored[(dropped.tenant, "unknown_query")] += 1
            return
        self._join(event, served)

    def _join(self, event: FeedbackRecorded, served: _Served) -> None:
        if event.tenant != served.tenant:
            self.ignored[(event.tenant, "other_tenant")] += 1
            return
        self._joined[event.data.query_id] = (event, served)
        self._count(event, served, 1)

    def _count(self, event: FeedbackRecorded, served: _Served, sign: int) -> None:
        figures = self._figures(served)
        figures.rated += sign
        if event.data.rating > 0:
            figures.positive += sign
        else:
            figures.negative += sign
        if event.data.correction:
            figures.corrections += sign

    def _figures(self, served: _Served) -> Figures:
        return self.figures.setdefault((served.tenant, served.version, served.arm), Figures())

    # -- reading ---------------------------------------------------------------------------------
    def unknown(self, tenant: str) -> int:
        """Ratings of ``tenant`` whose answer has not been read."""
        return sum(1 for event in self._pending.values() if event.tenant == tenant)

    def tenants(self) -> list[str]:
        return sorted({t for t, _, _ in self.figures} | {t for t, _ in self.ignored})

    def versions(self, tenant: str) -> dict[str, Figures]:
        """``tenant``'s figures per version, every arm summed."""
        out: dict[str, Figures] = {}
        for (t, version, _), figures in sorted(self.figures.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            if t == tenant:
                out.setdefault(version, Figures()).add(figures)
        return out

    def arm(self, tenant: str, version: str | None, arm: str) -> Figures:
        """The figures of ``version``'s answers on ``arm`` of a canary (empty when there are none)."""
        return self.figures.get((tenant, version or BASE, arm), Figures())


def _order(event: FeedbackRecorded) -> tuple[datetime, str]:
    return event.occurred_at, event.event_id
