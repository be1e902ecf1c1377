"""Records of the monitor's topics, built with the contract models."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamtune.contracts import AdapterUpdate, Answer, AnswerError, Query
from streamtune.manifest import (
    AdapterDigest,
    BaseModelIdentity,
    CodeVersion,
    DataWindow,
    EvalScores,
    Manifest,
    Metrics,
    SideScores,
    Split,
    TrainFigures,
    Verdict,
)
from streamtune.settings import TrainingSettings


def adapter_update(
    tenant: str, version: str, *, promoted: bool = True, reason: str = "held-out loss improved"
) -> AdapterUpdate:
    """An announcement as ``training.publish.announce`` makes it, with made-up figures."""
    candidate = SideScores(
        held_out=EvalScores(loss=0.8, exact_match=0.5, token_f1=0.7, examples=8),
        anchor=EvalScores(loss=2.0, exact_match=0.0, token_f1=0.2, examples=8),
    )
    current = SideScores(
        held_out=EvalScores(loss=1.1, exact_match=0.25, token_f1=0.5, examples=8),
        anchor=EvalScores(loss=2.0, exact_match=0.0, token_f1=0.2, examples=8),
    )
    manifest = Manifest(
        tenant=tenant,
        version=version,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        base_model=BaseModelIdentity(setting="tiny", source="/models/tiny"),
        parent=None,
        data=DataWindow(
            topic="training-examples",
            ranges={0: (0, 10)},
            replay_ranges={0: (0, 0)},
            new_examples=10,
            train=8,
            held_out=2,
            replay=0,
        ),
        split=Split(seed=42, held_out_percent=20),
        training=TrainingSettings().model_dump(mode="json"),
        quantization="none",
        libraries={"python": "3.11"},
        code=CodeVersion(streamtune="0.1.0", training_sha256="c0ffee"),
        metrics=Metrics(
            train=TrainFigures(steps=4, tokens=100, seconds=1.0, tokens_per_second=100.0, final_loss=0.9),
            candidate=candidate,
            current=current,
        ),
        gate=Verdict(promoted=promoted, reason=reason, anchor_tolerance=0.05, compared_with="base"),
        adapter=AdapterDigest(sha256=f"sha-{version}"),
    )
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
