"""The query consumer on the real stack, with the tiny model (answer quality is not the subject here)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.service import ask
from streamtune.contracts import Query, encode
from streamtune.harness import (
    Deployment,
    adapter_update,
    document_upserted,
    free_port,
    publish_examples,
    tiny_serving,
    tiny_training,
    wait_for,
)
from streamtune.kafka import producer
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, ANSWER_DELTAS, DOMAIN_EVENTS, QUERIES, topic_name
from training.publish import announce
from training.refresh import refresh
from training.registry import AdapterRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANTS = ["acme", "t1", "t2", "t3", "t4"]


@pytest.fixture
def deploy(stack: Settings, tiny_model: Path, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Deployments of their own, serving and training the tiny model (``extra``: more variables), every tenant of
    ``TENANTS`` seeded with a document."""
    made: list[Deployment] = []

    def make(**extra: str) -> Deployment:
        deployment = Deployment(
            tmp_path / f"d{len(made)}", "inf", tiny_serving(tiny_model), tiny_training(tiny_model), **extra
        )
        made.append(deployment)
        deployment.seed(TENANTS)
        return deployment

    yield make
    for deployment in made:
        deployment.close()


@pytest.fixture
def deployment(deploy: Callable[..., Deployment]) -> Deployment:
    return deploy()


def query(query_id: str, question: str = "What is the refund window?", tenant: str = "acme") -> bytes:
    return encode(Query(query_id=query_id, tenant=tenant, question=question))


def test_events_to_an_answer_citing_the_right_document(deployment: Deployment, stack: Settings) -> None:
    python = stack.flink.python_executable
    assert python is not None, "set STREAMTUNE__FLINK__PYTHON_EXECUTABLE to the Flink environment's python"
    job = deployment.ingest_job(python=str(python))
    server = deployment.query_server()
    job.start()
    try:
        docs = {
            "refund-policy": "Refunds are accepted within 30 days of delivery.",
            "shipping": "Orders ship from Lisbon within two business days.",
            "rentals": "Electric bikes rent for 450 NOK per day.",
        }
        for i, (doc_id, text) in enumerate(docs.items()):
            event = document_upserted(f"d-{i}", doc_id, text, tenant="acme", title=doc_id)
            deployment.produce(DOMAIN_EVENTS, event.key, encode(event))
        deployment.flush()
        server.start()
        deadline = time.monotonic() + 120
        while True:  # until the job has indexed the shipping document
            answer = ask(deployment.settings, "Where do orders ship from?", "acme", timeout_s=60)
            if (answer.citations and answer.citations[0].doc_id == "shipping") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert answer.error is None
        assert answer.citations[0].doc_id == "shipping"
        assert answer.citations[0].chunk_id == "shipping#0"
        assert answer.adapter_version is None  # no adapter trained yet: the base model answered
        assert {"embed", "retrieve", "generate", "total"} <= set(answer.timings_ms)
        other = ask(deployment.settings, "Where do orders ship from?", "beta", timeout_s=60)
        assert other.citations == []  # another tenant sees none of acme's chunks
    finally:
        server.stop()
        job.stop()


def _train_one(deployment: Deployment, start: int, tenant: str = "acme") -> str:
    publish_examples(deployment.settings, tenant, start, 8)
    outcome = refresh(deployment.settings, tenant, say=lambda _: None)
    assert outcome.version is not None
    return outcome.version


def test_malformed_queries_get_error_answers_and_a_pinned_unknown_adapter_is_an_error(deployment: Deployment) -> None:
    server = deployment.query_server()
    server.start()
    try:
        deployment.produce(QUERIES, "bad-1", b"{not json")
        deployment.produce(QUERIES, "bad-2", json.dumps({"schema_version": 1, "query_id": "bad-2"}).encode())
        deployment.produce(QUERIES, "pin", encode(Query(query_id="pin", tenant="acme", question="x?", adapter="v0042")))
        deployment.flush()
        found = deployment.answers({"bad-1", "bad-2", "pin"})
        assert found["bad-1"][0]["error"]["code"] == "invalid_query"
        assert "question" in found["bad-2"][0]["error"]["message"]
        assert found["pin"][0]["error"]["code"] == "unknown_adapter"
        assert server.running()  # bad input never stops the consumer
    finally:
        server.stop()


def test_hot_swap_while_queries_flow_fails_none(deployment: Deployment) -> None:
    first = _train_one(deployment, 0)
    server = deployment.query_server()
    server.start()
    sent: list[str] = []
    stop = threading.Event()

    def flow() -> None:
        out = producer(deployment.settings.kafka)
        while not stop.is_set():
            query_id = f"flow-{len(sent)}"
            out.produce(topic_name(QUERIES, deployment.settings.topics), key=query_id.encode(), value=query(query_id))
            out.flush(10)
            sent.append(query_id)
            time.sleep(0.1)

    thread = threading.Thread(target=flow)
    thread.start()
    try:
        time.sleep(3)
        second = _train_one(deployment, 100)  # promoted (or not) and announced while queries flow
        registry = AdapterRegistry(deployment.settings.adapters_dir, "acme")
        if registry.current().name != second:  # type: ignore[union-attr]
            announce(deployment.settings, registry.promote(second))
        time.sleep(6)
    finally:
        stop.set()
        thread.join()
    try:
        found = deployment.answers(set(sent), timeout_s=180)
    finally:
        server.stop()
    assert set(sent) <= set(found), f"unanswered: {sorted(set(sent) - set(found))[:5]}"
    versions = [found[q][0]["adapter_version"] for q in sent]
    assert all(found[q][0]["error"] is None for q in sent)
    assert versions[0] == first and versions[-1] == second
    assert versions == sorted(versions)  # switched once, between requests, never back


def test_a_killed_server_loses_no_query(deployment: Deployment) -> None:
    ids = [f"k-{i}" for i in range(30)]
    for query_id in ids:
        deployment.produce(QUERIES, query_id, query(query_id))
    deployment.flush()
    server = deployment.query_server()
    server.start()
    deadline = time.monotonic() + 60
    while not deployment.answers(set(ids[:3]), timeout_s=2).keys() >= set(ids[:3]) and time.monotonic() < deadline:
        time.sleep(0.2)
    server.kill()  # mid-stream, no chance to clean up
    server.start()
    try:
        found = deployment.answers(set(ids), timeout_s=180)
    finally:
        server.stop()
    assert set(ids) <= set(found)  # every query answered at least once (a repeat is harmless)


class QueryFlow:
    """A steady stream of queries on its own thread: every id it sent, in order."""

    def __init__(self, deployment: Deployment, tenant: str = "acme", interval_s: float = 0.2) -> None:
        self.deployment, self.tenant, self.interval_s = deployment, tenant, interval_s
        self.sent: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        out = producer(self.deployment.settings.kafka)
        topic = topic_name(QUERIES, self.deployment.settings.topics)
        while not self.stop.is_set():
            query_id = f"{self.tenant}-flow-{len(self.sent)}"
            out.produce(topic, key=query_id.encode(), value=query(query_id, tenant=self.tenant))
            out.poll(0)
            self.sent.append(query_id)
            time.sleep(self.interval_s)
        out.flush(120)  # the broker may have been down: what was buffered is delivered now

    def __enter__(self) -> QueryFlow:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def _metric(server_port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.fault
def test_a_broker_outage_is_invisible_to_queries_except_for_latency(
    private_kafka: Any, deploy: Callable[..., Deployment]
) -> None:
    metrics_port = free_port()
    deployment = deploy(**private_kafka.env, STREAMTUNE__INFERENCE__METRICS_PORT=str(metrics_port))
    server = deployment.query_server()
    server.start()
    try:
        with QueryFlow(deployment) as flow:
            wait_for(lambda: len(deployment.answers(set(flow.sent[:5]), timeout_s=1)) >= 5, 60, "first answers")
            private_kafka.stop()  # the broker is gone for 40 s while queries keep coming
            outage_end = time.monotonic() + 40
            while time.monotonic() < outage_end:
                assert server.running(), server.output()[-2000:]
                time.sleep(1)
            private_kafka.start()
            wait_for(lambda: len(flow.sent) > 0, 5, "flow")
            time.sleep(3)  # a few more queries after the broker is back
        sent = list(flow.sent)
        found = deployment.answers(set(sent), timeout_s=240)
        assert server.running()  # serve never exited
        assert set(sent) <= set(found), f"unanswered: {sorted(set(sent) - set(found))[:5]} of {len(sent)}"
        assert all(found[q][0]["error"] is None for q in sent)
        twice = sum(len(found[q]) > 1 for q in sent)
        print(f"broker outage: {len(sent)} queries sent, {len(set(sent) & set(found))} answered, {twice} twice")
        assert twice <= deployment.settings.inference.max_batch * 2, twice  # a redelivered batch or two at most
        assert _metric(metrics_port, "streamtune_answers_total") >= len(sent)
        assert "Kafka" in server.output() and "waiting" in server.output()  # it said what it was doing
    finally:
        server.stop()


@pytest.mark.fault
def test_a_weaviate_outage_gives_error_answers_and_serve_resumes(
    private_weaviate: Any, deploy: Callable[..., Deployment]
) -> None:
    deployment = deploy(**private_weaviate.env, STREAMTUNE__INFERENCE__RETRIEVAL_BUDGET_S="3")
    deployment.index({"refunds": "Refunds are accepted within 30 days of delivery."}, ["acme"])
    server = deployment.query_server()
    server.start()
    try:
        before = ["w-before-0", "w-before-1"]
        for query_id in before:
            deployment.produce(QUERIES, query_id, query(query_id))
        deployment.flush()
        found = deployment.answers(set(before))
        assert all(found[q][0]["citations"][0]["doc_id"] == "refunds" for q in before)
        private_weaviate.stop()
        during = [f"w-during-{i}" for i in range(4)]
        for query_id in during:
            deployment.produce(QUERIES, query_id, query(query_id))
        deployment.flush()
        found = deployment.answers(set(during), timeout_s=120)
        assert {found[q][0]["error"]["code"] for q in during} == {"retrieval_unavailable"}
        assert server.running()
        private_weaviate.start()
        after = [f"w-after-{i}" for i in range(3)]
        for query_id in after:
            deployment.produce(QUERIES, query_id, query(query_id))
        deployment.flush()
        found = deployment.answers(set(after), timeout_s=120)
        assert all(found[q][0]["error"] is None and found[q][0]["citations"] for q in after)
        all_ids = before + during + after
        every = deployment.answers(set(all_ids), timeout_s=30)
        assert sorted(every) == sorted(all_ids) and all(len(every[q]) == 1 for q in all_ids)  # none lost, none twice
    finally:
        server.stop()


def test_forged_announcements_never_change_whose_adapter_answers(deployment: Deployment) -> None:
    first = _train_one(deployment, 0)  # acme v0001, genuine
    registry = AdapterRegistry(deployment.settings.adapters_dir, "acme")
    genuine = registry.get(first)
    update = ADAPTER_UPDATES.decode(
        encode(
            adapter_update(
                "acme",
                first,
                uri=genuine.path.as_uri(),
                base_model=deployment.settings.models.base_model,
                manifest=genuine.manifest,
            )
        )
    )
    outside = deployment.work / "outside" / "beta" / "v0001"
    shutil.copytree(genuine.path, outside)
    pickled = deployment.settings.adapters_dir / "acme" / "v0009"
    shutil.copytree(genuine.path, pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not a model")
    forged = {
        "beta-takes-acme": update.model_copy(update={"tenant": "beta", "version": "v0001"}),
        "outside-store": update.model_copy(update={"tenant": "beta", "version": "v0001", "uri": outside.as_uri()}),
        "wrong-sha": update.model_copy(
            update={"version": "v0008", "manifest": genuine.manifest.model_copy(update={"version": "v0008"})}
        ),
        "pickle": update.model_copy(
            update={
                "version": "v0009",
                "uri": pickled.as_uri(),
                "manifest": genuine.manifest.model_copy(update={"version": "v0009"}),
            }
        ),
    }
    for key, value in forged.items():
        deployment.produce(ADAPTER_UPDATES, key, encode(value))
    deployment.flush()
    server = deployment.query_server()
    server.start()
    try:
        ids = {"acme-1": "acme", "beta-1": "beta", "acme-2": "acme", "beta-2": "beta"}
        for query_id, tenant in ids.items():
            deployment.produce(QUERIES, query_id, query(query_id, tenant=tenant))
        pinned = Query(query_id="acme-pin", tenant="acme", question="x?", adapter="v0009")
        deployment.produce(QUERIES, "acme-pin", encode(pinned))
        deployment.flush()
        found = deployment.answers({*ids, "acme-pin"})
        for query_id, tenant in ids.items():
            assert found[query_id][0]["adapter_version"] == (first if tenant == "acme" else None), query_id
        assert found["acme-pin"][0]["error"]["code"] == "unknown_adapter"  # the pickle was never accepted
        assert server.output().count("refused the announcement") == 4
    finally:
        server.stop()


def test_one_batch_mixes_tenants_and_adapters(deploy: Callable[..., Deployment]) -> None:
    metrics_port = free_port()
    deployment = deploy(
        STREAMTUNE__INFERENCE__MAX_BATCH="8",
        STREAMTUNE__INFERENCE__MAX_WAIT_MS="500",
        STREAMTUNE__INFERENCE__MAX_LOADED_ADAPTERS="2",
        STREAMTUNE__INFERENCE__METRICS_PORT=str(metrics_port),
    )
    versions = {tenant: _train_one(deployment, 0, tenant=tenant) for tenant in ("t1", "t2", "t3")}
    ids = {f"{tenant}-{i}": tenant for i in range(4) for tenant in ("t1", "t2", "t3", "t4")}
    for query_id, tenant in ids.items():  # queued before serve starts: they arrive as full batches
        deployment.produce(QUERIES, query_id, query(query_id, tenant=tenant))
    deployment.flush()
    server = deployment.query_server()
    server.start()
    try:
        found = deployment.answers(set(ids))
        for query_id, tenant in ids.items():
            answer = found[query_id][0]
            assert answer["error"] is None, answer
            assert answer["adapter_version"] == versions.get(tenant), query_id  # t4 has none: the base model
        steps = _metric(metrics_port, "streamtune_serve_batch_size_count")
        rows = _metric(metrics_port, "streamtune_serve_batch_size_sum")
        assert rows / steps >= 2, (rows, steps)  # answered in batches, not one by one: rows per decoding step
        assert _metric(metrics_port, "streamtune_adapter_evictions_total") >= 1  # three adapters, room for two
    finally:
        server.stop()


@pytest.mark.fault
def test_a_canary_answers_its_share_and_a_restarted_server_keeps_each_query_on_its_arm(
    deploy: Callable[..., Deployment],
) -> None:
    from streamtune.rollout import canary_arm

    deployment = deploy(STREAMTUNE__TRAINING__CANARY_PERCENT="30")
    candidate = _train_one(deployment, 0)
    registry = AdapterRegistry(deployment.settings.adapters_dir, "acme")
    assert registry.canary() is not None and registry.canary().name == candidate  # type: ignore[union-attr]
    assert registry.current() is None  # a first adapter is on trial against the base model
    ids = [f"c-{i}" for i in range(40)]
    expected = {q for q in ids if canary_arm(q, 30)}

    def round_of_answers(number: int) -> dict[str, dict[str, Any]]:
        for query_id in ids:
            deployment.produce(QUERIES, query_id, query(query_id))
        deployment.flush()
        found = deployment.answers(set(ids), timeout_s=180, at_least=number)
        assert all(len(found.get(q, [])) >= number for q in ids)
        return {q: found[q][-1] for q in ids}

    server = deployment.query_server()
    server.start()
    try:
        before = round_of_answers(1)
        server.kill()  # SIGKILL mid-canary; a new process reads the announcements again
        server.start()
        # the second round's answers follow the first's on the topic: the latest per id is the new process's
        after = round_of_answers(2)
    finally:
        server.stop()
    for answers in (before, after):
        on_canary = {q for q, a in answers.items() if a["arm"] == "canary"}
        assert on_canary == expected and 0 < len(on_canary) < len(ids)
        assert {answers[q]["adapter_version"] for q in on_canary} == {candidate}
        assert {a["adapter_version"] for q, a in answers.items() if q not in on_canary} == {None}
        assert {a["arm"] for q, a in answers.items() if q not in on_canary} == {"incumbent"}
    assert {q: a["arm"] for q, a in before.items()} == {q: a["arm"] for q, a in after.items()}


@pytest.mark.fault
def test_a_query_past_its_deadline_is_answered_without_generating(deploy: Callable[..., Deployment]) -> None:
    from datetime import UTC, datetime, timedelta

    port = free_port()
    deployment = deploy(STREAMTUNE__INFERENCE__METRICS_PORT=str(port))
    server = deployment.query_server()
    server.start()
    try:
        past = datetime.now(UTC) - timedelta(seconds=1)
        late = Query(query_id="late", tenant="acme", question="What is the refund window?", deadline=past)
        deployment.produce(QUERIES, "late", encode(late))
        deployment.produce(QUERIES, "on-time", query("on-time"))
        deployment.flush()
        found = deployment.answers({"late", "on-time"})
        assert found["late"][0]["error"]["code"] == "deadline_exceeded" and found["late"][0]["usage"] is None
        assert "generate" not in found["late"][0]["timings_ms"]  # nothing was generated for it
        assert found["on-time"][0]["error"] is None and found["on-time"][0]["usage"]["completion_tokens"] > 0
        assert _metric(port, "streamtune_deadline_exceeded_total") == 1
    finally:
        server.stop()


@pytest.mark.fault
def test_two_replicas_one_killed_while_30_queries_stream_answers_all(deploy: Callable[..., Deployment]) -> None:
    """Two serve processes in one group; one is SIGKILLed mid-stream: the other answers what it left, every
    one of the 30 queries at least once, a repeat counted as harmless."""
    deployment = deploy(STREAMTUNE__INFERENCE__MAX_NEW_TOKENS="24")
    first, second = deployment.query_server(), deployment.query_server()
    first.start()
    second.start()
    ids = [f"s-{i}" for i in range(30)]
    for query_id in ids:
        streamed = Query(query_id=query_id, tenant="acme", question="What is the refund window?", stream=True)
        deployment.produce(QUERIES, query_id, encode(streamed))
    deployment.flush()
    try:
        wait_for(lambda: len(deployment.answers(set(ids), timeout_s=1)) >= 3, 120, "the first answers")
        first.kill()  # mid-stream, no chance to clean up
        found = deployment.answers(set(ids), timeout_s=240)
    finally:
        second.stop()
    assert set(ids) <= set(found), f"unanswered: {sorted(set(ids) - set(found))[:5]}"
    assert all(found[q][0]["error"] is None for q in ids)
    repeats = sum(len(found[q]) - 1 for q in ids)
    assert repeats < len(ids)  # only what the killed one had not committed is answered again
    deltas = [json.loads(value) for value in deployment.records(ANSWER_DELTAS)]
    assert {d["query_id"] for d in deltas} >= set(ids) - {q for q in ids if not found[q][0]["answer"]}
