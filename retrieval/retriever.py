"""Text → hits: the one place a question becomes a query embedding and a tenant-isolated hybrid search.

``serve``, ``streamtune search`` and the demo all retrieve through a ``Retriever``, so they embed with the
same model and normalisation that the ingest job used for the chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from retrieval.client import RetrievalError, address, connect
from retrieval.store import ChunkStore, SearchHit
from streamtune.settings import Settings

__all__ = ["Retriever"]


class Retriever:
    def __init__(self, settings: Settings, *, embedder: Any | None = None, client: Any | None = None) -> None:
        from streamtune.models import load_embedder

        self.settings = settings
        self._own_client = client is None
        # connected before the embedding model loads (seconds): an unreachable Weaviate is reported at once
        self.client = client if client is not None else connect(settings.weaviate)
        try:
            self.embedder = embedder if embedder is not None else load_embedder(settings)
        except BaseException:
            if self._own_client:
                self.client.close()
            raise
        self.store = ChunkStore(self.client, settings)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Normalised query embeddings, in one batch."""
        if not texts:
            return []
        vectors = self.embedder.encode(
            list(texts), batch_size=self.settings.embedding.batch_size, normalize_embeddings=True
        )
        return [[float(x) for x in row] for row in vectors]

    def check_ready(self) -> None:
        """RetrievalError unless Weaviate answers its readiness probe now.

        A cheap HTTP call that fails at once while Weaviate is down, where a search would sit in the client's
        own gRPC retries (five, about a minute, not configurable in weaviate-client 4.x) before failing.
        """
        try:
            ready = bool(self.client.is_ready())
        except Exception as exc:
            raise RetrievalError(f"Weaviate at {address(self.settings.weaviate)} is not ready: {exc}") from exc
        if not ready:
            raise RetrievalError(f"Weaviate at {address(self.settings.weaviate)} is not ready")

    def search(self, tenant: str, text: str, k: int | None = None, alpha: float | None = None) -> list[SearchHit]:
        """The tenant's top-``k`` chunks for ``text`` (hybrid: BM25 + vector, weighted by ``alpha``)."""
        return self.search_with(tenant, text, self.embed([text])[0], k, alpha)

    def search_with(
        self, tenant: str, text: str, vector: Sequence[float], k: int | None = None, alpha: float | None = None
    ) -> list[SearchHit]:
        """As ``search``, with the query's embedding already made (batched callers embed once for all)."""
        return self.store.search(tenant, text, vector, k or self.settings.retrieval.top_k, alpha)

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
