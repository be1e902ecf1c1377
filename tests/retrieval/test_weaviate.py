from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from retrieval import RetrievalError, connect
from streamtune.harness import unique_name
from streamtune.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def test_collection_is_created_written_and_searched_by_vector(stack: Settings) -> None:
    from weaviate.classes.config import Configure, DataType, Property
    from weaviate.classes.data import DataObject
    from weaviate.classes.query import MetadataQuery

    name = "Test" + unique_name("c").replace("-", "")
    with connect(stack.weaviate) as client:
        collection = client.collections.create(
            name,
            properties=[Property(name="text", data_type=DataType.TEXT)],
            vector_config=Configure.Vectors.self_provided(),
        )
        try:
            collection.data.insert_many(
                [
                    DataObject(properties={"text": "north"}, vector=[1.0, 0.0, 0.0]),
                    DataObject(properties={"text": "east"}, vector=[0.0, 1.0, 0.0]),
                    DataObject(properties={"text": "up"}, vector=[0.0, 0.0, 1.0]),
                ]
            )
            result = collection.query.near_vector(
                [0.9, 0.1, 0.0], limit=2, return_metadata=MetadataQuery(distance=True)
            )
            texts = [o.properties["text"] for o in result.objects]
            assert texts == ["north", "east"]
            assert result.objects[0].metadata.distance < result.objects[1].metadata.distance
            assert len(collection) == 3
        finally:
            client.collections.delete(name)


def test_unreachable_weaviate_is_a_clear_error() -> None:
    settings = load_settings(config_files=[], weaviate={"http_port": 1, "grpc_port": 2, "timeout_s": 2})
    with pytest.raises(RetrievalError, match=r"cannot reach Weaviate at http://127\.0\.0\.1:1 "):
        connect(settings.weaviate)


def test_a_collection_of_another_dimension_is_a_start_up_error(stack: Settings) -> None:
    from retrieval.store import ChunkStore
    from streamtune.errors import ConfigError

    settings = load_settings(config_files=[], weaviate={"collection": "Dim" + unique_name("c").replace("-", "")})
    with connect(settings.weaviate) as client:
        store = ChunkStore(client, settings)
        try:
            store.ensure_collection(384)
            store.ensure_collection(384)  # the same model again: accepted
            with pytest.raises(ConfigError) as info:
                store.ensure_collection(128)
            assert info.value.setting == "weaviate.collection"
            assert "384-d" in info.value.fix and "128-d" in info.value.fix
        finally:
            store.drop()
        assert not client.collections.exists(settings.weaviate.collection)


def _doc(doc_id: str, chunks: int, dimension: int = 8, tenant: str = "acme") -> object:
    import random

    from retrieval.store import DocumentChunks

    rng = random.Random(doc_id)
    return DocumentChunks(
        tenant=tenant,
        doc_id=doc_id,
        title=doc_id,
        chunks=[f"{doc_id} chunk {i}" for i in range(chunks)],
        vectors=[[rng.random() for _ in range(dimension)] for _ in range(chunks)],
        event_id=f"e-{doc_id}",
        occurred_at="2026-11-21T10:00:00Z",
    )


@pytest.fixture
def store(stack: Settings) -> Iterator[object]:
    from retrieval.store import ChunkStore

    settings = load_settings(config_files=[], weaviate={"collection": "Store" + unique_name("c").replace("-", "")})
    with connect(settings.weaviate) as client:
        chunk_store = ChunkStore(client, settings)
        chunk_store.ensure_collection(8)
        try:
            yield chunk_store
        finally:
            chunk_store.drop()


def test_a_document_weaviate_refuses_is_reported_and_the_rest_of_the_batch_is_written(store: Any) -> None:
    store.upsert([_doc("old", 2)])
    refused = store.upsert([_doc("good", 3), _doc("bad", 2, dimension=5), _doc("old", 1)])
    assert set(refused) == {("acme", "bad")}
    message = refused[("acme", "bad")]
    assert "vector" in message.lower() and "[" not in message  # Weaviate's reason, without the vector itself
    assert (store.count("acme", "good"), store.count("acme", "bad"), store.count("acme", "old")) == (3, 0, 1)


def test_a_delete_removes_every_chunk_past_the_query_limit(store: Any) -> None:
    many = 10_050  # Weaviate removes at most QUERY_MAXIMUM_RESULTS (10,000) objects per delete request
    for start in range(0, many, 2_000):
        _insert(store, _doc("big", min(2_000, many - start)), start)
    store.upsert([_doc("small", 2)])
    assert store.count("acme", "big") == many
    assert store.delete([("acme", "big")]) == many
    assert store.count("acme", "big") == 0 and store.count("acme", "small") == 2


def _insert(store: Any, doc: Any, offset: int) -> None:
    from weaviate.classes.data import DataObject

    from retrieval.store import chunk_uuid

    objects = [
        DataObject(
            uuid=chunk_uuid(doc.tenant, doc.doc_id, offset + i),
            properties={"doc_id": doc.doc_id, "chunk_index": offset + i, "text": text},
            vector=vector,
        )
        for i, (text, vector) in enumerate(zip(doc.chunks, doc.vectors, strict=True))
    ]
    store._tenant(doc.tenant)
    result = store.client.collections.get(store.name).with_tenant(doc.tenant).data.insert_many(objects)
    assert not result.has_errors


def test_tls_and_an_api_key_reach_the_client_and_never_its_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import weaviate

    seen: dict[str, Any] = {}

    def fake_connect(**kwargs: Any) -> None:  # the client library, not our logic, is replaced here
        seen.update(kwargs)
        raise RuntimeError(f"handshake failed for key {kwargs['auth_credentials'].api_key}")

    monkeypatch.setattr(weaviate, "connect_to_custom", fake_connect)
    settings = load_settings(
        config_files=[], weaviate={"host": "vectors.internal", "secure": True, "api_key": "s3cr3t-key"}
    )
    with pytest.raises(RetrievalError) as info:
        connect(settings.weaviate)
    assert (seen["http_host"], seen["http_secure"], seen["grpc_secure"]) == ("vectors.internal", True, True)
    assert seen["auth_credentials"].api_key == "s3cr3t-key"
    assert "https://vectors.internal:8080" in str(info.value) and "s3cr3t-key" not in str(info.value)
