"""The promotion rule, without a model: enough held-out evidence, held-out loss strictly better, exact match and
token F1 no worse than the tolerance, anchor loss within its tolerance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.manifest import EvalScores, SideScores
from training.gate import decide, gather_evidence


def side(held_out: float, anchor: float, exact_match: float = 0.5, token_f1: float = 0.5) -> SideScores:
    return SideScores(
        held_out=EvalScores(loss=held_out, exact_match=exact_match, token_f1=token_f1, examples=8),
        anchor=EvalScores(loss=anchor, exact_match=0.5, token_f1=0.5, examples=8),
    )


def test_a_better_candidate_within_every_tolerance_is_promoted() -> None:
    verdict = decide(side(1.0, 2.1), side(1.5, 2.0), 0.25, quality_tolerance=0.05, compared_with="v0001")
    assert verdict.promoted
    assert verdict.reason == (
        "held-out loss 1.0000 < 1.5000, exact match 0.50 (current 0.50), token F1 0.50 (current 0.50) on 8 "
        "examples, and anchor within tolerance"
    )
    assert (verdict.anchor_tolerance, verdict.quality_tolerance, verdict.compared_with) == (0.25, 0.05, "v0001")


@pytest.mark.parametrize("held_out", [1.5, 1.6], ids=["equal", "worse"])
def test_a_candidate_not_better_on_the_held_out_slice_is_rejected(held_out: float) -> None:
    verdict = decide(side(held_out, 1.0), side(1.5, 2.0), 0.25, quality_tolerance=0.05)
    assert not verdict.promoted
    assert verdict.reason == f"held-out loss {held_out:.4f} is not below the current 1.5000"


def test_a_lower_loss_with_a_worse_exact_match_is_rejected() -> None:
    verdict = decide(side(1.0, 2.0, exact_match=0.25), side(1.5, 2.0, exact_match=0.5), 0.25, quality_tolerance=0.1)
    assert not verdict.promoted
    assert verdict.reason == "held-out exact match 0.2500 is more than 0.10 below the current 0.5000"


def test_a_lower_loss_with_a_worse_token_f1_is_rejected() -> None:
    verdict = decide(side(1.0, 2.0, token_f1=0.3), side(1.5, 2.0, token_f1=0.5), 0.25, quality_tolerance=0.1)
    assert not verdict.promoted
    assert verdict.reason == "held-out token F1 0.3000 is more than 0.10 below the current 0.5000"


def test_exact_match_and_f1_may_fall_by_the_tolerance_itself_and_no_more() -> None:
    # 0.75 - 0.25 == 0.5 exactly in binary floating point: the boundary is inclusive.
    current = side(1.5, 2.0, exact_match=0.75, token_f1=0.75)
    assert decide(side(1.0, 2.0, exact_match=0.5, token_f1=0.5), current, 0.0, quality_tolerance=0.25).promoted
    below = math.nextafter(0.5, 0.0)
    assert not decide(side(1.0, 2.0, exact_match=below), current, 0.0, quality_tolerance=0.25).promoted
    assert not decide(side(1.0, 2.0, token_f1=below), current, 0.0, quality_tolerance=0.25).promoted
    # zero tolerance: no drop at all, equal is fine, better is fine
    assert decide(side(1.0, 2.0, 0.5, 0.5), side(1.5, 2.0, 0.5, 0.5), 0.0, quality_tolerance=0.0).promoted
    assert decide(side(1.0, 2.0, 0.9, 0.9), side(1.5, 2.0, 0.5, 0.5), 0.0, quality_tolerance=0.0).promoted


def test_an_exact_match_or_f1_that_could_not_be_measured_never_promotes() -> None:
    for candidate, current in [
        (side(1.0, 2.0, exact_match=math.nan), side(1.5, 2.0)),
        (side(1.0, 2.0), side(1.5, 2.0, token_f1=math.nan)),
    ]:
        verdict = decide(candidate, current, 0.25, quality_tolerance=0.05)
        assert not verdict.promoted and "could not be measured" in verdict.reason


def test_a_better_candidate_that_forgets_the_anchor_set_is_rejected() -> None:
    verdict = decide(side(1.0, 2.6), side(1.5, 2.0), 0.25, quality_tolerance=0.05)
    assert not verdict.promoted
    assert verdict.reason == "anchor loss 2.6000 exceeds 2.5000 (current +25%)"


def test_the_held_out_rules_are_checked_first_in_order_loss_exact_match_f1() -> None:
    worst = side(2.0, 9.0, exact_match=0.0, token_f1=0.0)
    assert decide(worst, side(1.5, 2.0), 0.25, quality_tolerance=0.05).reason.startswith("held-out loss 2.0000")
    lower_loss = side(1.0, 9.0, exact_match=0.0, token_f1=0.0)
    assert decide(lower_loss, side(1.5, 2.0), 0.25, quality_tolerance=0.05).reason.startswith("held-out exact match")
    good_em = side(1.0, 9.0, token_f1=0.0)
    assert decide(good_em, side(1.5, 2.0), 0.25, quality_tolerance=0.05).reason.startswith("held-out token F1")


def test_the_anchor_limit_itself_is_within_tolerance() -> None:
    # 2.0 * (1 + 0.25) == 2.5 exactly in binary floating point: the boundary is inclusive.
    assert decide(side(1.0, 2.5), side(1.5, 2.0), 0.25, quality_tolerance=0.05).promoted
    assert not decide(side(1.0, math.nextafter(2.5, 3.0)), side(1.5, 2.0), 0.25, quality_tolerance=0.05).promoted


def test_zero_tolerance_allows_no_anchor_rise_at_all() -> None:
    assert decide(side(1.0, 2.0), side(1.5, 2.0), 0.0, quality_tolerance=0.05).promoted
    verdict = decide(side(1.0, 2.0001), side(1.5, 2.0), 0.0, quality_tolerance=0.05)
    assert not verdict.promoted and verdict.reason == "anchor loss 2.0001 exceeds 2.0000 (current +0%)"


def test_a_loss_that_could_not_be_measured_never_promotes() -> None:
    assert not decide(side(math.nan, 1.0), side(1.5, 2.0), 0.25, quality_tolerance=0.05).promoted
    assert not decide(side(1.0, math.nan), side(1.5, 2.0), 0.25, quality_tolerance=0.05).promoted
    assert not decide(side(1.0, 1.0), side(math.nan, 2.0), 0.25, quality_tolerance=0.05).promoted


def test_decide_defaults_to_no_comparison_name() -> None:
    assert decide(side(1.0, 1.0), side(1.5, 2.0), 0.05, quality_tolerance=0.05).compared_with == ""


# -- evidence ---------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 21, tzinfo=UTC)


def ex(name: str, minutes: int = 0) -> TrainingExample:
    return TrainingExample(
        example_id=name,
        source_event_id=name,
        created_at=T0 + timedelta(minutes=minutes),
        messages=[ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a")],
    )


def test_a_held_out_slice_of_the_minimum_is_evidence_by_itself() -> None:
    held = [ex(f"new-{i}") for i in range(4)]
    evidence = gather_evidence(held, [ex("old-1"), ex("old-2")], 4)
    assert evidence.enough and evidence.examples == held
    assert evidence.record.model_dump() == {
        "minimum": 4,
        "new_held_out": 4,
        "earlier_held_out": 0,
        "earlier_example_ids": [],
    }


def test_a_small_slice_is_topped_up_with_the_most_recent_earlier_held_out_examples() -> None:
    held = [ex("new-1", 100)]
    earlier = [ex("old-a", 1), ex("old-c", 3), ex("old-b", 3), ex("old-d", 2), ex("old-e", 0)]
    evidence = gather_evidence(held, earlier, 4)
    assert evidence.enough
    # newest first; equal times by id (descending), so the read order does not matter
    assert [e.example_id for e in evidence.examples] == ["new-1", "old-c", "old-b", "old-d"]
    assert (evidence.record.new_held_out, evidence.record.earlier_held_out) == (1, 3)
    assert evidence.record.earlier_example_ids == ["old-c", "old-b", "old-d"]
    assert gather_evidence(held, list(reversed(earlier)), 4).examples == evidence.examples


def test_too_little_evidence_is_no_decision_and_says_how_much_there_is() -> None:
    evidence = gather_evidence([ex("new-1"), ex("new-2")], [ex("old-1")], 8)
    assert not evidence.enough
    assert len(evidence.examples) == 3
    assert evidence.shortfall == "too little evidence (3 held-out examples, minimum 8)"


def test_unusable_earlier_examples_are_passed_over_and_only_candidates_are_asked_about() -> None:
    earlier = [ex(f"old-{i}", i) for i in range(10)]  # old-9 is the most recent
    asked: list[list[str]] = []

    def unusable(batch: Sequence[TrainingExample]) -> set[str]:
        ids = [e.example_id for e in batch]
        asked.append(ids)
        return {"old-9", "old-7"} & set(ids)

    evidence = gather_evidence([ex("new")], earlier, 4, unusable=unusable)
    assert [e.example_id for e in evidence.examples] == ["new", "old-8", "old-6", "old-5"]
    assert asked == [["old-9", "old-8", "old-7"], ["old-6", "old-5"]]  # never the whole history
    enough = [ex(f"n{i}") for i in range(4)]
    assert gather_evidence(enough, earlier, 4, unusable=unusable).examples == enough
    assert len(asked) == 2  # a slice that suffices asks nothing
