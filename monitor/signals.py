"""The signals of the status page's "Alerts" block: each one against its threshold, and since when it is over.

The promise: the page and Prometheus agree. Every signal is named after its rule in
``docker/prometheus/alerts.yml`` and compared with the same threshold (``monitor.*`` settings whose defaults
are the rules' thresholds; ``tests/monitor/test_signals.py`` reads the rules and checks them). The page shows
a signal as soon as it is over; Prometheus waits for the rule's ``for:`` before it fires.

Pure, like ``monitor/state.py``: ``MonitorState.readings`` turns the state into ``Reading``\\ s, ``SinceWhen``
remembers since when each one is over, and the drift figures are parsed from text that the app fetched.

- Since when: a reading may carry its ``onset``, the record time at which its condition began (knowledge gaps:
  the answer that took the share over; a stale adapter: its announcement plus the maximum age, or the example
  that made enough wait, whichever is later). Such a since-when is a function of the records, so a monitor that
  restarts and replays the topics shows the same one. The others (windowed figures, negative share, drift)
  are over since the first evaluation that found them over; after a restart that is the first evaluation
  after the replay. Every since-when resets once its signal is found back under.
- Knowledge gaps are grouped lexically, not by meaning: the monitor has no embedding model (no torch in its
  environment). Two questions share a group when their word sets (lower case, no punctuation, no stopwords)
  have a Jaccard similarity of at least ``monitor.knowledge_gap_similarity``; greedy, most frequent first.
- Drift is computed by ``serve`` and read from its ``/metrics`` (``streamtune_question_drift_*{tenant}``); an
  endpoint that cannot be read is reported as unreachable, never raised and never alerted on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ALERTS",
    "Alert",
    "GapGroup",
    "Reading",
    "SinceWhen",
    "group_questions",
    "jaccard",
    "normalise",
]

ALERTS = (
    "QuestionDrift",
    "KnowledgeGaps",
    "NegativeFeedback",
    "StaleAdapter",
    "FreshnessSLO",
    "DeadLetterRate",
    "ErrorAnswers",
)
"""The rules of alerts.yml the monitor evaluates per tenant (MonitorDown is about the monitor itself)."""

Unit = Literal["share", "seconds", "per_second", "p_value"]


@dataclass(frozen=True)
class Reading:
    """One signal of one tenant now: its value, its threshold, and whether it is over."""

    tenant: str
    alert: str
    """The rule of alerts.yml it mirrors (one of ``ALERTS``)."""
    value: float
    threshold: float
    over: bool
    unit: Unit
    subject: str = ""
    """What in the tenant it concerns, when a tenant has several (a version for NegativeFeedback)."""
    onset: float | None = None
    """The record time at which the condition began, when the records tell it (see the module's docstring)."""
    detail: str = ""


@dataclass(frozen=True)
class Alert:
    reading: Reading
    since: float


class SinceWhen:
    """Remembers, per tenant, signal and subject, since when it has been over. ``evaluate`` is handed every
    tenant's readings at once: what is not over in them, or not in them at all, is forgotten."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, str, str], float] = {}

    def evaluate(self, readings: Iterable[Reading], now: float) -> dict[str, list[Alert]]:
        """The readings over their threshold, per tenant, each with its since-when."""
        since: dict[tuple[str, str, str], float] = {}
        alerts: dict[str, list[Alert]] = {}
        for reading in readings:
            if not reading.over:
                continue
            key = (reading.tenant, reading.alert, reading.subject)
            # a since-when the records tell is exact (and survives a restart); else the first time it was seen
            since[key] = reading.onset if reading.onset is not None else self._since.get(key, now)
            alerts.setdefault(reading.tenant, []).append(Alert(reading, since[key]))
        self._since = since
        return alerts


# -- knowledge gaps --------------------------------------------------------------------------------------
_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in is it its me my "  # noqa: SIM905
    "of on or our please should so than that the their them then there these they this to was we were what when "
    "where which who whom why will with would you your".split()
)


def normalise(question: str) -> frozenset[str]:
    """The question's words: lower case, punctuation dropped, stopwords dropped."""
    return frozenset(word for word in _WORD.findall(question.lower()) if word not in _STOPWORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Shared words over all words; two questions with no words left after ``normalise`` are alike (1.0)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


@dataclass
class GapGroup:
    """Questions alike: how many were asked, one to show for them, and up to three others as examples."""

    count: int
    representative: str
    examples: list[str] = field(default_factory=list)
    _words: frozenset[str] = field(default=frozenset(), repr=False)


def group_questions(questions: Sequence[str], similarity: float, limit: int, examples: int = 3) -> list[GapGroup]:
    """The ``limit`` largest groups of ``questions`` (oldest first): questions with the same words are counted
    together, then each set of words, most frequent first, joins the first group whose representative it
    resembles (Jaccard >= ``similarity``) or starts its own. The representative is the most recently asked
    wording of the group's most frequent words; ties keep the most recent first."""
    by_words: dict[frozenset[str], list[str]] = {}
    for question in reversed(questions):  # newest first
        by_words.setdefault(normalise(question), []).append(question.strip())
    # stable sort: equal counts stay newest first (dicts keep insertion order)
    ordered = sorted(by_words.items(), key=lambda item: -len(item[1]))
    groups: list[GapGroup] = []
    for words, asked in ordered:
        group = next((g for g in groups if jaccard(g._words, words) >= similarity), None)
        if group is None:
            groups.append(GapGroup(len(asked), asked[0], [], words))
            group = groups[-1]
            asked = asked[1:]
        else:
            group.count += len(asked)
        for text in asked:
            if len(group.examples) < examples and text != group.representative and text not in group.examples:
                group.examples.append(text)
    groups.sort(key=lambda g: -g.count)
    return groups[:limit]
