"""The canary's decision on live feedback, and the degradation check of a current version.

A candidate that passes the offline gate becomes its tenant's *canary* (``training.canary_percent`` > 0):
``serve`` answers that share of the tenant's queries with it and the rest with the incumbent (the current
version, or the base model for a tenant without one), and each answer names its arm. ``decide`` judges the
rated answers of both arms (``streamtune.quality``, rebuilt from ``answers`` and ``domain-events`` at every
run) and does one of three things, each a registry record with the figures it was decided on and an
announcement on ``adapter-updates``:

- **promote**: the canary becomes current;
- **roll back**: the canary is marked ``rolled_back``; the incumbent keeps every query;
- **wait**, until ``training.canary_max_hours``; then the canary is promoted unless it is more likely worse
  than the incumbent (posterior probability above one half), since it already passed the offline gate.

The test is Bayesian on each arm's negative-rating rate: a Beta(1, 1) prior, so the posterior is
Beta(1 + negative, 1 + positive), and ``probability_better`` is the exact probability that the canary's rate
is below the incumbent's (Evan Miller's closed form for two betas, in log space; no sampling, so a decision is
reproducible). The canary is promoted once that probability reaches ``1 - canary_false_promotion``, rolled back
once its complement reaches ``1 - canary_false_rollback``, and neither before each arm has
``canary_min_rated`` rated answers. Why this test and not Wald's SPRT: the SPRT needs a point alternative
(an effect size to detect) and, for two rates, a known incumbent rate; the beta-binomial needs neither, handles
the unequal split of traffic (20 % against 80 %) as it is, and with a minimum per arm it decides as soon as the
evidence is lopsided (one arm all negative, the other all positive: at the minimum, 10 per arm by default).
Its frequentist error rates under continuous monitoring are not guaranteed by construction, so
``bench/canary.py`` measures them over simulated rollouts with known true rates (BENCHMARKS.md).

Degradation: a current version whose negative share over its last ``training.degradation_window`` rated
answers exceeds its share before them by more than ``training.degradation_margin`` (with at least
``canary_min_rated`` earlier ratings) is rolled back to the previous version the same way.

Exactly one decision per canary, whatever crashes or runs beside it: a tenant is decided holding its registry
lock (``AdapterRegistry.writing``), which is re-read inside the lock (a second decision step finds the canary
already decided and does nothing); the registry record is written before the announcement, and
``ensure_announced`` announces a decision that a crash left unannounced (never twice: it compares with what
the topic says).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from streamtune.contracts import FeedbackRecorded, decode_event
from streamtune.errors import ContractError
from streamtune.kafka import committed_end_offsets, read_range
from streamtune.quality import Figures, LiveQuality
from streamtune.settings import Settings, TrainingSettings
from streamtune.topics import ANSWERS, DOMAIN_EVENTS, topic_name
from training.publish import announce, ensure_announced
from training.registry import AdapterRegistry, open_registry, tenants

__all__ = ["Decision", "Judgement", "decide", "degradation", "judge", "probability_better", "read_quality"]

log = logging.getLogger(__name__)

Action = Literal["promote", "rollback", "wait"]


def probability_better(canary: Figures, incumbent: Figures) -> float:
    """P(canary's negative-rating rate < incumbent's) under Beta(1 + negative, 1 + positive) posteriors."""
    a_c, b_c = 1 + canary.negative, 1 + canary.positive
    a_i, b_i = 1 + incumbent.negative, 1 + incumbent.positive
    # P(Y > X) for X ~ Beta(a_c, b_c), Y ~ Beta(a_i, b_i), a_i an integer (Evan Miller, "Formulas for Bayesian
    # A/B testing"): a sum of a_i terms, each in log space so that hundreds of ratings do not overflow.
    log_b_c = _log_beta(a_c, b_c)
    total = 0.0
    for i in range(a_i):
        total += math.exp(_log_beta(a_c + i, b_c + b_i) - math.log(b_i + i) - _log_beta(1 + i, b_i) - log_b_c)
    return min(max(total, 0.0), 1.0)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@dataclass(frozen=True)
class Judgement:
    action: Action
    reason: str
    p_better: float


def judge(canary: Figures, incumbent: Figures, settings: TrainingSettings, age_hours: float) -> Judgement:
    """The decision rule on both arms' figures (pure; see the module docstring)."""
    p_better = probability_better(canary, incumbent)
    enough = min(canary.rated, incumbent.rated) >= settings.canary_min_rated
    odds = f"P(canary better) = {p_better:.3f} on {canary.rated} vs {incumbent.rated} rated answers"
    if enough and p_better >= 1 - settings.canary_false_promotion:
        return Judgement("promote", f"{odds} >= {1 - settings.canary_false_promotion:.3f}", p_better)
    if enough and 1 - p_better >= 1 - settings.canary_false_rollback:
        return Judgement("rollback", f"{odds}: P(worse) >= {1 - settings.canary_false_rollback:.3f}", p_better)
    if age_hours >= settings.canary_max_hours:
        action: Action = "promote" if p_better >= 0.5 else "rollback"
        return Judgement(action, f"undecided after {settings.canary_max_hours:g} h ({odds}); {action}", p_better)
    need = "" if enough else f"; each arm needs {settings.canary_min_rated}"
    return Judgement("wait", f"{odds}{need}", p_better)


def degradation(ratings: list[int], settings: TrainingSettings) -> tuple[bool, str]:
    """Whether a version's ratings (in order) show its recent negative share above its earlier one by more
    than the margin, and the figures that say so."""
    window = settings.degradation_window
    earlier, recent = ratings[:-window], ratings[-window:]
    if len(recent) < window or len(earlier) < settings.canary_min_rated:
        return False, f"{len(ratings)} rated answers; needs {window} recent + {settings.canary_min_rated} earlier"
    share_recent = recent.count(-1) / len(recent)
    share_earlier = earlier.count(-1) / len(earlier)
    said = (
        f"negative share {share_recent:.2f} over the last {len(recent)} rated answers vs {share_earlier:.2f} over "
        f"the {len(earlier)} before (margin {settings.degradation_margin:g})"
    )
    return share_recent - share_earlier > settings.degradation_margin, said


@dataclass(frozen=True)
class Decision:
    tenant: str
    version: str
    action: Action
    reason: str
    record: dict[str, Any]


def read_quality(settings: Settings) -> LiveQuality:
    """The live-quality join rebuilt from ``answers`` and the feedback on ``domain-events``, up to their
    committed ends: every answer first, so that a rating read before its answer still joins."""
    quality = LiveQuality()
    for message in _read_all(settings, topic_name(ANSWERS, settings.topics)):
        try:
            quality.on_answer(ANSWERS.decode(message.value()))
        except ContractError:
            continue  # a foreign record: serve writes only valid answers
    for message in _read_all(settings, topic_name(DOMAIN_EVENTS, settings.topics)):
        value = message.value() or b""
        if b"feedback.recorded" not in value:
            continue  # documents can be large: only feedback is decoded
        try:
            event = decode_event(value, max_bytes=settings.streams.max_event_bytes)
        except ContractError:
            continue  # the ingest job dead-letters it, with the reason
        if isinstance(event, FeedbackRecorded):
            quality.on_feedback(event)
    return quality


def _read_all(settings: Settings, topic: str) -> Iterable[Any]:
    ends = committed_end_offsets(settings.kafka, topic)
    return read_range(settings.kafka, topic, {p: (0, end) for p, end in ends.items() if end > 0})


def decide(
    settings: Settings,
    only: str | None = None,
    *,
    quality: LiveQuality | None = None,
    now: datetime | None = None,
    say: Callable[[str], None] = print,
) -> list[Decision]:
    """One decision step over every tenant with a registry (or ``only``): returns the decisions taken."""
    quality = read_quality(settings) if quality is None else quality
    decisions = []
    for tenant in [only] if only else tenants(settings.adapters_dir):
        registry = open_registry(settings, tenant)
        with registry.writing():
            ensure_announced(settings, registry)  # a decision a crash left unannounced goes out first
            for decision in _decide_tenant(settings, registry, quality, now or datetime.now(UTC), say):
                decisions.append(decision)
    return decisions


def _decide_tenant(
    settings: Settings, registry: AdapterRegistry, quality: LiveQuality, now: datetime, say: Callable[[str], None]
) -> Iterable[Decision]:
    tenant, conf = registry.tenant, settings.training
    canary, current = registry.canary(), registry.current()
    if canary is not None:
        incumbent = current.name if current else None
        ours, theirs = quality.arm(tenant, canary.name, "canary"), quality.arm(tenant, incumbent, "incumbent")
        age_hours = (now - (canary.published_at or canary.manifest.created_at)).total_seconds() / 3600
        verdict = judge(ours, theirs, conf, age_hours)
        say(f"  {tenant}: canary {canary.name} vs {incumbent or 'base model'}: {verdict.action} ({verdict.reason})")
        if verdict.action != "wait":
            record = _record(verdict.action, verdict.reason, now)
            record |= {"incumbent": incumbent, "canary_figures": ours.as_dict(), "incumbent_figures": theirs.as_dict()}
            record["p_better"] = round(verdict.p_better, 6)
            if verdict.action == "promote":
                announce(settings, registry.promote(canary.name, decision=record))
            else:
                announce(settings, registry.end_canary(canary.name, record), "rolled_back")
            log.info("tenant %s: canary %s: %s (%s)", tenant, canary.name, verdict.action, verdict.reason)
            yield Decision(tenant, canary.name, verdict.action, verdict.reason, record)
            current = registry.current()
    if current is None:
        return
    degraded, said = degradation(quality.ratings.get((tenant, current.name), []), conf)
    if not degraded:
        return
    previous = registry.previous()
    if previous is None:
        say(f"  {tenant}: {current.name} degraded ({said}), but there is no earlier version to roll back to")
        return
    figures = quality.versions(tenant)[current.name].as_dict()
    record = _record("rollback", f"degraded: {said}", now) | {"figures": figures}
    say(f"  {tenant}: {current.name} degraded ({said}); rolling back to {previous.name}")
    left = registry.get(current.name)
    registry.rollback(decision=record)
    announce(settings, left, "rolled_back")
    announce(settings, registry.get(previous.name))
    yield Decision(tenant, current.name, "rollback", record["reason"], record)


def _record(action: str, reason: str, now: datetime) -> dict[str, Any]:
    return {"decision": action, "reason": reason, "at": now.isoformat()}
