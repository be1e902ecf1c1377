from __future__ import annotations

from collections.abc import Callable

import pytest

from retrieval import RetrievalError, connect
from streamtune.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def test_collection_is_created_written_and_searched_by_vector(
    stack: Settings, unique_name: Callable[[str], str]
) -> None:
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


def test_a_collection_of_another_dimension_is_a_start_up_error(
    stack: Settings, unique_name: Callable[[str], str]
) -> None:
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
