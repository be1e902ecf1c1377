"""The drift test against known answers, and the tracker's promises on bad input (streamtune/drift.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest
from scipy.stats import binom

from streamtune.drift import DriftConfig, DriftTracker, mmd_test
from streamtune.errors import ConfigError

SMALL = DriftConfig(window=40, every=10, min_window=20, min_reference=20, permutations=200, significance=0.01)


def _gaussian(rng: np.random.Generator, rows: int, shift: float = 0.0, dims: int = 8) -> np.ndarray:
    return rng.normal(size=(rows, dims)) + shift


def test_mmd_matches_the_hand_computed_value() -> None:
    # X = {0, 1}, Y = {3, 4}, bandwidth 1: k(a, b) = exp(-(a - b)^2 / 2).
    # Within X and within Y the only pair (i != j) is at distance 1; across, distances 3, 4, 2, 3.
    within = math.exp(-1 / 2)
    across = 2 * math.exp(-9 / 2) + math.exp(-16 / 2) + math.exp(-4 / 2)
    expected = (2 * within) / (2 * 1) + (2 * within) / (2 * 1) - 2 * across / (2 * 2)
    statistic, _ = mmd_test(
        np.array([[0.0], [1.0]]), np.array([[3.0], [4.0]]), permutations=10, rng=np.random.default_rng(0), bandwidth=1
    )
    assert statistic == pytest.approx(expected, rel=1e-12)


def test_median_bandwidth_is_the_median_pairwise_distance() -> None:
    # Pooled {0, 1, 3}: distances 1, 2, 3, median 2. Same statistic as with bandwidth 2 given explicitly.
    x, y = np.array([[0.0], [1.0]]), np.array([[3.0], [3.0]])
    rng = np.random.default_rng(0)
    implicit, _ = mmd_test(x, y, permutations=5, rng=rng)
    explicit, _ = mmd_test(x, y, permutations=5, rng=rng, bandwidth=2.0)
    assert implicit == pytest.approx(explicit, rel=1e-12)


def test_equal_distributions_reject_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(25)
    trials = 200
    p_values = np.array(
        [mmd_test(_gaussian(rng, 30), _gaussian(rng, 30), permutations=200, rng=rng)[1] for _ in range(trials)]
    )
    for alpha in (0.05, 0.2, 0.5):
        rejections = int(np.count_nonzero(p_values <= alpha))
        # Under the null the rejections are Binomial(trials, <= alpha); two-sided 99.9 % bounds.
        low, high = binom.ppf(0.0005, trials, alpha), binom.ppf(0.9995, trials, alpha)
        assert low <= rejections <= high, (alpha, rejections, low, high)


def test_shifted_distributions_are_detected() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        _, p_value = mmd_test(_gaussian(rng, 40), _gaussian(rng, 40, shift=1.0), permutations=200, rng=rng)
        assert p_value < 0.01


def test_p_value_is_never_zero() -> None:
    rng = np.random.default_rng(0)
    _, p_value = mmd_test(_gaussian(rng, 30), _gaussian(rng, 30, shift=100.0), permutations=99, rng=rng)
    assert p_value == pytest.approx(1 / 100)


def test_one_repeated_point_has_no_discrepancy() -> None:
    same = np.ones((5, 3))
    statistic, p_value = mmd_test(same, same, permutations=50, rng=np.random.default_rng(0))
    assert (statistic, p_value) == (0.0, 1.0)


def test_same_seed_same_readings() -> None:
    def run() -> list[tuple[float | None, float | None]]:
        rng = np.random.default_rng(9)
        tracker = DriftTracker(SMALL)
        tracker.set_reference("t", _gaussian(rng, 50), "manifest")
        readings = [tracker.observe("t", v) for v in _gaussian(rng, 60, shift=0.3)]
        return [(r.statistic, r.p_value) for r in readings if r is not None]

    first = run()
    assert first and first == run()


def test_tenants_do_not_share_permutations() -> None:
    rng = np.random.default_rng(4)
    reference, questions = _gaussian(rng, 30), _gaussian(rng, 30)
    alone, together = DriftTracker(SMALL), DriftTracker(SMALL)
    for tracker in (alone, together):
        tracker.set_reference("a", reference, "manifest")
    together.set_reference("b", reference, "manifest")
    for v in questions:
        alone.observe("a", v)
        together.observe("b", v)
        together.observe("a", v)
    assert alone.reading("a") == together.reading("a")


def test_first_window_becomes_the_reference_then_tests_run() -> None:
    rng = np.random.default_rng(1)
    tracker = DriftTracker(SMALL)
    assert tracker.reading("t").reason == "no reference yet"
    readings = [tracker.observe("t", v) for v in _gaussian(rng, SMALL.window)]
    assert [r.reason for r in readings if r is not None] == [
        f"no reference yet (first window {n} of {SMALL.window} questions)" for n in (10, 20, 30)
    ] + ["reference taken from the first window; testing starts with the next"]
    assert tracker.reading("t").reference_source == "first window"
    assert tracker.reading("t").reference == SMALL.window
    readings = [tracker.observe("t", v) for v in _gaussian(rng, 20)]
    assert [r.reason for r in readings if r is not None] == ["window smaller than minimum (10 < 20)", None]
    latest = tracker.reading("t")
    assert latest.p_value is not None and latest.window == 20 and latest.observed == SMALL.window + 20


def test_a_subject_change_fires_and_the_same_subject_does_not() -> None:
    rng = np.random.default_rng(2)
    tracker = DriftTracker(SMALL)
    tracker.set_reference("t", _gaussian(rng, 60), "manifest")
    same = [tracker.observe("t", v) for v in _gaussian(rng, 40)]
    assert [(r.reason is None, r.drifted) for r in same if r is not None] == [(False, False)] + [(True, False)] * 3
    changed = [tracker.observe("t", v) for v in _gaussian(rng, 40, shift=2.0)]
    assert [r.drifted for r in changed if r is not None][-1]
    latest = tracker.reading("t")
    assert latest.drifted and latest.p_value is not None and latest.p_value < SMALL.significance
    assert (latest.window, latest.reference, latest.reference_source, latest.reason) == (40, 60, "manifest", None)


def test_identical_questions_are_degenerate_not_drift() -> None:
    rng = np.random.default_rng(5)
    tracker = DriftTracker(SMALL)
    tracker.set_reference("t", _gaussian(rng, 30), "manifest")
    question = rng.normal(size=8)
    readings = [tracker.observe("t", question + 1e-9 * (i % 2)) for i in range(SMALL.window)]
    reasons = {r.reason for r in readings if r is not None and r.window >= SMALL.min_window}
    assert reasons == {"degenerate: all questions in the window identical"}
    assert not tracker.reading("t").drifted and tracker.reading("t").p_value is None

    tracker.set_reference("t", np.tile(question, (30, 1)), "manifest")
    assert tracker.reading("t").reason == "new reference (manifest); no test since"
    reading = None
    for v in _gaussian(rng, SMALL.every):
        reading = tracker.observe("t", v) or reading
    assert reading is not None and reading.reason == "degenerate: all reference questions identical"
    assert not reading.drifted


def test_small_reference_is_reported_not_tested() -> None:
    rng = np.random.default_rng(6)
    tracker = DriftTracker(SMALL)
    tracker.set_reference("t", _gaussian(rng, 5), "manifest")
    readings = [tracker.observe("t", v) for v in _gaussian(rng, 30)]
    assert {r.reason for r in readings if r is not None} == {"reference smaller than minimum (5 < 20)"}
    assert not any(r.drifted for r in readings if r is not None)


def test_bad_questions_are_skipped_with_their_reason() -> None:
    rng = np.random.default_rng(7)
    tracker = DriftTracker(SMALL)
    tracker.set_reference("t", _gaussian(rng, 30), "manifest")
    assert tracker.observe("t", None) is None
    assert tracker.reading("t").last_skipped == "empty question"
    assert tracker.observe("t", np.array([])) is None
    assert tracker.observe("t", []) is None
    nan = np.full(8, np.nan)
    assert tracker.observe("t", nan) is None
    assert tracker.reading("t").last_skipped == "vector not finite"
    assert tracker.observe("t", np.ones(5)) is None
    assert tracker.reading("t").last_skipped == "vector of dimension 5, the tenant's are 8"
    assert tracker.observe("t", "How long is the warranty?") is None
    reading = tracker.reading("t")
    assert reading.last_skipped == "not a vector: str"
    assert (reading.skipped, reading.observed, reading.drifted) == (6, 0, False)


def test_reference_is_subsampled_and_cleared() -> None:
    rng = np.random.default_rng(8)
    tracker = DriftTracker(replace(SMALL, max_reference=50))
    rows = _gaussian(rng, 80)
    rows[3] = np.nan
    tracker.set_reference("t", rows, "manifest")
    assert tracker.reading("t").reference == 50
    tracker.set_reference("t", [], "manifest")
    assert (tracker.reading("t").reference, tracker.reading("t").reason) == (0, "no reference yet")


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"every": 0}, "drift.every"),
        ({"min_window": 1}, "drift.min_window"),
        ({"window": 10}, "drift.window"),
        ({"max_reference": 10}, "drift.max_reference"),
        ({"significance": 1.0}, "drift.significance"),
        ({"permutations": 99}, "drift.permutations"),
    ],
)
def test_config_that_cannot_work_names_the_setting(change: dict[str, float], setting: str) -> None:
    with pytest.raises(ConfigError) as error:
        DriftConfig(**{**asdict(SMALL), **change})
    assert error.value.setting == setting


def test_module_imports_without_torch() -> None:
    code = "import sys, streamtune.drift; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
