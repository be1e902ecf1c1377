"""`streamtune monitor` started while the broker is down (issue 31): it logs that it waits for Kafka, waits with
the bounded backoff of steady state, and starts normally once the broker is back; it never exits.

The broker is a private one of the test's (``tests/conftest.py``), started again as soon as the monitor has
said that it waits (a condition, not a clock)."""

from __future__ import annotations

import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamtune.contracts import Query, encode
from streamtune.harness import ServiceProcess, free_port, isolated_env, settings_for_env, wait_for
from streamtune.kafka import create_topics, delete_topics, producer
from streamtune.topics import QUERIES, topic_name

pytestmark = [pytest.mark.integration, pytest.mark.fault]

N = 10


def test_the_monitor_started_while_the_broker_is_down_waits_then_counts(private_kafka: Any, tmp_path: Path) -> None:
    env = isolated_env(
        tmp_path,
        "mon",
        **private_kafka.env,
        STREAMTUNE__MONITOR__PORT=str(free_port()),
        STREAMTUNE__MONITOR__GROUP_ID=f"mon-{uuid.uuid4().hex[:10]}",
        STREAMTUNE__MONITOR__SERVE_METRICS_URLS=f'["http://127.0.0.1:{free_port()}/metrics"]',
        STREAMTUNE__KAFKA__REQUEST_TIMEOUT_S="3",
    )
    settings = settings_for_env(env)
    create_topics(settings.kafka, settings.topics)
    private_kafka.stop()
    monitor = ServiceProcess(["monitor"], b"unavailable for", tmp_path / "logs", env, python=sys.executable)
    monitor.start(timeout_s=120)  # returns once it has logged "monitor: Kafka at ... unavailable for 0s"
    try:
        time.sleep(2 * settings.kafka.retry_max_s)  # a few backoff rounds: still alive, still waiting
        assert monitor.running(), monitor.output()[-3000:]
        private_kafka.start()
        wait_for(lambda: b"monitor: ready" in monitor.log.read_bytes() or not monitor.running(), 120, "ready")
        assert monitor.running(), monitor.output()[-3000:]
        client = producer(settings.kafka)
        for n in range(N):
            query = Query(query_id=f"q{n}", tenant="acme", question="What is the refund window?")
            client.produce(topic_name(QUERIES, settings.topics), key=query.query_id, value=encode(query))
        assert client.flush(15) == 0

        def counted() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.monitor.port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            return any(
                line.startswith("streamtune_monitor_queries_total") and 'tenant="acme"' in line
                and float(line.rsplit(" ", 1)[1]) == N
                for line in text.splitlines()
            )  # fmt: skip

        wait_for(counted, 90, f"the monitor counting the {N} queries")
        assert "Traceback" not in monitor.output()
    finally:
        monitor.stop()
        private_kafka.start()  # idempotent: the topics are deleted on a running broker
        delete_topics(settings.kafka, settings.topics)
