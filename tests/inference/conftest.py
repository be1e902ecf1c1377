"""What the serving tests share: tenants that exist (serve answers a tenant with neither documents nor adapters
``unknown_tenant``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from streamtune.settings import Settings

SEED_TEXT = "Refunds are accepted within thirty days of purchase with the receipt."


def _seed_tenants(settings: Settings, tenants: Sequence[str], text: str = SEED_TEXT) -> None:
    """Index one document (``seed``) for each of ``tenants`` in the settings' collection, so that serve knows them
    (a tenant with neither documents nor adapters is answered ``unknown_tenant``)."""
    from retrieval import connect
    from retrieval.store import ChunkStore, DocumentChunks
    from streamtune.models import load_embedder

    embedder = load_embedder(settings)
    vector = [float(x) for x in embedder.encode([text], normalize_embeddings=True)[0]]
    with connect(settings.weaviate) as client:
        store = ChunkStore(client, settings)
        store.ensure_collection(len(vector))
        store.upsert(
            [
                DocumentChunks(tenant, "seed", "Refund policy", [text], [vector], "seed", datetime.now(UTC).isoformat())
                for tenant in tenants
            ]
        )


@pytest.fixture(scope="session")
def seed_tenants() -> Callable[[Settings, Sequence[str]], None]:
    """Index one document for each tenant named, in the settings' collection."""
    return _seed_tenants
