from __future__ import annotations

import os
import random
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from streamtune.errors import StackError
from streamtune.settings import Settings, load_settings
from streamtune.stack import Stack
from streamtune.stack.base import port_free
from streamtune.stack.kafka import Kafka


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_pair() -> int:
    """A free port whose successor is free too (Weaviate derives a second port as port + 1)."""
    while True:
        port = _free_port()
        if port < 65535 and port_free(port + 1):
            return port


def free_s3_ports() -> dict[str, object]:
    """``[s3]`` settings for a private SeaweedFS: four free ports whose gRPC twins (port + 10000) are free too."""
    ports: list[int] = []
    # below the ephemeral range (32768 and up here), where a client socket of a restart cannot take them
    for port in range(random.randrange(12000, 20000), 22700):
        if port_free(port) and port_free(port + 10000):
            ports.append(port)
            if len(ports) == 4:
                break
    master, volume, filer, s3 = ports
    return {"endpoint_url": f"http://127.0.0.1:{s3}", "master_port": master, "volume_port": volume, "filer_port": filer}


def test_missing_java_names_the_component_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    settings = load_settings(config_files=[], cache_dir=tmp_path / "cache")
    with pytest.raises(StackError) as info:
        Stack(settings, say=lambda _: None).up()
    assert info.value.component == "kafka"
    assert "`java` is not on PATH" in str(info.value)
    assert "install Java" in info.value.fix


def test_a_remote_bootstrap_is_not_started_locally(tmp_path: Path) -> None:
    settings = load_settings(config_files=[], kafka={"bootstrap_servers": "broker.example:9092"})
    with pytest.raises(StackError, match="bootstrap_servers"):
        Kafka(settings)


def test_status_of_a_fresh_home_reports_stopped_or_missing(tmp_path: Path) -> None:
    settings = load_settings(
        config_files=[],
        cache_dir=tmp_path / "cache",
        kafka={"bootstrap_servers": f"127.0.0.1:{_free_port()}"},
        weaviate={"http_port": _free_port()},
    )
    states = {s.name: s.state for s in Stack(settings, say=lambda _: None).status()}
    assert states == {
        "kafka": "not installed",
        "weaviate": "not installed",
        "s3": "not installed",
        "flink-connector": "not installed",
    }


def test_a_remote_s3_endpoint_is_not_started_locally() -> None:
    from streamtune.stack.s3 import S3

    settings = load_settings(config_files=[], s3={"endpoint_url": "https://s3.example.com"})
    with pytest.raises(StackError, match="endpoint_url"):
        S3(settings)


@pytest.mark.integration
def test_up_twice_does_nothing_the_second_time(stack: Settings) -> None:
    said: list[str] = []
    statuses = Stack(stack, say=said.append).up()
    assert all(s.state in ("healthy", "installed") for s in statuses)
    assert "stack: everything was already up; nothing to do" in said
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.weaviate.http_port}/v1/.well-known/ready") as r:
        assert r.status == 200


@pytest.fixture
def side_stack(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A second, throwaway stack on free ports with its own home (installs shared through the cache)."""
    settings = load_settings(
        config_files=[],
        cache_dir=stack.cache_dir,
        kafka={"bootstrap_servers": f"127.0.0.1:{_free_port()}"},
        weaviate={"http_port": _free_port(), "grpc_port": _free_port()},
        stack={
            "home": tmp_path / "side",
            "kafka_controller_port": _free_port(),
            "weaviate_gossip_port": _free_port_pair(),
            "weaviate_raft_port": _free_port_pair(),
            "weaviate_metrics_port": _free_port(),
            "startup_timeout_s": 90,
        },
        s3=free_s3_ports(),
    )
    yield settings
    Stack(settings, say=lambda _: None).down()


@pytest.mark.integration
def test_a_taken_port_fails_up_and_leaves_nothing_running(side_stack: Settings) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", side_stack.weaviate.http_port))
    blocker.listen()
    try:
        with pytest.raises(StackError) as info:
            Stack(side_stack, say=lambda _: None).up()
    finally:
        blocker.close()
    assert info.value.component == "weaviate"
    assert f"port {side_stack.weaviate.http_port}" in info.value.cause
    # Kafka had started before Weaviate failed: it must have been stopped again.
    kafka_port = int(side_stack.kafka.bootstrap_servers.rsplit(":", 1)[1])
    assert port_free(kafka_port)
    assert not list((side_stack.stack_home / "run").glob("*.pid"))


@pytest.mark.integration
def test_a_dead_broker_is_reported_and_restarted_with_its_data(side_stack: Settings) -> None:
    stack = Stack(side_stack, say=lambda _: None)
    stack.up()
    servers = side_stack.kafka.bootstrap_servers
    topic = "survives-restart"
    from streamtune.kafka import create_topics
    from streamtune.topics import TopicSpec

    create_topics(side_stack.kafka, side_stack.topics, [TopicSpec(topic, "k", None, scaled=False)])
    producer = Producer({"bootstrap.servers": servers})
    producer.produce(topic, key=b"k", value=b"before the crash")
    assert producer.flush(15) == 0

    kafka_status = next(s for s in stack.status() if s.name == "kafka")
    assert kafka_status.pid is not None
    os.killpg(kafka_status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and next(s for s in stack.status() if s.name == "kafka").state == "healthy":
        time.sleep(0.2)
    assert next(s for s in stack.status() if s.name == "kafka").state == "exited"

    stack.up()
    assert next(s for s in stack.status() if s.name == "kafka").state == "healthy"
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "after-restart", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values: list[bytes | None] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not values:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            values.append(message.value())
    consumer.close()
    assert values == [b"before the crash"]
    stack.down()
    assert port_free(int(servers.rsplit(":", 1)[1]))


def test_a_kafka_cluster_id_never_starts_with_a_dash() -> None:
    from streamtune.stack.kafka import _cluster_id

    ids = [_cluster_id() for _ in range(3000)]  # about 47 would start with '-' without the redraw
    assert not any(i.startswith("-") for i in ids) and len(set(ids)) == 3000
    assert all(len(i) == 22 for i in ids)
