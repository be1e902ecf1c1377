"""Records of the monitor's topics, built with the contract models."""

from __future__ import annotations

import pytest

from streamtune.contracts import AdapterUpdate, Answer, AnswerError, Query
from streamtune.harness import sample_manifest


def adapter_update(
    tenant: str, version: str, *, promoted: bool = True, reason: str = "held-out loss improved"
) -> AdapterUpdate:
    """An announcement as ``training.publish.announce`` makes it, with made-up figures."""
    manifest = sample_manifest(tenant, version, gate={"promoted": promoted, "reason": reason})
    return AdapterUpdate(
        tenant=tenant, version=version, uri=f"file:///adapters/{tenant}/{version}", base_model="tiny", manifest=manifest
    )


def query(tenant: str, query_id: str) -> Query:
    return Query(query_id=query_id, tenant=tenant, question="What is the refund window?")


def answer(tenant: str, query_id: str, *, version: str | None = None, error: str | None = None) -> Answer:
    return Answer(
        query_id=query_id,
        tenant=tenant,
        answer="" if error else "30 days",
        adapter_version=version,
        error=AnswerError(code=error, message="made up") if error else None,
        timings_ms={"total": 12.0},
    )


class Records:
    """The builders above, as one fixture (test modules do not import each other under importlib mode)."""

    adapter_update = staticmethod(adapter_update)
    query = staticmethod(query)
    answer = staticmethod(answer)


@pytest.fixture
def records() -> Records:
    return Records()
