"""The chunk collection in Weaviate: schema, idempotent writes, tenant-isolated hybrid search.

Each streamtune tenant is a Weaviate tenant (native multi-tenancy), so a search for one tenant cannot
see another's chunks. Object ids are uuid5(tenant, doc_id, chunk index): replays and restarts overwrite
instead of duplicating. The collection records the embedding model and dimension it was built with,
and a mismatch with the configured model is a start-up error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.client import RetrievalError, is_transient
from streamtune.errors import ConfigError
from streamtune.settings import Settings

__all__ = ["ChunkStore", "DocumentChunks", "SearchHit", "chunk_uuid", "cosine"]

_NAMESPACE = uuid.UUID("5b0e4f38-2f55-4b8f-9c39-8f1f3f6a2b7e")


def chunk_uuid(tenant: str, doc_id: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x1f{doc_id}\x1f{index}"))


@dataclass(frozen=True)
class DocumentChunks:
    """Everything one document contributes to the index."""

    tenant: str
    doc_id: str
    title: str
    chunks: Sequence[str]
    vectors: Sequence[Sequence[float]]
    event_id: str
    occurred_at: str
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    chunk_id: str
    title: str
    text: str
    score: float
    """Weaviate's hybrid fusion score: a rank within this result list, not comparable across queries."""
    similarity: float | None = None
    """Cosine similarity of the chunk's vector to the query's: absolute, so a threshold can say whether anything
    relevant was found (``retrieval.min_similarity``). None where no query vector was given."""


def cosine(a: Sequence[float], b: Sequence[float] | None) -> float | None:
    """Cosine similarity of two vectors, rounded to 4 places (None: no vector, or a zero one)."""
    if b is None or len(a) != len(b):
        return None
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return round(float(x @ y) / norm, 4) if norm > 0 else None


def _vector_of(found: Any) -> Sequence[float] | None:
    """The object's vector as the client returns it: one unnamed vector, or ``{"default": [...]}``."""
    vector = found.vector
    if isinstance(vector, dict):
        vector = vector.get("default") or next(iter(vector.values()), None)
    return vector or None


class ChunkStore:
    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.name = settings.weaviate.collection
        self._tenants: set[str] = set()

    # -- schema ---------------------------------------------------------------------------------
    def ensure_collection(self, dimension: int) -> None:
        """Create the collection for ``embedding.model`` vectors of ``dimension``, or check that an existing
        one holds vectors of that dimension (a mismatch is a start-up error naming the setting)."""
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        model = self.settings.embedding.model
        if self.client.collections.exists(self.name):
            self._check_marker(self.client.collections.get(self.name).config.get().description, dimension, model)
            return
        marker = {"embedding_model": model, "dimension": dimension}
        try:
            self.client.collections.create(
                self.name,
                description=json.dumps(marker),
                properties=[
                    Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="chunk_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="chunk_index", data_type=DataType.INT),
                    Property(name="title", data_type=DataType.TEXT),
                    Property(name="text", data_type=DataType.TEXT),
                    Property(name="event_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="occurred_at", data_type=DataType.DATE),
                    Property(name="metadata", data_type=DataType.TEXT, skip_vectorization=True, index_searchable=False),
                ],
                vector_config=Configure.Vectors.self_provided(
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
                ),
                multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_activation=True),
            )
        except Exception as exc:
            if self.client.collections.exists(self.name):  # created concurrently by another worker
                return
            raise RetrievalError(f"could not create Weaviate collection {self.name}: {exc}") from exc

    def _check_marker(self, description: str | None, dimension: int, model: str) -> None:
        try:
            recorded = json.loads(description or "")
        except json.JSONDecodeError:
            recorded = {}
        if recorded.get("dimension") != dimension:
            raise ConfigError(
                "weaviate.collection",
                self.name,
                f"the existing collection holds {recorded.get('dimension', 'unknown')}-d vectors from "
                f"{recorded.get('embedding_model', 'an unknown model')}, but embedding.model={model!r} makes "
                f"{dimension}-d vectors; use another collection name or re-index into a new one",
            )

    def drop(self) -> None:
        """Delete the whole collection (tests, benchmarks); a missing one is fine."""
        if self.client.collections.exists(self.name):
            self.client.collections.delete(self.name)
        self._tenants.clear()

    def _tenant(self, tenant: str) -> Any:
        from weaviate.classes.tenants import Tenant

        collection = self.client.collections.get(self.name)
        if tenant not in self._tenants:
            if not collection.tenants.exists(tenant):
                collection.tenants.create([Tenant(name=tenant)])
            self._tenants.add(tenant)
        return collection.with_tenant(tenant)

    def _known_tenant(self, tenant: str) -> Any | None:
        """The tenant's view of the collection, or None when nothing was ever indexed for it."""
        if tenant in self._tenants:
            return self.client.collections.get(self.name).with_tenant(tenant)
        try:
            if not self.client.collections.exists(self.name):
                return None
            collection = self.client.collections.get(self.name)
            if not collection.tenants.exists(tenant):
                return None
        except Exception as exc:
            raise RetrievalError(f"Weaviate could not look up tenant {tenant} of {self.name}: {exc}") from exc
        self._tenants.add(tenant)
        return collection.with_tenant(tenant)

    # -- writes ---------------------------------------------------------------------------------
    def upsert(self, documents: Sequence[DocumentChunks]) -> dict[tuple[str, str], str]:
        """Write every chunk of each document and remove chunks a shorter new version no longer has.

        Returns the documents Weaviate refused, ``(tenant, doc_id) → its message``; every other document is
        written. A refused document keeps no chunk (neither its new ones nor, since they may have been
        overwritten, its old ones): a document is in the index whole or not at all. A failure of the whole
        request (Weaviate down, read-only) raises ``RetrievalError``; retrying it is harmless (fixed ids).
        """
        from weaviate.classes.data import DataObject
        from weaviate.classes.query import Filter

        rejected: dict[tuple[str, str], str] = {}
        by_tenant: dict[str, list[DocumentChunks]] = {}
        for doc in documents:
            by_tenant.setdefault(doc.tenant, []).append(doc)
        for tenant, docs in by_tenant.items():
            collection = self._tenant(tenant)
            owners: list[str] = []
            objects = []
            for doc in docs:
                for index, (text, vector) in enumerate(zip(doc.chunks, doc.vectors, strict=True)):
                    owners.append(doc.doc_id)
                    objects.append(
                        DataObject(
                            uuid=chunk_uuid(tenant, doc.doc_id, index),
                            properties={
                                "doc_id": doc.doc_id,
                                "chunk_id": f"{doc.doc_id}#{index}",
                                "chunk_index": index,
                                "title": doc.title,
                                "text": text,
                                "event_id": doc.event_id,
                                "source": doc.source or "",
                                "occurred_at": doc.occurred_at,
                                "metadata": json.dumps(doc.metadata, sort_keys=True),
                            },
                            vector=list(map(float, vector)),
                        )
                    )
            if objects:
                refused = self._call(
                    f"write {len(objects)} chunks (tenant {tenant})", collection.data.insert_many, objects
                )
                for index, error in refused.errors.items():
                    # only the message: the error also holds the object, vector included, which logs must not show
                    if is_transient(RetrievalError(error.message)):
                        raise RetrievalError(f"Weaviate could not write chunks (tenant {tenant}): {error.message}")
                    rejected.setdefault((tenant, owners[index]), error.message)
            gone = [doc.doc_id for doc in docs if (tenant, doc.doc_id) in rejected]
            stale = [
                Filter.by_property("doc_id").equal(doc.doc_id)
                & Filter.by_property("chunk_index").greater_or_equal(len(doc.chunks))
                for doc in docs
                if (tenant, doc.doc_id) not in rejected
            ]
            if gone:
                stale.append(Filter.by_property("doc_id").contains_any(gone))
            if stale:
                self._delete_all(collection, Filter.any_of(stale), f"tenant {tenant}")
        return rejected

    def delete(self, documents: Sequence[tuple[str, str]]) -> int:
        """Remove every chunk of each ``(tenant, doc_id)``, however many; one request per tenant and batch."""
        from weaviate.classes.query import Filter

        by_tenant: dict[str, list[str]] = {}
        for tenant, doc_id in documents:
            by_tenant.setdefault(tenant, []).append(doc_id)
        removed = 0
        for tenant, doc_ids in by_tenant.items():
            collection = self._known_tenant(tenant)
            if collection is not None:
                removed += self._delete_all(collection, Filter.by_property("doc_id").contains_any(doc_ids), tenant)
        return removed

    def _delete_all(self, collection: Any, where: Any, what: str) -> int:
        """``delete_many`` until nothing matches: one call removes at most QUERY_MAXIMUM_RESULTS (10,000)."""
        removed = 0
        while True:
            result = self._call(f"delete chunks ({what})", collection.data.delete_many, where=where)
            if result.failed:
                raise RetrievalError(f"Weaviate failed to delete {result.failed} chunks ({what})")
            removed += int(result.successful)
            if not result.matches or not result.successful:
                return removed

    def _call(self, what: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(*args, **kwargs)
        except RetrievalError:
            raise
        except Exception as exc:
            raise RetrievalError(f"Weaviate could not {what} in {self.name}: {exc}") from exc

    # -- reads ----------------------------------------------------------------------------------
    def search(
        self, tenant: str, text: str, vector: Sequence[float], k: int, alpha: float | None = None
    ) -> list[SearchHit]:
        """Hybrid (BM25 + vector) search within one tenant; an unknown tenant has no chunks."""
        return self._hybrid(tenant, text, vector, k, alpha, None)

    def search_documents(
        self,
        tenant: str,
        text: str,
        vector: Sequence[float],
        k: int,
        doc_ids: Sequence[str],
        alpha: float | None = None,
    ) -> list[SearchHit]:
        """As ``search``, among the chunks of ``doc_ids`` only: the top-``k`` chunks of the documents a recorded
        answer names, ranked as ``serve`` would rank them. Unknown documents and tenants have no chunks."""
        from weaviate.classes.query import Filter

        if not doc_ids:
            return []
        return self._hybrid(tenant, text, vector, k, alpha, Filter.by_property("doc_id").contains_any(list(doc_ids)))

    def _hybrid(
        self, tenant: str, text: str, vector: Sequence[float], k: int, alpha: float | None, filters: Any
    ) -> list[SearchHit]:
        from weaviate.classes.query import MetadataQuery

        collection = self._known_tenant(tenant)
        if collection is None:
            return []
        try:
            # the chunks' vectors come back too (k x dimension floats): the similarity is computed here, since
            # a hybrid query's metadata has only the fused score (its vector distance is not returned)
            result = collection.query.hybrid(
                query=text,
                vector=list(map(float, vector)),
                alpha=self.settings.retrieval.alpha if alpha is None else alpha,
                limit=k,
                filters=filters,
                return_metadata=MetadataQuery(score=True),
                include_vector=True,
            )
        except Exception as exc:
            raise RetrievalError(f"Weaviate search in {self.name} (tenant {tenant}) failed: {exc}") from exc
        return [
            SearchHit(
                doc_id=o.properties["doc_id"],
                chunk_id=o.properties["chunk_id"],
                title=o.properties.get("title") or "",
                text=o.properties["text"],
                score=float(o.metadata.score or 0.0),
                similarity=cosine(vector, _vector_of(o)),
            )
            for o in result.objects
        ]

    def has_tenant(self, tenant: str) -> bool:
        """Whether anything was ever indexed for ``tenant`` (a Weaviate tenant exists for it)."""
        return self._known_tenant(tenant) is not None

    def missing(self, tenant: str, doc_ids: set[str]) -> set[str]:
        """Those of ``doc_ids`` that have no chunk in the tenant's index."""
        return {doc_id for doc_id in doc_ids if self.count(tenant, doc_id) == 0}

    def count(self, tenant: str, doc_id: str | None = None) -> int:
        from weaviate.classes.query import Filter

        collection = self._known_tenant(tenant)
        if collection is None:
            return 0
        where = Filter.by_property("doc_id").equal(doc_id) if doc_id else None
        return int(collection.aggregate.over_all(total_count=True, filters=where).total_count or 0)
