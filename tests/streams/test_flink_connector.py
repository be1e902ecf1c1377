from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from streamtune.harness import unique_name
from streamtune.kafka import client_config
from streamtune.settings import Settings

pytestmark = pytest.mark.integration

JOB = Path(__file__).with_name("copy_job.py")


def test_pyflink_job_reads_one_topic_through_the_connector_and_writes_another(
    stack: Settings, new_topic: Callable[..., str]
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


def test_table_options_pass_secrets_with_quotes_unchanged(tmp_path: Path) -> None:
    from streams.flink import kafka_sink, kafka_source
    from streamtune.kafka import client_config
    from streamtune.settings import load_settings

    password = "it's a \"quoted\" secret, with \\ and 'quotes'"
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n")
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")
    settings = load_settings(
        config_files=[],
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "streamtune",
            "sasl_password": password,
            "ssl_ca_location": tmp_path / "ca.pem",
            "ssl_certificate_location": tmp_path / "cert.pem",
            "ssl_key_location": tmp_path / "key.pem",
        },
    )
    # The Python clients: librdkafka's names, the password as it is.
    python = client_config(settings.kafka)
    assert (python["security.protocol"], python["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert python["sasl.password"] == password and python["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert python["ssl.certificate.location"] == str(tmp_path / "cert.pem")
    # The Flink connector: Java's names, the password inside a JAAS line, the PEM files as a PEM trust/keystore.
    source = kafka_source("events", settings, group_id="g").get_options()
    sink = kafka_sink("dlq", settings, transactional_id="p-dlq", max_request_bytes=2_000_000).get_options()
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    jaas = (
        f'org.apache.kafka.common.security.scram.ScramLoginModule required username="streamtune" password="{escaped}";'
    )
    for options in (source, sink):
        assert options["properties.sasl.jaas.config"] == jaas
        assert options["properties.security.protocol"] == "SASL_SSL"
        assert options["properties.sasl.mechanism"] == "SCRAM-SHA-512"
        assert options["properties.ssl.truststore.type"] == "PEM"
        assert options["properties.ssl.truststore.location"] == str(tmp_path / "ca.pem")
        assert options["properties.ssl.keystore.key"].startswith("-----BEGIN PRIVATE KEY-----")
        assert "properties.sasl.password" not in options  # not a Java client property
    assert source["properties.group.id"] == "g" and source["topic"] == "events"
    assert sink["sink.transactional-id-prefix"] == "p-dlq" and sink["properties.max.request.size"] == "2000000"
