"""The Kafka helpers' own logic, without a broker."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamtune import kafka


def _failing(errors: list[KafkaError], result: str = "ends") -> tuple[list[int], object]:
    calls: list[int] = []

    def request() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise KafkaException(errors[len(calls) - 1])
        return result

    return calls, request


def test_a_partition_without_its_leader_yet_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka.time, "sleep", lambda _: None)
    # as the broker answered right after the topic was created: without the retriable flag
    errors = [KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION), KafkaError(KafkaError.LEADER_NOT_AVAILABLE)]
    calls, request = _failing(errors)
    assert kafka._while_retriable(request, 5.0) == "ends"  # type: ignore[arg-type]
    assert len(calls) == 3


def test_any_other_error_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka.time, "sleep", lambda _: None)
    calls, request = _failing([KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(KafkaException):
        kafka._while_retriable(request, 5.0)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_a_leader_that_never_comes_is_raised_after_the_timeout() -> None:
    calls, request = _failing([KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)] * 1000)
    with pytest.raises(KafkaException):
        kafka._while_retriable(request, 0.3)  # type: ignore[arg-type]
    assert 2 <= len(calls) < 10  # pauses of 50, 100, 200 ms fit in 0.3 s, bounded
