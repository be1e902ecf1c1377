"""`streamtune train --watch`: refresh a tenant's adapter once ``training.watch_min_examples`` new examples
have accumulated, or ``training.watch_minutes`` have passed with at least one.

Built on confluent-kafka rather than faust-streaming: the trigger only counts committed records per
tenant beyond each adapter's recorded range, which the registry already knows exactly, so the counts
are derived from the manifests and the topic's end offsets on each tick instead of being kept in a
changelog-backed table that could drift from them; and it keeps one Kafka client library in the project.

A long-running service: it logs through this module's logger (the refreshes' progress included), which
the CLI configures.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from streamtune.errors import ContractError
from streamtune.kafka import committed_end_offsets, read_range
from streamtune.settings import Settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name
from training.data import MissingDocs
from training.refresh import refresh
from training.registry import AdapterRegistry

__all__ = ["pending_counts", "watch"]

log = logging.getLogger(__name__)


def pending_counts(
    settings: Settings, since: dict[int, int], floor: Callable[[str], dict[int, int]]
) -> tuple[Counter[str], dict[int, int]]:
    """Examples per tenant after ``since`` up to the committed end that lie beyond the tenant's current
    adapter (``floor``: per partition, the end of the range it was trained on); and that end."""
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    counts: Counter[str] = Counter()
    for message in read_range(settings.kafka, topic, {p: (since.get(p, 0), end) for p, end in ends.items()}):
        try:
            tenant = TRAINING_EXAMPLES.decode(message.value()).tenant
        except ContractError:
            continue
        if (message.offset() or 0) >= floor(tenant).get(message.partition() or 0, 0):
            counts[tenant] += 1
    return counts, ends


def _trained_up_to(settings: Settings, tenant: str) -> dict[int, int]:
    current = AdapterRegistry(settings.adapters_dir, tenant).current()
    if current is None:
        return {}
    return current.manifest.data.trained_up_to()


def watch(
    settings: Settings,
    *,
    missing_docs: MissingDocs | None = None,
    poll_s: float | None = None,
    max_refreshes: int | None = None,
) -> int:
    """Run until SIGTERM / Ctrl-C (or after ``max_refreshes`` refreshes, for tests).

    ``missing_docs`` is handed to every refresh (``training.refresh.refresh``)."""
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    seen: dict[int, int] = {}
    waiting_since: dict[str, float] = {}
    pending: Counter[str] = Counter()
    refreshes = 0
    log.info(
        "watch: refresh at %d new examples, or after %g min with at least one",
        settings.training.watch_min_examples,
        settings.training.watch_minutes,
    )
    try:
        while not stopping and (max_refreshes is None or refreshes < max_refreshes):
            # each tenant's registry is read once per tick, not once per record
            floor = functools.cache(lambda tenant: _trained_up_to(settings, tenant))
            counts, seen = pending_counts(settings, seen, floor)
            pending.update(counts)
            now = time.monotonic()
            for tenant in list(pending):
                waiting_since.setdefault(tenant, now)
                due = now - waiting_since[tenant] >= settings.training.watch_minutes * 60
                if pending[tenant] >= settings.training.watch_min_examples or due:
                    log.info("watch: %s: %d new examples; refreshing", tenant, pending[tenant])
                    outcome = refresh(settings, tenant, missing_docs=missing_docs, say=log.info)
                    log.info("watch: %s: %s %s (%s)", tenant, outcome.status, outcome.version or "", outcome.reason)
                    del pending[tenant], waiting_since[tenant]
                    refreshes += 1
            if max_refreshes is None or refreshes < max_refreshes:
                time.sleep(settings.training.watch_poll_s if poll_s is None else poll_s)
    except KeyboardInterrupt:
        pass
    return 0
