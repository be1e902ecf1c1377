"""Which Weaviate failures count as transient (waited out with backoff) and which are ours to dead-letter."""

from __future__ import annotations

import pytest
from weaviate.exceptions import WeaviateQueryError

from retrieval.client import RetrievalError, is_transient


@pytest.mark.parametrize(
    "message",
    [
        # seen after a restart, while the node's shards load (tests/streams/test_ingest_job.py outage test)
        "object search at index ingest252abddc5f: no read replica found",
        # a write just after a restart (the same outage test, under load)
        "Every object failed during insertion. Here is the set of all errors: could not find index for class "
        "Ingest79ed24b52f. It might have been deleted in the meantime",
        "connection refused",
        "the node is not ready",
    ],
)
def test_a_restarting_weaviate_is_transient(message: str) -> None:
    try:
        raise WeaviateQueryError(message, "GRPC search")
    except WeaviateQueryError as cause:
        wrapped = RetrievalError(f"Weaviate search in Coll (tenant t) failed: {cause}")
        wrapped.__cause__ = cause
    assert is_transient(wrapped)


def test_a_bad_request_is_not_transient() -> None:
    assert not is_transient(RetrievalError("Weaviate search failed: invalid filter: unknown property 'nope'"))
