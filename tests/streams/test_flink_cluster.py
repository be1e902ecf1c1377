"""Scale-out on a real Flink cluster: the ingest job on a standalone session cluster (a jobmanager and two
one-slot taskmanagers on 127.0.0.1, started by the stack) with parallelism 2.

The cluster is private to the test (its own stack home and free ports); Kafka and Weaviate are the shared
local stack, isolated by uuid-named topics, collection and consumer group. A taskmanager is SIGKILLed
mid-stream and restarted by `stack up`; counting proves that nothing was lost or duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval import connect
from retrieval.store import ChunkStore
from streamtune.contracts import encode
from streamtune.errors import StackError
from streamtune.harness import document_upserted, isolated_env, qa_recorded, settings_for_env, wait_for
from streamtune.kafka import committed_end_offsets, create_topics, delete_topics, producer, read_range
from streamtune.settings import Settings, load_settings
from streamtune.stack import Stack
from streamtune.stack.flink_cluster import FlinkJobManager
from streamtune.stack.flink_jobs import cancel_job, job_status, submit_job
from streamtune.stack.manager import components
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name

TENANT = "cluster"


def test_the_cluster_is_listed_only_when_enabled_and_binds_only_localhost(tmp_path: Path) -> None:
    import yaml

    pytest.importorskip("pyflink", reason="the configuration starts from the Flink distribution's own")
    names = [c.name for c in components(load_settings(config_files=[]))]
    assert not [n for n in names if n.startswith("flink-") and n != "flink-connector"]
    settings = load_settings(
        config_files=[], flink={"cluster": True, "taskmanagers": 3, "rest_port": 18181}, stack={"home": tmp_path}
    )
    cluster = [c for c in components(settings) if c.name not in names]
    assert [c.name for c in cluster] == [
        "flink-jobmanager",
        "flink-taskmanager-1",
        "flink-taskmanager-2",
        "flink-taskmanager-3",
    ]
    configs = []
    for component in cluster:
        component.prepare()
        configs.append(yaml.safe_load((tmp_path / component.name / "conf" / "config.yaml").read_text()))
    for config in configs:
        for key in ("jobmanager.rpc.address", "jobmanager.bind-host", "rest.address", "rest.bind-address"):
            assert config[key] == "127.0.0.1", key
        for key in ("taskmanager.host", "taskmanager.bind-host"):
            assert config[key] == "127.0.0.1", key
        assert config["rest.port"] == 18181
        assert "--add-opens" in config["env.java.opts.all"]  # the shipped JVM flags Java 17 needs are kept
    assert len({c["taskmanager.resource-id"] for c in configs[1:]}) == 3
    assert len({c["io.tmp.dirs"] for c in configs}) == 4


def test_without_pyflink_the_cluster_names_the_flink_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streamtune.stack.flink_cluster.flink_home", lambda: None)
    manager = FlinkJobManager(load_settings(config_files=[], flink={"cluster": True}))
    assert not manager.installed()
    with pytest.raises(StackError) as info:
        manager.check_tools()
    assert info.value.component == "flink-jobmanager"
    assert ".venv/flink/bin/streamtune" in info.value.fix


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cluster(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A jobmanager and two one-slot taskmanagers of the stack's own, on free ports, stopped afterwards."""
    settings = stack.model_copy(
        update={
            "flink": stack.flink.model_copy(
                update={
                    "cluster": True,
                    "rest_port": _free_port(),
                    "rpc_port": _free_port(),
                    "cluster_metrics_port": 0,  # not the subject here; the shared stack's may be running
                    "taskmanagers": 2,
                    "task_slots": 1,
                    # small: two cores and other tests share this machine
                    "taskmanager_memory": "1280m",
                    "jobmanager_memory": "768m",
                }
            ),
            "stack": stack.stack.model_copy(update={"home": tmp_path / "stack"}),
        }
    )
    try:
        statuses = Stack(settings, say=lambda _: None).up()
        assert all(s.ok for s in statuses), statuses
        yield settings
    finally:
        Stack(settings, say=lambda _: None).down()  # only the cluster: Kafka and Weaviate are not this stack's


def _states(settings: Settings) -> dict[str, str]:
    return {s.name: s.state for s in Stack(settings, say=lambda _: None).status()}


def _examples(settings: Settings) -> list[dict[str, Any]]:
    """Every committed training example (read_committed, up to the last stable offset)."""
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    return [
        json.loads(m.value() or b"") for m in read_range(settings.kafka, topic, {p: (0, e) for p, e in ends.items()})
    ]


def _examples_once_complete(settings: Settings, expected: int) -> list[dict[str, Any]] | None:
    """The committed examples once ``expected`` distinct ids are among them (duplicates included), else None."""
    found = _examples(settings)
    return found if len({e["example_id"] for e in found}) >= expected else None


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.fault
def test_a_killed_taskmanager_loses_and_duplicates_nothing(cluster: Settings, tmp_path: Path) -> None:
    env = isolated_env(
        tmp_path,
        "cluster",
        STREAMTUNE__FLINK__CHECKPOINT_INTERVAL_MS="1000",
        STREAMTUNE__EMBEDDING__BATCH_SIZE="16",
        STREAMTUNE__EMBEDDING__TORCH_THREADS="1",  # two Python workers on two cores
    )
    deployment = settings_for_env(env)
    create_topics(deployment.kafka, deployment.topics)
    events = producer(deployment.kafka)
    client = connect(deployment.weaviate)
    store = ChunkStore(client, deployment)
    job_id: str | None = None
    total = 200

    def publish(first: int, last: int) -> None:
        topic = topic_name(DOMAIN_EVENTS, deployment.topics)
        for i in range(first, last):
            doc = document_upserted(f"d-{i}", f"doc-{i:03d}", f"Cluster document number {i}.", tenant=TENANT)
            qa = qa_recorded(f"q-{i}", f"Question {i}?", f"Answer {i}.", tenant=TENANT)
            events.produce(topic, key=f"{TENANT}:doc-{i:03d}".encode(), value=encode(doc))
            events.produce(topic, key=qa.event_id.encode(), value=encode(qa))
        assert events.flush(15) == 0

    try:
        job_id = submitted = submit_job(cluster, parallelism=2, env=env)
        running = wait_for(
            lambda: (status := job_status(cluster, submitted)).running and status, 180, "the job running on the cluster"
        )
        assert running.parallelism == 2

        publish(0, total // 2)
        wait_for(lambda: store.count(TENANT) > 0, 300, "the first documents indexed")

        # A crash of one taskmanager (and its Python worker) while the first half is in flight.
        pid = next(s.pid for s in Stack(cluster, say=lambda _: None).status() if s.name == "flink-taskmanager-2")
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: _states(cluster)["flink-taskmanager-2"] == "exited", 60, "the killed taskmanager reported")
        publish(total // 2, total)
        # Both slots are needed at parallelism 2: the job waits (restarting) until `stack up` brings it back.
        Stack(cluster, say=lambda _: None).up()
        assert set(_states(cluster).values()) <= {"healthy", "installed"}

        wait_for(lambda: store.count(TENANT) >= total, 300, f"{total} documents indexed after the restart")
        examples = wait_for(
            lambda: _examples_once_complete(deployment, total), 180, f"{total} training examples committed"
        )
        status = job_status(cluster, submitted)
        assert status.running and status.failures >= 1  # the kill did hit the job, which recovered

        # Exactly once: one chunk per document, and every example once.
        assert store.count(TENANT) == total
        assert store.missing(TENANT, {f"doc-{i:03d}" for i in range(total)}) == set()
        ids = [e["example_id"] for e in examples]
        assert len(ids) == total and len(set(ids)) == total
    finally:
        if job_id is not None:
            cancel_job(cluster, job_id)
        store.drop()
        client.close()
        delete_topics(deployment.kafka, deployment.topics)
