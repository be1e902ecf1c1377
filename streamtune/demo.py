"""`make demo`: the stack up, and one domain event through Kafka and one vector through Weaviate.

The end-to-end demonstration (ingest, training, answers) replaces this once those pieces land.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from streamtune.contracts import DocumentUpserted, DocumentUpsertedData, decode_event, encode
from streamtune.kafka import client_config, create_topics
from streamtune.settings import Settings
from streamtune.stack import Stack
from streamtune.topics import DOMAIN_EVENTS, topic_name

__all__ = ["main"]


def main(settings: Settings) -> int:
    from confluent_kafka import Consumer, Producer, TopicPartition

    step = _Steps()
    step("local stack")
    for status in Stack(settings, say=lambda line: print(f"    {line}")).up():
        print(f"    {status.name:<16} {status.state:<10} {status.address}")
    step("topics")
    for result in create_topics(settings.kafka, settings.topics):
        print(f"    {result.name:<24} {'created' if result.created else 'exists'}")

    topic = topic_name(DOMAIN_EVENTS, settings.topics)
    event = DocumentUpserted(
        event_id=f"demo-{uuid.uuid4().hex[:8]}",
        type="document.upserted",
        tenant="acme",
        occurred_at=datetime.now(UTC),
        source="demo",
        data=DocumentUpsertedData(doc_id="refund-policy", title="Refund policy", text="Refunds within 30 days."),
    )
    step(f"produce one document.upserted event to {topic}")
    producer = Producer(client_config(settings.kafka))
    delivered: list[tuple[int, int]] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is None:
            delivered.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    producer.produce(topic, key=event.key.encode(), value=encode(event), on_delivery=on_delivery)
    producer.flush(15)
    if not delivered:
        print("    delivery failed")
        return 1
    partition, offset = delivered[0]
    print(f"    key={event.key} partition={partition} offset={offset}")

    step("consume it back and validate it against the contract")
    consumer = Consumer(client_config(settings.kafka, **{"group.id": f"demo-{uuid.uuid4().hex[:8]}"}))
    consumer.assign([TopicPartition(topic, partition, offset)])
    message = consumer.poll(15.0)
    consumer.close()
    if message is None or message.error() is not None:
        print(f"    nothing came back: {message.error() if message else 'timeout'}")
        return 1
    back = decode_event(message.value() or b"")
    print(f"    {back.type} {back.event_id} tenant={back.tenant} doc_id={back.data.doc_id}")  # type: ignore[union-attr]

    step("Weaviate: write one vector and find it again")
    from retrieval import connect

    with connect(settings.weaviate) as client:
        name = f"Demo{uuid.uuid4().hex[:8]}"
        from weaviate.classes.config import Configure
        from weaviate.classes.data import DataObject

        collection = client.collections.create(name, vector_config=Configure.Vectors.self_provided())
        try:
            collection.data.insert_many([DataObject(properties={"text": "refunds"}, vector=[1.0, 0.0])])
            hit = collection.query.near_vector([0.9, 0.1], limit=1).objects[0]
            print(f"    nearest to [0.9, 0.1]: {hit.properties['text']!r}")
        finally:
            client.collections.delete(name)
    step("done")
    print("    The stack keeps running: `make stack-down` stops it.")
    return 0


class _Steps:
    def __init__(self) -> None:
        self.begin = time.monotonic()
        self.number = 0

    def __call__(self, title: str) -> None:
        self.number += 1
        print(f"[{time.monotonic() - self.begin:6.1f}s] {self.number}. {title}", flush=True)
