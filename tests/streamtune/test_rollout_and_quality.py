"""The rollout fold and the canary split (``streamtune.rollout``), and the live-quality join
(``streamtune.quality``): pure, no broker."""

from __future__ import annotations

import uuid
from typing import Any

from streamtune import harness
from streamtune.contracts import AdapterUpdate, Answer, AnswerError
from streamtune.harness import adapter_update, feedback_recorded
from streamtune.quality import BASE, LiveQuality
from streamtune.rollout import Rollout, canary_arm, fold


def _update(version: str, state: str | None = None, percent: int | None = None) -> AdapterUpdate:
    return adapter_update("acme", version, state=state, canary_percent=percent)  # type: ignore[arg-type]


def test_announcements_fold_into_current_and_canary() -> None:
    rollout = fold(Rollout(), _update("v0001"))  # an announcement from before canaries: current
    assert rollout == Rollout("v0001")
    rollout = fold(rollout, _update("v0002", "canary", 20))
    assert rollout == Rollout("v0001", "v0002", 20)
    assert fold(rollout, _update("v0002", "current")) == Rollout("v0002")  # promoted: the trial ends
    assert fold(rollout, _update("v0002", "rolled_back")) == Rollout("v0001")  # rolled back: incumbent only
    # a current version rolled back leaves the rollout to the announcement of the one current again
    assert fold(rollout, _update("v0001", "rolled_back")) == rollout
    # another version made current by hand: the canary stays on trial against it
    assert fold(rollout, _update("v0000", "current")) == Rollout("v0000", "v0002", 20)


def test_the_canary_split_is_stable_and_has_the_configured_share() -> None:
    ids = [f"q-{i}" for i in range(20_000)]
    share = sum(canary_arm(q, 20) for q in ids) / len(ids)
    assert 0.19 <= share <= 0.21
    assert [canary_arm(q, 20) for q in ids[:500]] == [canary_arm(q, 20) for q in ids[:500]]
    assert not any(canary_arm(q, 0) for q in ids[:2000]) and all(canary_arm(q, 100) for q in ids[:2000])
    # a larger share keeps every query of the smaller one on the canary
    assert all(canary_arm(q, 50) for q in ids[:2000] if canary_arm(q, 20))


def _answer(query_id: str, tenant: str = "acme", version: str | None = "v0001", arm: str | None = None) -> Answer:
    return harness.answer(tenant, query_id, version=version, arm=arm)  # type: ignore[arg-type]


def _rating(query_id: str, rating: int, tenant: str = "acme", correction: str | None = None) -> object:
    return feedback_recorded(
        uuid.uuid4().hex, "q?", "a", rating=rating, tenant=tenant, query_id=query_id, correction=correction
    )


def test_ratings_join_their_answers_per_version_and_arm() -> None:
    quality = LiveQuality()
    quality.on_answer(_answer("q1", arm="incumbent"))
    quality.on_answer(_answer("q2", version="v0002", arm="canary"))
    quality.on_answer(_answer("q3", version=None))
    quality.on_answer(_answer("q1", arm="incumbent"))  # a duplicate answer: served once
    quality.on_answer(Answer(query_id="q4", tenant="acme", error=AnswerError(code="x", message="y")))
    quality.on_feedback(_rating("q1", 1))  # type: ignore[arg-type]
    quality.on_feedback(_rating("q2", -1, correction="better"))  # type: ignore[arg-type]
    quality.on_feedback(_rating("q3", -1))  # type: ignore[arg-type]
    assert quality.arm("acme", "v0001", "incumbent").as_dict() == {
        "served": 1,
        "rated": 1,
        "positive": 1,
        "negative": 0,
        "corrections": 0,
    }
    assert quality.arm("acme", "v0002", "canary").as_dict() == {
        "served": 1,
        "rated": 1,
        "positive": 0,
        "negative": 1,
        "corrections": 1,
    }
    versions = quality.versions("acme")
    assert sorted(versions) == sorted(["v0001", "v0002", BASE])
    assert versions[BASE].negative == 1 and versions[BASE].served == 1
    assert quality.ratings[("acme", "v0002")] == [-1]
    assert sum(quality.ignored.values()) == 0


def test_unknown_foreign_and_duplicate_ratings_are_counted_and_never_joined() -> None:
    quality = LiveQuality(max_pending=2)
    quality.on_answer(_answer("q1"))
    quality.on_feedback(_rating("q1", -1, tenant="evil"))  # type: ignore[arg-type]  # another tenant's answer
    quality.on_feedback(_rating("q1", 1))  # type: ignore[arg-type]
    quality.on_feedback(_rating("q1", -1))  # type: ignore[arg-type]  # rated twice
    quality.on_feedback(_rating("q1", -1))  # type: ignore[arg-type]
    for i in range(3):  # answers never read: they wait, the oldest beyond max_pending are dropped as unknown
        quality.on_feedback(_rating(f"nobody-{i}", -1))  # type: ignore[arg-type]
    figures = quality.versions("acme")["v0001"]
    assert (figures.served, figures.rated, figures.positive, figures.negative) == (1, 1, 1, 0)
    assert quality.ignored[("evil", "other_tenant")] == 1
    assert quality.ignored[("acme", "duplicate")] == 2
    assert quality.ignored[("acme", "unknown_query")] == 1 and quality.unknown("acme") == 2
    assert "evil" not in {t for t, _, _ in quality.figures}


def test_a_rating_read_before_its_answer_waits_for_it() -> None:
    quality = LiveQuality()
    quality.on_feedback(_rating("q1", -1))  # type: ignore[arg-type]
    assert quality.unknown("acme") == 1 and quality.versions("acme") == {}
    quality.on_answer(_answer("q1", version="v0003", arm="canary"))
    assert quality.unknown("acme") == 0 and quality.arm("acme", "v0003", "canary").negative == 1


def test_of_two_ratings_of_one_query_the_earliest_counts_whatever_the_read_order() -> None:
    from datetime import UTC, datetime

    def rating(event_id: str, value: int, minute: int) -> Any:
        event = feedback_recorded(event_id, "q?", "a", rating=value, tenant="acme", query_id="q1")
        return event.model_copy(update={"occurred_at": datetime(2026, 12, 6, 10, minute, tzinfo=UTC)})

    first, second = rating("e-1", -1, 0), rating("e-2", 1, 5)
    for order in ([first, second], [second, first]):
        quality = LiveQuality()
        quality.on_answer(_answer("q1"))
        for event in order:
            quality.on_feedback(event)
        figures = quality.versions("acme")["v0001"]
        assert (figures.rated, figures.negative, figures.positive) == (1, 1, 0), order
        assert quality.ratings[("acme", "v0001")] == [-1] and quality.ignored[("acme", "duplicate")] == 1
