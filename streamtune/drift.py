"""Question drift: is a tenant asking what its adapter was trained on? A two-sample test per tenant.

``DriftTracker`` keeps, per tenant, a reference sample of question embeddings (the questions of the examples
the current adapter was trained on, from its manifest; without one, the tenant's first full window) and a
sliding window of the ``window`` latest questions it was asked. Every ``every`` questions it compares the
two with ``mmd_test``: the squared maximum mean discrepancy (MMD², unbiased estimate, Gretton et al. 2012) under a
Gaussian RBF kernel whose bandwidth is the median pairwise distance of the pooled sample, with a permutation
p-value. A reading says the statistic, its p-value, both sample sizes and where the reference came from, and
``drifted`` when the p-value is below ``significance``.

The promises:

- No question raises. A question without a vector (an empty question: ``None`` or an empty array), a
  vector with NaN or infinity, one whose dimension differs from the tenant's, or something that is not a
  vector, is skipped and counted, with the reason in the tenant's reading (``skipped``, ``last_skipped``):
  a drift monitor must never break answering. Only a ``DriftConfig`` that cannot work raises
  (``ConfigError``), at construction.
- No test, no alert: when a test cannot mean anything the reading has no statistic, ``drifted`` is False
  and ``reason`` says why: no reference yet, a window or reference below its minimum, or a degenerate
  sample (every question in the window, or in the reference, the same vector: MMD would only measure
  that one question's distance from the rest, and a median bandwidth of zero would divide by zero).
- The p-value is never 0: ``(1 + #permutations at least as large as observed) / (1 + permutations)``, so
  the smallest is ``1 / (1 + permutations)``, and under no drift P(p <= a) <= a for every a.
- Deterministic: each tenant draws its permutations from its own generator, seeded by ``seed`` and the
  tenant's name, so a tenant's readings do not depend on the other tenants' traffic.
- Cheap: the pooled kernel matrix is computed once per test and every permutation reuses it (one matrix
  product for all of them); ``bench/drift.py`` measures the cost against embedding one question.

Why written here, not taken from a library: alibi-detect pins numpy<2 and transformers<5 and is
BSL-licensed (DESIGN.md); hyppo's MMD (MIT, maintained) would bring numba with llvmlite, statsmodels, pandas,
autograd and future into the serving environment for one function, and compiles on first use; torchdrift's
last release is from 2021 and would put torch in the path. The test is some forty lines of numpy, checked
in ``tests/streamtune/test_drift.py`` against a hand-computed value and against the calibration that
defines a test (rejections at the nominal rate on equal distributions).

Not thread-safe: one tracker belongs to one serving loop.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from streamtune.settings import DriftConfig

__all__ = ["DriftConfig", "DriftReading", "DriftTracker", "mmd_test"]

_IDENTICAL_TOLERANCE = 1e-6  # per coordinate, relative to the largest magnitude: float noise of one text's encodings


@dataclass(frozen=True)
class DriftReading:
    """A tenant's latest drift test, or why none could run (``reason``), and its question counts."""

    tenant: str
    statistic: float | None  # the unbiased MMD² (may be slightly negative); None when no test ran
    p_value: float | None
    drifted: bool  # p_value < significance; never True without a test
    window: int  # questions in the window (tested, or held when no test ran)
    reference: int  # questions in the reference (0: none yet)
    reference_source: str | None  # "manifest", "first window", ... as set; None without a reference
    reason: str | None  # why no test ran; None when one did
    observed: int  # questions taken into the window since the tracker first saw the tenant
    skipped: int  # questions skipped (empty, not finite, wrong dimension)
    last_skipped: str | None  # why the latest skipped question was skipped


def mmd_test(
    reference: np.ndarray,
    window: np.ndarray,
    *,
    permutations: int,
    rng: np.random.Generator,
    bandwidth: float | None = None,
) -> tuple[float, float]:
    """(unbiased MMD², permutation p-value) of two samples, rows are points.

    The kernel is ``exp(-|x - y|² / (2 bandwidth²))``; without ``bandwidth``, the median of the pooled
    sample's non-zero pairwise distances (it does not change under a permutation of the labels, so the
    permutation test stays exact). Both samples need two rows or more. A pooled sample of one repeated point
    has MMD² 0 and p-value 1."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(window, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"mmd_test needs two rows or more in each sample, got {m} and {n}")
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"mmd_test needs a positive bandwidth, got {bandwidth}")
    pooled = np.concatenate([x, y])
    squares = np.einsum("ij,ij->i", pooled, pooled)
    distances = np.maximum(squares[:, None] + squares[None, :] - 2 * pooled @ pooled.T, 0.0)
    np.fill_diagonal(distances, 0.0)
    if bandwidth is None:
        # Each pair appears twice in the symmetric matrix, which leaves the median as it is; the diagonal and
        # repeated questions are zeros and left out. The median of squared distances is the square of theirs.
        nonzero = distances[distances > 0]
        bandwidth = float(np.sqrt(np.median(nonzero))) if len(nonzero) else 1.0
    kernel = np.exp(distances / (-2 * bandwidth**2))
    # Column 0 labels the samples as given; the others are permutations of those labels. MMD² of a labelling
    # z (1: first sample) from three quadratic forms, with K's diagonal of ones left out of the within terms:
    # s_xx = z'Kz, s_xy = z'K(1-z) = z'K1 - s_xx, s_yy = 1'K1 - 2 z'K1 + s_xx.
    labels = np.tile(np.repeat([1.0, 0.0], [m, n]), (permutations + 1, 1))
    labels[1:] = rng.permuted(labels[1:], axis=1)
    row_sums = kernel.sum(axis=1)
    s_xx = np.einsum("pi,pi->p", labels, labels @ kernel)
    s_x1 = labels @ row_sums
    s_xy = s_x1 - s_xx
    s_yy = row_sums.sum() - 2 * s_x1 + s_xx
    statistics = (s_xx - m) / (m * (m - 1)) + (s_yy - n) / (n * (n - 1)) - 2 * s_xy / (m * n)
    observed = float(statistics[0])
    # Round-off must not turn a tie into a win for the observed value: a near tie counts as at least as large.
    slack = 1e-12 * max(1.0, abs(observed))
    exceeding = int(np.count_nonzero(statistics[1:] >= observed - slack))
    return observed, (1 + exceeding) / (1 + permutations)


@dataclass
class _Tenant:
    rng: np.random.Generator
    window: deque[np.ndarray]
    reading: DriftReading
    reference: np.ndarray | None = None
    reference_source: str | None = None
    dimension: int | None = None
    since_test: int = 0


class DriftTracker:
    """Per-tenant reference, sliding window and latest ``DriftReading``."""

    def __init__(
        self,
        config: DriftConfig | None = None,
        *,
        computing: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        """``computing``: the context each test runs in (serve limits numpy's BLAS to one thread there)."""
        self.config = config or DriftConfig()
        self._computing = computing
        self._tenants: dict[str, _Tenant] = {}

    def set_reference(self, tenant: str, vectors: Sequence[Any] | np.ndarray | None, source: str) -> None:
        """Compare ``tenant``'s questions with ``vectors`` (one row per question) from now on; ``source``
        says where they came from (e.g. "manifest"). Rows with NaN or infinity are dropped; more than
        ``max_reference`` rows are subsampled. No rows clears the reference: the next full window becomes it.
        A reference of another dimension than the window's empties the window (the embedder changed)."""
        state = self._state(tenant)
        rows = _rows(vectors)
        rows = rows[np.isfinite(rows).all(axis=1)] if len(rows) else rows
        if not len(rows):
            state.reference, state.reference_source = None, None
        else:
            if len(rows) > self.config.max_reference:
                keep = np.sort(state.rng.choice(len(rows), self.config.max_reference, replace=False))
                rows = rows[keep]
            if state.dimension is not None and rows.shape[1] != state.dimension:
                state.window.clear()
            state.reference, state.reference_source, state.dimension = rows, source, rows.shape[1]
        # The latest test was against the old reference (the old adapter's questions): it no longer stands.
        reason = "no reference yet" if state.reference is None else f"new reference ({source}); no test since"
        state.since_test = 0
        state.reading = replace(
            state.reading,
            statistic=None,
            p_value=None,
            drifted=False,
            reference=len(rows),
            reference_source=state.reference_source,
            reason=reason,
        )

    def observe(self, tenant: str, vector: Any) -> DriftReading | None:
        """Take one question's embedding into ``tenant``'s window; the new reading when a test was due (or
        a first window became the reference), else None. ``None`` or an empty vector is an empty question."""
        state = self._state(tenant)
        row, skip = self._checked(state, vector)
        if skip is not None:
            state.reading = replace(state.reading, skipped=state.reading.skipped + 1, last_skipped=skip)
            return None
        assert row is not None
        state.dimension = len(row)
        state.window.append(row)
        state.since_test += 1
        observed = state.reading.observed + 1
        if state.reference is None and len(state.window) == self.config.window:
            state.reference, state.reference_source = np.stack(state.window), "first window"
            # A window that overlaps its own reference would be biased towards "no drift": start afresh.
            state.window.clear()
            state.since_test = 0
            return self._read(
                state, tenant, observed, reason="reference taken from the first window; testing starts with the next"
            )
        if state.since_test < self.config.every:
            state.reading = replace(state.reading, observed=observed)
            return None
        state.since_test = 0
        return self._read(state, tenant, observed, reason=self._no_test_reason(state))

    def reference(self, tenant: str) -> np.ndarray | None:
        """``tenant``'s reference rows (None: none yet)."""
        state = self._tenants.get(tenant)
        return None if state is None else state.reference

    def reading(self, tenant: str) -> DriftReading:
        """``tenant``'s latest reading (one saying "no reference yet" for a tenant never seen)."""
        state = self._tenants.get(tenant)
        return state.reading if state is not None else _empty_reading(tenant)

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def _state(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            # crc32, not hash(): str hashes are salted per process, and readings must repeat across runs.
            rng = np.random.default_rng([self.config.seed, zlib.crc32(tenant.encode())])
            state = _Tenant(rng=rng, window=deque(maxlen=self.config.window), reading=_empty_reading(tenant))
            self._tenants[tenant] = state
        return state

    @staticmethod
    def _checked(state: _Tenant, vector: Any) -> tuple[np.ndarray | None, str | None]:
        """(the vector as a 1-d float array, None), or (None, why it is skipped)."""
        if vector is None:
            return None, "empty question"
        try:
            row = np.asarray(vector, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            return None, f"not a vector: {type(vector).__name__}"
        if not len(row):
            return None, "empty question"
        if not np.isfinite(row).all():
            return None, "vector not finite"
        if state.dimension is not None and len(row) != state.dimension:
            return None, f"vector of dimension {len(row)}, the tenant's are {state.dimension}"
        return row, None

    def _no_test_reason(self, state: _Tenant) -> str | None:
        conf = self.config
        if state.reference is None:
            return f"no reference yet (first window {len(state.window)} of {conf.window} questions)"
        if len(state.reference) < conf.min_reference:
            return f"reference smaller than minimum ({len(state.reference)} < {conf.min_reference})"
        if _identical(state.reference):
            return "degenerate: all reference questions identical"
        if len(state.window) < conf.min_window:
            return f"window smaller than minimum ({len(state.window)} < {conf.min_window})"
        if _identical(np.stack(state.window)):
            return "degenerate: all questions in the window identical"
        return None

    def _read(self, state: _Tenant, tenant: str, observed: int, *, reason: str | None) -> DriftReading:
        statistic: float | None = None
        p_value: float | None = None
        if reason is None:
            assert state.reference is not None
            with self._computing():
                statistic, p_value = mmd_test(
                    state.reference, np.stack(state.window), permutations=self.config.permutations, rng=state.rng
                )
        state.reading = DriftReading(
            tenant=tenant,
            statistic=statistic,
            p_value=p_value,
            drifted=p_value is not None and p_value < self.config.significance,
            window=len(state.window),
            reference=0 if state.reference is None else len(state.reference),
            reference_source=state.reference_source,
            reason=reason,
            observed=observed,
            skipped=state.reading.skipped,
            last_skipped=state.reading.last_skipped,
        )
        return state.reading


def _empty_reading(tenant: str) -> DriftReading:
    return DriftReading(
        tenant=tenant,
        statistic=None,
        p_value=None,
        drifted=False,
        window=0,
        reference=0,
        reference_source=None,
        reason="no reference yet",
        observed=0,
        skipped=0,
        last_skipped=None,
    )


def _rows(vectors: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    if vectors is None:
        return np.empty((0, 0), dtype=np.float32)
    # float32, as embedders return them: half the memory per tenant; mmd_test computes in float64.
    rows = np.asarray(vectors, dtype=np.float32)
    if rows.size == 0:
        return np.empty((0, 0), dtype=np.float32)
    return rows.reshape(1, -1) if rows.ndim == 1 else rows.reshape(len(rows), -1)


def _identical(rows: np.ndarray) -> bool:
    """Every row the same vector, up to float noise."""
    scale = max(1.0, float(np.abs(rows).max()))
    return bool(np.ptp(rows, axis=0).max() <= _IDENTICAL_TOLERANCE * scale)
