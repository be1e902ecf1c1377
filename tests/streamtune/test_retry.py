from __future__ import annotations

import logging

import pytest

from streamtune.errors import UnavailableError
from streamtune.retry import Backoff, retrying


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def flaky(failures: int, exc: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def operation() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "ok"

    return calls, operation


def test_transient_failures_back_off_exponentially_then_succeed(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    calls, operation = flaky(5, ConnectionError("refused"))
    backoff = Backoff(initial_s=0.5, max_s=3.0, give_up_s=60, report_every_s=100)
    with caplog.at_level(logging.WARNING):
        result = retrying(
            operation,  # type: ignore[arg-type]
            transient=lambda e: isinstance(e, ConnectionError),
            backoff=backoff,
            what="Weaviate",
            fix="start it",
            log=logging.getLogger("t"),
            sleep=clock.sleep,
            clock=lambda: clock.now,
        )
    assert result == "ok" and len(calls) == 6
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # one report per interval (here: the first), and one on recovery
    assert "Weaviate unavailable" in messages[0] and "is back after 9.5s and 5 retries" in messages[1]


def test_a_permanent_failure_is_raised_at_once() -> None:
    clock = Clock()
    calls, operation = flaky(1, ValueError("rejected"))
    with pytest.raises(ValueError):
        retrying(
            operation,  # type: ignore[arg-type]
            transient=lambda e: isinstance(e, ConnectionError),
            backoff=Backoff(),
            what="w",
            fix="f",
            log=logging.getLogger("t"),
            sleep=clock.sleep,
            clock=lambda: clock.now,
        )
    assert len(calls) == 1 and clock.sleeps == []


def test_it_gives_up_after_the_give_up_time_naming_what_and_the_fix() -> None:
    clock = Clock()
    _, operation = flaky(10_000, ConnectionError("refused"))
    with pytest.raises(UnavailableError, match=r"Weaviate: still failing after 2\ds .*Start Weaviate"):
        retrying(
            operation,  # type: ignore[arg-type]
            transient=lambda e: True,
            backoff=Backoff(initial_s=1, max_s=4, give_up_s=20),
            what="Weaviate",
            fix="Start Weaviate.",
            log=logging.getLogger("t"),
            sleep=clock.sleep,
            clock=lambda: clock.now,
        )
    assert 20 <= clock.now <= 24
