"""The promotion rule, without a model: held-out loss strictly better, anchor loss within the tolerance."""

from __future__ import annotations

import math

import pytest

from streamtune.manifest import EvalScores, SideScores
from training.gate import decide


def side(held_out: float, anchor: float) -> SideScores:
    return SideScores(
        held_out=EvalScores(loss=held_out, exact_match=0.5, token_f1=0.5, examples=4),
        anchor=EvalScores(loss=anchor, exact_match=0.5, token_f1=0.5, examples=8),
    )


def test_a_better_candidate_within_the_anchor_tolerance_is_promoted() -> None:
    verdict = decide(side(1.0, 2.1), side(1.5, 2.0), 0.25, compared_with="v0001")
    assert verdict.promoted
    assert verdict.reason == "held-out loss 1.0000 < 1.5000 and anchor within tolerance"
    assert (verdict.anchor_tolerance, verdict.compared_with) == (0.25, "v0001")


@pytest.mark.parametrize("held_out", [1.5, 1.6], ids=["equal", "worse"])
def test_a_candidate_not_better_on_the_held_out_slice_is_rejected(held_out: float) -> None:
    verdict = decide(side(held_out, 1.0), side(1.5, 2.0), 0.25)
    assert not verdict.promoted
    assert verdict.reason == f"held-out loss {held_out:.4f} is not below the current 1.5000"


def test_a_better_candidate_that_forgets_the_anchor_set_is_rejected() -> None:
    verdict = decide(side(1.0, 2.6), side(1.5, 2.0), 0.25)
    assert not verdict.promoted
    assert verdict.reason == "anchor loss 2.6000 exceeds 2.5000 (current +25%)"


def test_the_held_out_rule_is_checked_first_when_both_fail() -> None:
    verdict = decide(side(2.0, 9.0), side(1.5, 2.0), 0.25)
    assert not verdict.promoted and verdict.reason.startswith("held-out loss 2.0000 is not below")


def test_the_anchor_limit_itself_is_within_tolerance() -> None:
    # 2.0 * (1 + 0.25) == 2.5 exactly in binary floating point: the boundary is inclusive.
    assert decide(side(1.0, 2.5), side(1.5, 2.0), 0.25).promoted
    assert not decide(side(1.0, math.nextafter(2.5, 3.0)), side(1.5, 2.0), 0.25).promoted


def test_zero_tolerance_allows_no_anchor_rise_at_all() -> None:
    assert decide(side(1.0, 2.0), side(1.5, 2.0), 0.0).promoted
    verdict = decide(side(1.0, 2.0001), side(1.5, 2.0), 0.0)
    assert not verdict.promoted and verdict.reason == "anchor loss 2.0001 exceeds 2.0000 (current +0%)"


def test_a_loss_that_could_not_be_measured_never_promotes() -> None:
    assert not decide(side(math.nan, 1.0), side(1.5, 2.0), 0.25).promoted
    assert not decide(side(1.0, math.nan), side(1.5, 2.0), 0.25).promoted
    assert not decide(side(1.0, 1.0), side(math.nan, 2.0), 0.25).promoted


def test_decide_defaults_to_no_comparison_name() -> None:
    assert decide(side(1.0, 1.0), side(1.5, 2.0), 0.05).compared_with == ""
