from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamtune.harness import unique_name
from streamtune.kafka import client_config, create_topics
from streamtune.settings import Settings, load_settings
from streamtune.topics import ALL_TOPICS, topic_name

pytestmark = pytest.mark.integration


def test_produce_consume_round_trip_commits_the_group_offset(stack: Settings, new_topic: Callable[..., str]) -> None:
    topic = new_topic()
    producer = Producer(client_config(stack.kafka))
    for i in range(3):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(15) == 0

    group = unique_name("group")
    consumer = Consumer(
        client_config(stack.kafka, **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    )
    consumer.subscribe([topic])
    received = []
    deadline = time.monotonic() + 30
    while len(received) < 3 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            received.append((message.key(), message.value()))
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, 0)], timeout=15)
    consumer.close()

    assert received == [(b"k0", b"v0"), (b"k1", b"v1"), (b"k2", b"v2")]
    assert committed[0].offset == 3


def test_topics_create_is_harmless_twice(stack: Settings) -> None:
    settings = load_settings(config_files=[], topics={"prefix": unique_name("p") + "."})
    first = create_topics(settings.kafka, settings.topics)
    second = create_topics(settings.kafka, settings.topics)
    assert [r.created for r in first] == [True] * len(ALL_TOPICS)
    assert [r.created for r in second] == [False] * len(ALL_TOPICS)
    assert [(r.name, r.partitions) for r in first] == [(r.name, r.partitions) for r in second]
    expected = {topic_name(spec, settings.topics): spec.partitions(settings.topics) for spec in ALL_TOPICS}
    assert {r.name: r.partitions for r in first} == expected

    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(client_config(settings.kafka))
    name = topic_name(ALL_TOPICS[2], settings.topics)  # training-examples
    configs = admin.describe_configs([ConfigResource("topic", name)])
    described = next(iter(configs.values())).result(timeout=15)
    assert described["retention.ms"].value == "-1"
    for future in admin.delete_topics(list(expected)).values():
        future.result(timeout=15)
