"""The canary's decision on live feedback, and the degradation check of a current version.

A candidate that passes the offline gate becomes its tenant's *canary* (``training.canary_percent`` > 0):
``serve`` answers that share of the tenant's queries with it and the rest with the incumbent (the current
version, or the base model for a tenant without one), and each answer names its arm. ``decide`` judges the
rated answers of both arms (``streamtune.quality``, rebuilt from ``answers`` and ``domain-events`` at every
run) and does one of three things, each a registry record with the figures it was decided on and an
announcement on ``adapter-updates``:

- **promote**: the canary becomes current;
- **roll back**: the canary is marked ``rolled_back``; the incumbent keeps every query;
- **wait**, until ``training.canary_max_hours``; then a canary that each arm's ratings could not prove better
  is rolled back (promoting a worse adapter costs every user; rolling back a better one costs a refresh's
  delay), and one that too few users rated (under ``canary_min_rated`` on an arm) is promoted on the offline
  gate's verdict, as without canaries.

The test is Wald's sequential probability ratio test (SPRT) on where the negative ratings come from. Given
the share ``r`` of rated answers that the canary gave, a negative rating comes from the canary with probability
``r * rho / (r * rho + 1 - r)``, where ``rho`` is the canary's negative-rating rate divided by the incumbent's:
the incumbent's own rate (a nuisance for a test of two rates) cancels out. The test weighs ``rho = 1 /
canary_effect`` (better) against ``rho = canary_effect`` (worse): promote once the log-likelihood ratio reaches
``log(1 / canary_false_promotion)``, roll back once it falls to ``log(canary_false_rollback)`` (Wald's bounds
that keep each error rate at or below its setting, not only near it), and neither before each arm has
``canary_min_rated`` rated answers. Why this test: its error rates are the settings, under a decision step
run as often as one likes (Wald's bounds hold for continuous monitoring; a Bayesian posterior threshold
checked after every rating does not keep them, as ``bench/canary.py`` showed before this test replaced it); it
needs no prior and no known incumbent rate, handles the unequal split of traffic (20 % against 80 %) as it
is, and is a few lines of arithmetic on four counts. One arm all negative and the other all positive is
decided at the minimum (10 per arm by default). ``bench/canary.py`` measures the error rates and the rated
answers to a decision over simulated rollouts with known true rates (BENCHMARKS.md).

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

from streamtune.adapter_store import open_store
from streamtune.contracts import FeedbackRecorded, decode_event
from streamtune.errors import ContractError
from streamtune.kafka import committed_end_offsets, read_range
from streamtune.quality import Figures, LiveQuality
from streamtune.settings import Settings, TrainingSettings
from streamtune.topics import ANSWERS, DOMAIN_EVENTS, topic_name
from training.publish import announce, ensure_announced
from training.registry import AdapterRegistry, open_registry, tenants

__all__ = ["Decision", "Judgement", "decide", "degradation", "judge", "log_likelihood_ratio", "read_quality"]

log = logging.getLogger(__name__)

Action = Literal["promote", "rollback", "wait"]


def log_likelihood_ratio(canary: Figures, incumbent: Figures, effect: float) -> float:
    """The SPRT's log-likelihood ratio of "the canary is better" (its negative-rating rate is the incumbent's
    divided by ``effect``) against "worse" (times ``effect``), from which arm each negative rating came; 0 while
    an arm has no rated answer."""
    rated = canary.rated + incumbent.rated
    if not canary.rated or not incumbent.rated:
        return 0.0
    share = canary.rated / rated

    def from_canary(rho: float) -> float:
        return share * rho / (share * rho + 1 - share)

    better, worse = from_canary(1 / effect), from_canary(effect)
    return canary.negative * math.log(better / worse) + incumbent.negative * math.log((1 - better) / (1 - worse))


@dataclass(frozen=True)
class Judgement:
    action: Action
    reason: str
    llr: float
    """The test's log-likelihood ratio when it was judged."""


def judge(canary: Figures, incumbent: Figures, settings: TrainingSettings, age_hours: float) -> Judgement:
    """The decision rule on both arms' figures (pure; see the module docstring)."""
    llr = log_likelihood_ratio(canary, incumbent, settings.canary_effect)
    # Wald's bounds 1/alpha and beta rather than his approximations (1 - beta)/alpha and beta/(1 - alpha): with
    # these, his inequalities keep each error rate at or below its setting, not only about there.
    promote_at = math.log(1 / settings.canary_false_promotion)
    rollback_at = math.log(settings.canary_false_rollback)
    enough = min(canary.rated, incumbent.rated) >= settings.canary_min_rated
    said = (
        f"log-likelihood ratio {llr:+.2f} (promote at {promote_at:+.2f}, roll back at {rollback_at:+.2f}) on "
        f"{canary.negative}/{canary.rated} negative for the canary vs {incumbent.negative}/{incumbent.rated}"
    )
    if enough and llr >= promote_at:
        return Judgement("promote", said, llr)
    if enough and llr <= rollback_at:
        return Judgement("rollback", said, llr)
    if age_hours >= settings.canary_max_hours:
        if not enough:  # nobody rates: the offline gate's verdict is all there is, as with canary_percent = 0
            return Judgement("promote", f"too few ratings after {settings.canary_max_hours:g} h ({said})", llr)
        return Judgement("rollback", f"not proven better after {settings.canary_max_hours:g} h ({said})", llr)
    need = "" if enough else f"; each arm needs {settings.canary_min_rated} rated answers"
    return Judgement("wait", f"{said}{need}", llr)


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
    """One decision step over every tenant with a registry (or ``only``) that has a canary or a current version:
    returns the decisions taken. The topics are read only when there is such a tenant."""
    judged = [t for t in ([only] if only else tenants(open_store(settings))) if _has_rollout(settings, t)]
    if not judged:
        return []
    quality = read_quality(settings) if quality is None else quality
    decisions = []
    for tenant in judged:
        registry = open_registry(settings, tenant)
        with registry.writing():
            ensure_announced(settings, registry)  # a decision a crash left unannounced goes out first
            for decision in _decide_tenant(settings, registry, quality, now or datetime.now(UTC), say):
                decisions.append(decision)
    return decisions


def _has_rollout(settings: Settings, tenant: str) -> bool:
    registry = open_registry(settings, tenant)
    return registry.canary() is not None or registry.current() is not None


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
            record["log_likelihood_ratio"] = round(verdict.llr, 6)
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
