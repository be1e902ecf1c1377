"""What `serve` says about question drift on its /metrics, read back by whoever needs it there: the monitor's
status page, and `train watch` when ``drift.trigger_refresh`` lets drift ask for a refresh.

Parsed with prometheus-client's own exposition parser; reading never raises (an unreachable serve is shown, not
alerted on: Prometheus's ``up`` covers serve).
"""

from __future__ import annotations

import math
import time
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["DriftFigures", "DriftSource", "parse_drift", "read_drift"]

_DRIFT = "streamtune_question_drift_"


@dataclass(frozen=True)
class DriftFigures:
    p_value: float
    statistic: float | None = None
    window: float | None = None


@dataclass(frozen=True)
class DriftSource:
    """What one serve /metrics endpoint said at ``read_at``: per tenant its drift test, or why it said nothing."""

    url: str
    read_at: float
    figures: dict[str, DriftFigures] = field(default_factory=dict)
    error: str | None = None
    """Set when the endpoint could not be read or parsed (then ``figures`` is empty)."""


def parse_drift(text: str) -> dict[str, DriftFigures]:
    """Per tenant, the drift figures in a Prometheus text exposition (tenants without a p-value, or a NaN one,
    i.e. no test yet, are left out). Raises ValueError on text that is not an exposition."""
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(_DRIFT):
            continue
        what = family.name.removeprefix(_DRIFT)
        for sample in family.samples:
            tenant = sample.labels.get("tenant")
            if tenant is not None and sample.name == family.name and not math.isnan(sample.value):
                values.setdefault(tenant, {})[what] = float(sample.value)
    return {
        tenant: DriftFigures(found["p_value"], found.get("statistic"), found.get("window"))
        for tenant, found in values.items()
        if "p_value" in found
    }


def read_drift(url: str, timeout_s: float) -> DriftSource:
    """One read of a serve /metrics endpoint: its drift figures, or why there are none. Never raises: an
    unreachable serve is shown as such on the page, not alerted on (Prometheus's ``up`` covers serve)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # http(s) only: the setting is checked
            text = response.read().decode("utf-8")
        return DriftSource(url, time.time(), parse_drift(text))
    except (OSError, ValueError, HTTPException) as exc:  # URLError, HTTPError, timeouts: OSErrors; bad text: ValueError
        return DriftSource(url, time.time(), error=f"{type(exc).__name__}: {exc}")
