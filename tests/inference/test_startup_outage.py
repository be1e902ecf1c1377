"""Services started while a dependency is down (issue 31): they log what they wait for, say so on their health
endpoint or gauge, wait with the bounded backoff of steady state, and then start normally; none exits.

The broker or Weaviate is a private one of the test's (``tests/conftest.py``), stopped before the service
starts. It is started again as soon as the service has said that it waits and the queries of the outage are
produced (a condition, not the 40 s of the issue's clock: waiting longer only repeats the same backoff step).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamtune.contracts import Query, encode
from streamtune.harness import (
    Deployment,
    ServiceProcess,
    free_port,
    metrics_has,
    tiny_gateway,
    tiny_serving,
    wait_for,
)
from streamtune.kafka import producer
from streamtune.settings import Settings
from streamtune.topics import QUERIES, topic_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]

N = 12  # queries produced during the outage


def _deployment(tiny_model: Path, tmp: Path, *presets: dict[str, str], **extra: str) -> Deployment:
    """serve's deployment, acme seeded with a document: its metrics on a free port, each start-up attempt's
    metadata wait 3 s."""
    deployment = Deployment(
        tmp,
        "up",
        tiny_serving(tiny_model),
        *presets,
        STREAMTUNE__INFERENCE__METRICS_PORT=str(free_port()),
        STREAMTUNE__KAFKA__REQUEST_TIMEOUT_S="3",  # each start-up attempt's metadata wait
        **extra,
    )
    deployment.seed(["acme"])
    return deployment


def _queries(settings: Settings) -> tuple[Any, list[str]]:
    """N queries produced now, and the producer that holds them while the broker is down (flush it later)."""
    out = producer(settings.kafka)
    ids = [f"q-{uuid.uuid4().hex[:8]}" for _ in range(N)]
    for query_id in ids:
        query = Query(query_id=query_id, tenant="acme", question="What is the refund window?")
        out.produce(topic_name(QUERIES, settings.topics), key=query_id.encode(), value=encode(query))
        out.poll(0)
    return out, ids


def _serve(deployment: Deployment, waits_for: bytes) -> ServiceProcess:
    """`streamtune serve`, started: returns once it has logged that it waits for ``waits_for``."""
    server = deployment.service(["serve"], waits_for)
    server.start(timeout_s=240)
    return server


def test_serve_started_while_the_broker_is_down_waits_then_answers_every_query(
    private_kafka: Any, tiny_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(tiny_model, tmp_path, **private_kafka.env)
    settings = deployment.settings
    port = settings.inference.metrics_port
    private_kafka.stop()
    server = _serve(deployment, b"unavailable for")  # retry's line: "serve: Kafka at ... unavailable for 0s"
    try:
        wait_for(lambda: metrics_has(port, 'streamtune_dependency_waiting{dependency="kafka"} 1.0'), 60, "kafka gauge")
        queries, sent = _queries(settings)
        time.sleep(2 * settings.kafka.retry_max_s)  # a few more backoff rounds: still alive, still waiting
        assert server.running(), server.output()[-3000:]
        assert b"serve: consuming" not in server.log.read_bytes()
        private_kafka.start()
        assert queries.flush(60) == 0  # the outage's queries reach the topic
        wait_for(lambda: b"serve: consuming" in server.log.read_bytes() or not server.running(), 120, "serve up")
        found = deployment.answers(sent, timeout_s=180, linger_s=3)  # lingering: to see duplicates that come late
        assert server.running(), server.output()[-3000:]
        assert set(sent) <= set(found), f"unanswered: {sorted(set(sent) - set(found))} of {N}"
        assert all(found[q][0]["error"] is None for q in sent), [found[q][0]["error"] for q in sent]
        twice = sum(len(found[q]) > 1 for q in sent)
        print(f"broker down at start-up: {N} queries produced, {len(set(sent) & set(found))} answered, {twice} twice")
        assert twice == 0  # serve was never interrupted once it consumed: no redelivery
        assert metrics_has(port, 'streamtune_dependency_waiting{dependency="kafka"} 0.0')
        assert "Traceback" not in server.output()
    finally:
        server.stop()
        private_kafka.start()  # idempotent: the topics are deleted on a running broker
        deployment.close()


def test_serve_started_while_weaviate_is_down_waits_then_answers_every_query(
    private_weaviate: Any, tiny_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(tiny_model, tmp_path, **private_weaviate.env)
    settings = deployment.settings
    port = settings.inference.metrics_port
    private_weaviate.stop()
    server = _serve(deployment, b"unavailable for")  # "Weaviate at http://... unavailable for 0s"
    try:
        assert "Weaviate at" in server.output()
        wait_for(lambda: metrics_has(port, 'streamtune_dependency_waiting{dependency="weaviate"} 1.0'), 60, "gauge")
        queries, sent = _queries(settings)
        assert queries.flush(15) == 0
        time.sleep(2 * settings.weaviate.retry_max_s)
        assert server.running(), server.output()[-3000:]
        private_weaviate.start()
        wait_for(lambda: b"serve: consuming" in server.log.read_bytes() or not server.running(), 120, "serve up")
        found = deployment.answers(sent, timeout_s=180, linger_s=3)
        assert server.running(), server.output()[-3000:]
        assert set(sent) <= set(found), f"unanswered: {sorted(set(sent) - set(found))} of {N}"
        assert all(found[q][0]["error"] is None and found[q][0]["citations"] for q in sent)
        twice = sum(len(found[q]) > 1 for q in sent)
        print(f"Weaviate down at start-up: {N} queries produced, {len(set(sent) & set(found))} answered, {twice} twice")
        assert twice == 0
        assert metrics_has(port, 'streamtune_dependency_waiting{dependency="weaviate"} 0.0')
        assert "Traceback" not in server.output()
    finally:
        server.stop()
        deployment.close()


def test_http_started_while_the_broker_is_down_answers_503_with_retry_after_until_it_is_back(
    private_kafka: Any, tiny_model: Path, tmp_path: Path
) -> None:
    deployment = _deployment(tiny_model, tmp_path, tiny_gateway(), **private_kafka.env)
    base = f"http://127.0.0.1:{deployment.settings.http.port}"
    private_kafka.stop()
    gateway = deployment.http_gateway()
    gateway.start(timeout_s=240)

    def get(path: str, body: Any = None) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Status, headers (lower-case names) and JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, {k.lower(): v for k, v in reply.headers.items()}, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")

    try:
        status, _, health = get("/healthz")
        assert status == 503 and health["kafka"] != "ok", health  # it says it waits, and on what
        begin = time.monotonic()
        body = {"model": "acme", "messages": [{"role": "user", "content": "What is the refund window?"}]}
        status, headers, error = get("/v1/chat/completions", body)
        assert time.monotonic() - begin < 10  # answered at once, not a hang
        assert status == 503 and error["error"]["code"] == "kafka_unavailable", (status, error)
        assert int(headers.get("retry-after", "0")) >= 1, headers
        assert gateway.running()
        private_kafka.start()
        wait_for(lambda: get("/healthz")[0] == 200, 120, "healthz 200 once the broker is back")
        assert gateway.running() and "Traceback" not in gateway.output()
    finally:
        gateway.stop()
        private_kafka.start()  # idempotent: the topics are deleted on a running broker
        deployment.close()
