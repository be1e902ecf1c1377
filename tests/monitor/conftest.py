"""Records of the monitor's topics, built with the contract models."""

from __future__ import annotations

from typing import Literal

import pytest

from streamtune import harness
from streamtune.contracts import (
    AdapterUpdate,
    Answer,
    AnswerError,
    ChatMessage,
    FeedbackRecorded,
    Query,
    TrainingExample,
)
from streamtune.harness import feedback_recorded


def adapter_update(
    tenant: str,
    version: str,
    *,
    promoted: bool = True,
    reason: str = "held-out loss improved",
    state: Literal["current", "canary", "rolled_back"] | None = None,
    percent: int | None = None,
) -> AdapterUpdate:
    """``streamtune.harness.adapter_update`` of a version whose gate said ``promoted`` for ``reason``."""
    gate = {"promoted": promoted, "reason": reason}
    return harness.adapter_update(tenant, version, state=state, canary_percent=percent, gate=gate)


def query(tenant: str, query_id: str, question: str = "What is the refund window?") -> Query:
    return Query(query_id=query_id, tenant=tenant, question=question)


def answer(
    tenant: str,
    query_id: str,
    *,
    version: str | None = None,
    error: str | None = None,
    arm: Literal["canary", "incumbent"] | None = None,
    grounded: bool | None = None,
) -> Answer:
    return Answer(
        query_id=query_id,
        tenant=tenant,
        answer="" if error else "30 days",
        adapter_version=version,
        error=AnswerError(code=error, message="made up") if error else None,
        timings_ms={"total": 12.0},
        arm=arm,
        grounded=grounded,
    )


def feedback(tenant: str, query_id: str, rating: int = 1, correction: str | None = None) -> FeedbackRecorded:
    """A rating as the gateway's POST /v1/feedback publishes it, with its event id ``feedback-<query_id>``: a
    second rating of the same query has the same key, so the same partition of ``domain-events``, and which of
    the two counts first is the same at every re-read (across partitions there is no order to rely on)."""
    return feedback_recorded(
        f"feedback-{query_id}",
        "What is the refund window?",
        "30 days",
        rating=rating,
        correction=correction,
        tenant=tenant,
        query_id=query_id,
    )


def example(tenant: str, n: int) -> TrainingExample:
    """A demonstration on ``training-examples``, as the ingest job makes one from a ``qa.recorded`` event."""
    messages = [ChatMessage(role="user", content=f"Question {n}?"), ChatMessage(role="assistant", content=f"{n}.")]
    return TrainingExample(example_id=f"ex-{n}", tenant=tenant, messages=messages, source_event_id=f"evt-{n}")


class Records:
    """The builders above, as one fixture (test modules do not import each other under importlib mode)."""

    adapter_update = staticmethod(adapter_update)
    query = staticmethod(query)
    answer = staticmethod(answer)
    feedback = staticmethod(feedback)
    example = staticmethod(example)


@pytest.fixture
def records() -> Records:
    return Records()
