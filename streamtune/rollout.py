"""Which version answers a tenant's query while a candidate proves itself as a canary.

A tenant's *rollout* is its current version and, while one runs, its canary with the share of queries the
canary answers. It is a function of the tenant's announcements on ``adapter-updates`` (one partition, keyed by
tenant: a total order), folded by ``fold``; ``serve`` (``inference/adapters.py``), the registry's repair
(``training/publish.py``) and the monitor fold the same announcements the same way, so they cannot disagree
about which version is the canary.

``canary_arm`` splits queries by a stable hash of ``query_id`` (sha256, not Python's salted ``hash``): the same
query lands on the same arm in every ``serve`` process and after every restart, and the split does not
depend on the tenant's traffic so far. A query that pins its version takes neither arm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streamtune.contracts import AdapterUpdate

__all__ = ["Rollout", "canary_arm", "fold"]

_BUCKETS = 10_000


@dataclass(frozen=True)
class Rollout:
    current: str | None = None
    """The version that answers the tenant's queries (None: the base model)."""
    canary: str | None = None
    """The version on trial beside it, if any."""
    canary_percent: int = 0


def fold(rollout: Rollout, update: AdapterUpdate) -> Rollout:
    """The rollout after ``update`` (an announcement of the same tenant)."""
    state = update.state or "current"  # announcements from before canaries make their version current
    if state == "canary":
        return Rollout(rollout.current, update.version, update.canary_percent or 0)
    if state == "current":
        # Promoting the canary ends it; another version made current (a promote or rollback by hand) leaves a
        # running canary on trial against the new incumbent.
        if rollout.canary == update.version:
            return Rollout(update.version)
        return Rollout(update.version, rollout.canary, rollout.canary_percent)
    if rollout.canary == update.version:  # a rolled-back canary: the incumbent takes all traffic again
        return Rollout(rollout.current)
    # A rolled-back current version: the announcement of the version current again follows it.
    return rollout


def canary_arm(query_id: str, percent: int) -> bool:
    """Whether ``query_id`` is answered by the canary, for a canary that answers ``percent`` % of queries."""
    digest = hashlib.sha256(query_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _BUCKETS < percent * (_BUCKETS // 100)
