"""The Kafka helpers' own logic, with a stand-in admin client (the broker's behaviour is in test_kafka.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamtune import kafka
from streamtune.errors import KafkaUnavailableError
from streamtune.settings import KafkaSettings

TOPIC = "t.domain-events"


class Admin:
    """Answers ``list_offsets`` with end offset 7 per partition after failing with ``errors``, one per call."""

    def __init__(self, errors: list[KafkaError]) -> None:
        self.errors = errors
        self.calls = 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None})})

    def list_offsets(self, requests: dict[Any, Any], **_: Any) -> dict[Any, Any]:
        self.calls += 1
        if self.calls <= len(self.errors):
            raise KafkaException(self.errors[self.calls - 1])
        return {tp: SimpleNamespace(result=lambda: SimpleNamespace(offset=7)) for tp in requests}

    def poll(self, timeout: float) -> int:
        return 0


def _ends(monkeypatch: pytest.MonkeyPatch, admin: Admin, timeout_s: float = 5.0) -> dict[int, int]:
    monkeypatch.setattr(kafka, "admin_client", lambda _: admin)
    return kafka.committed_end_offsets(KafkaSettings(request_timeout_s=timeout_s), TOPIC)


def test_a_partition_without_its_leader_yet_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # as the broker answered right after the topic was created: without the retriable flag
    admin = Admin([KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION), KafkaError(KafkaError.LEADER_NOT_AVAILABLE)])
    assert _ends(monkeypatch, admin) == {0: 7, 1: 7}
    assert admin.calls == 3


def test_any_other_error_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = Admin([KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(KafkaUnavailableError, match=r"end offsets of t\.domain-events"):
        _ends(monkeypatch, admin)
    assert admin.calls == 1


def test_a_leader_that_never_comes_is_given_up_after_the_request_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = Admin([KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)] * 1000)
    with pytest.raises(KafkaUnavailableError, match="still failing"):
        _ends(monkeypatch, admin, timeout_s=1.0)
    assert 2 <= admin.calls < 12  # pauses of 50, 100, 200, 400 ms ... fit in 1 s: bounded, not a spin
