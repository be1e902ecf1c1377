from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from streamtune.kafka import client_config
from streamtune.settings import Settings

pytestmark = pytest.mark.integration

JOB = Path(__file__).with_name("copy_job.py")


def test_pyflink_job_reads_one_topic_through_the_connector_and_writes_another(
    stack: Settings, new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    source, target = new_topic(partitions=2), new_topic()
    producer = Producer(client_config(stack.kafka))
    sent = {f"k{i}".encode(): f"event {i}".encode() for i in range(20)}
    for key, value in sent.items():
        producer.produce(source, key=key, value=value)
    assert producer.flush(15) == 0

    # The job runs in its own process, as `streamtune streams run` will: a local MiniCluster.
    result = subprocess.run(
        [sys.executable, str(JOB), source, target, unique_name("flink")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    consumer = Consumer(
        client_config(stack.kafka, **{"group.id": unique_name("check"), "auto.offset.reset": "earliest"})
    )
    consumer.subscribe([target])
    received: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 30
    while len(received) < len(sent) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            received[message.key()] = message.value()
    consumer.close()
    assert received == {key: value.upper() for key, value in sent.items()}


def test_table_options_pass_secrets_with_quotes_unchanged() -> None:
    from streams.flink import kafka_sink, kafka_source
    from streamtune.settings import load_settings

    password = "it's a \"quoted\" secret, with 'quotes'"
    settings = load_settings(
        config_files=[], kafka={"client_config": {"security.protocol": "SASL_SSL", "sasl.password": password}}
    )
    source = kafka_source("events", settings, group_id="g").get_options()
    sink = kafka_sink("dlq", settings, transactional_id="p-dlq", max_request_bytes=2_000_000).get_options()
    assert source["properties.sasl.password"] == password and sink["properties.sasl.password"] == password
    assert source["properties.group.id"] == "g" and source["topic"] == "events"
    assert sink["sink.transactional-id-prefix"] == "p-dlq" and sink["properties.max.request.size"] == "2000000"
