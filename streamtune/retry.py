"""Waiting out an outage: the one retry policy (bounded exponential backoff, a give-up time, one log line per
interval), used wherever a dependency (Weaviate, Kafka) can be down for a while.

An operation is retried only while its failure is *transient* (the caller's classifier says so: connection
refused, time-outs, 5xx, read-only storage); any other failure is raised at once so that the caller can
dead-letter the one record that caused it. After ``give_up_s`` without success it raises ``RetryExhausted``
naming the dependency and the fix; ``give_up_s=None`` waits forever (a service that must outlive outages).
``on_wait`` hears ``True`` at the first transient failure and ``False`` once the operation succeeds after
failures: a service's health endpoint or gauge says it is waiting, and on what.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from streamtune.errors import RetryExhausted

__all__ = ["Backoff", "retrying"]

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 10.0
    give_up_s: float | None = 600.0
    report_every_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based): doubling from ``initial_s``, capped at ``max_s``."""
        return float(min(self.initial_s * 2 ** (attempt - 1), self.max_s))


def retrying(
    operation: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    backoff: Backoff,
    what: str,
    fix: str,
    log: logging.Logger,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_wait: Callable[[bool], None] | None = None,
) -> T:
    """``operation()``, retried while it fails transiently; see the module docstring."""
    first_failure: float | None = None
    reported = float("-inf")
    attempt = 0
    while True:
        try:
            result = operation()
        except Exception as exc:
            if not transient(exc):
                raise
            now = clock()
            if first_failure is None:
                first_failure = now
                if on_wait is not None:
                    on_wait(True)
            waited = now - first_failure
            if backoff.give_up_s is not None and waited >= backoff.give_up_s:
                raise RetryExhausted(
                    f"{what}: still failing after {waited:.0f}s ({type(exc).__name__}: {_short(exc)}). {fix}"
                ) from exc
            attempt += 1
            delay = backoff.delay(attempt)
            if now - reported >= backoff.report_every_s:
                log.warning(
                    "%s unavailable for %.0fs (%s: %s); retrying every %.1fs at most%s",
                    what,
                    waited,
                    type(exc).__name__,
                    _short(exc),
                    backoff.max_s,
                    f", giving up after {backoff.give_up_s:.0f}s" if backoff.give_up_s is not None else "",
                )
                reported = now
            sleep(delay)
            continue
        if first_failure is not None:
            log.warning("%s is back after %.1fs and %d retries", what, clock() - first_failure, attempt)
            if on_wait is not None:
                on_wait(False)
        return result


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
