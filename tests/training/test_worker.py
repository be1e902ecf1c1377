"""`train worker`: refreshes distributed through Kafka (``training/worker.py``).

The fence and the watcher's requests with fakes; a worker's request → result → commit cycle on the real Kafka with
the refresh faked; and the two faults on the real Kafka with the real training path (the tiny model): a worker
SIGKILLed mid-refresh beside another, and a worker whose partition is revoked mid-refresh. Counted afterwards:
versions, announcements, results and fenced refreshes.

A worker with a crash hook is a child process (``_WORKER``) that sets ``training.registry._crash_point`` (as in
``test_faults.py``), then runs ``training.worker.work``; the other worker is the real `streamtune train worker`.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import training.watch as watch_module
import training.worker as worker_module
from streamtune.cli.main import build_parser
from streamtune.contracts import RefreshRequest, RefreshResult
from streamtune.errors import ConfigError
from streamtune.harness import (
    ServiceProcess,
    free_port,
    isolated_env,
    metrics_has,
    publish_examples,
    settings_for_env,
    tiny_training,
    trainer_worker,
    wait_for,
)
from streamtune.kafka import admin_client, committed_end_offsets, create_topics, delete_topics, producer, read_range
from streamtune.retry import Backoff
from streamtune.settings import Settings, load_settings
from streamtune.topics import ADAPTER_UPDATES, REFRESH_REQUESTS, topic_name
from training.refresh import RefreshOutcome
from training.registry import open_registry
from training.worker import Fenced, Ownership, publish_request, read_results, work

# -- the fence, with a fake consumer ----------------------------------------------------------------------------


class _Client:
    """The group's synchronous commit of one offset: succeeds, or raises the given errors in turn first."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.commits: list[TopicPartition] = []

    def __call__(self, where: TopicPartition) -> None:
        self.commits.append(where)
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))


def _ownership(client: _Client) -> Ownership:
    return Ownership(client, TopicPartition("refresh-requests", 2, 7), Backoff(0.001, 0.002, None), lambda _: None)


def test_a_revocation_waits_for_the_step_in_progress_and_fences_every_step_after_it() -> None:
    client = _Client()
    ownership = _ownership(client)
    inside, release, revoked = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def publish() -> None:
        with ownership.step("publish"):
            inside.set()
            release.wait(10)
            order.append("published")

    def revoke() -> None:
        ownership.revoke("partition 2 was revoked")
        order.append("revoked")
        revoked.set()

    refresh = threading.Thread(target=publish)
    refresh.start()
    assert inside.wait(10)
    callback = threading.Thread(target=revoke)
    callback.start()
    assert not revoked.wait(0.3)  # the group's callback waits for the step in progress ...
    release.set()
    refresh.join(10)
    callback.join(10)
    assert order == ["published", "revoked"]  # ... so the old owner's writes all come before the handover
    with pytest.raises(Fenced, match="before announce: partition 2 was revoked"), ownership.step("announce"):
        pytest.fail("a fenced step ran")
    # the broker was asked before the first step (the request's own offset: no progress), never after the fence
    assert [(tp.partition, tp.offset) for tp in client.commits] == [(2, 7)]


def test_a_worker_the_group_no_longer_counts_is_fenced_by_the_brokers_check() -> None:
    rebalancing_then_fine = _Client(KafkaError.REBALANCE_IN_PROGRESS, KafkaError._TRANSPORT)
    with _ownership(rebalancing_then_fine).step("publish"):
        pass  # a rebalance or an outage: asked again until the broker answers
    assert len(rebalancing_then_fine.commits) == 3
    for code in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION):
        dropped = _ownership(_Client(code))
        with pytest.raises(Fenced, match="no longer counts this worker"), dropped.step("publish"):
            pytest.fail("a step ran for a worker the group dropped")
        assert dropped.revoked


# -- the watcher's requests, with the topics faked --------------------------------------------------------------


def test_the_watcher_asks_once_per_due_tenant_and_asks_again_after_the_backoff_of_a_failed_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training.watch")
    settings = load_settings(
        config_files=[],
        training={
            "adapters_dir": tmp_path / "adapters",
            "distribute": "kafka",
            "watch_min_examples": 5,
            "watch_minutes": 60,
            "metrics_port": 0,
            "retry_initial_s": 0.3,
        },
    )
    reads = [(Counter(acme=5, quiet=1), {0: 6})]
    monkeypatch.setattr(watch_module, "pending_counts", lambda *_: reads.pop(0) if reads else (Counter(), {0: 6}))
    monkeypatch.setattr(watch_module, "refresh", lambda *_, **__: pytest.fail("the watcher trained (distribute=kafka)"))
    asked: list[tuple[RefreshRequest, float]] = []
    answers: list[RefreshResult] = []

    def publish(settings: Settings, tenant: str, up_to: dict[int, int], **kw: Any) -> RefreshRequest:
        request = RefreshRequest(request_id=f"r{len(asked)}", tenant=tenant, requested_at=_now(), up_to=up_to, **kw)
        asked.append((request, time.monotonic()))
        status = "failed" if len(asked) == 1 else "promoted"  # the first run fails, the second succeeds
        answers.append(_result(request.request_id, tenant, status))
        return request

    def results(settings: Settings, since: dict[int, int] | None) -> tuple[list[RefreshResult], dict[int, int]]:
        if len(asked) == 1 and time.monotonic() - asked[0][1] < 0.2:
            return [], {0: 0}  # the result takes a while: the tenant is not asked again meanwhile
        found = answers[:]
        answers.clear()
        return found, {0: 0}

    monkeypatch.setattr(watch_module, "publish_request", publish)
    monkeypatch.setattr(watch_module, "read_results", results)
    start = time.monotonic()
    assert watch_module.watch(settings, poll_s=0.02, until=lambda: time.monotonic() - start > 1.5) == 0

    assert [(r.tenant, r.up_to, r.pending) for r, _ in asked] == [("acme", {0: 6}, 5)] * 2  # never "quiet" (1)
    assert asked[1][1] - asked[0][1] >= 0.3  # asked again only after the failure's backoff
    failed = [m for m in caplog.messages if m.startswith("watch: acme: refresh failed (RemoteRefreshFailed: on")]
    assert len(failed) == 1 and "MemoryError: simulated" in failed[0]
    assert sum(m.startswith("watch: acme: promoted v0001") for m in caplog.messages) == 1


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _result(request_id: str, tenant: str, status: str, version: str | None = "v0001") -> RefreshResult:
    reason = "MemoryError: simulated" if status == "failed" else "better"
    version = None if status == "failed" else version
    return RefreshResult(
        request_id=request_id,
        tenant=tenant,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        version=version,
        worker="host:1",
        finished_at=_now(),
        seconds=1.0,
    )


def test_settings_of_the_trainer_group_are_checked_at_start_and_the_command_exists() -> None:
    with pytest.raises(ConfigError, match=r"training\.distribute.*'cluster'"):
        load_settings(config_files=[], training={"distribute": "cluster"})
    with pytest.raises(ConfigError, match=r"training\.worker_session_timeout_s"):
        load_settings(config_files=[], training={"worker_session_timeout_s": 1})
    args = build_parser().parse_args(["train", "worker"])
    assert args.func.__name__ == "worker" and args.service


# -- one worker on the real Kafka, the refresh faked ------------------------------------------------------------


@pytest.fixture
def worker_topics(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    settings = settings_for_env(isolated_env(tmp_path, "worker", STREAMTUNE__TRAINING__WORKER_SESSION_TIMEOUT_S="6"))
    create_topics(settings.kafka, settings.topics)
    yield settings
    delete_topics(settings.kafka, settings.topics)


@pytest.mark.integration
def test_every_request_ends_in_one_result_recorded_before_its_offset_is_committed(
    worker_topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_topics
    requests = topic_name(REFRESH_REQUESTS, settings.topics)
    publish_request(settings, "acme", {0: 10})
    publish_request(settings, "bad", {0: 10})
    junk = producer(settings.kafka)
    junk.produce(requests, key=b"who?", value=b"not a request")
    assert junk.flush(15) == 0
    guarded: list[str] = []

    def fake_refresh(settings: Settings, tenant: str, *, guard: Any, up_to: Any, **_: Any) -> RefreshOutcome:
        assert up_to == {0: 10}
        with guard("publish"):  # the broker's generation check, against the real group: a member passes
            guarded.append(tenant)
        if tenant == "bad":
            raise MemoryError("simulated: bad's batch does not fit")
        return RefreshOutcome("promoted", "better", "v0001")

    commit = worker_module._commit
    committed_after: list[set[str]] = []

    def checked_commit(client: Any, where: TopicPartition, *args: Any) -> None:
        committed_after.append({r.request_id for r in read_results(settings, {0: 0})[0]})  # what was recorded first
        commit(client, where, *args)

    monkeypatch.setattr(worker_module, "refresh", fake_refresh)
    monkeypatch.setattr(worker_module, "_commit", checked_commit)
    assert work(settings, until=lambda: len(read_results(settings, {0: 0})[0]) >= 3) == 0

    results = read_results(settings, {0: 0})[0]
    assert sorted((r.tenant, r.status) for r in results) == [
        ("acme", "promoted"),
        ("bad", "failed"),
        ("who?", "invalid"),
    ]
    assert "MemoryError: simulated" in next(r.reason for r in results if r.tenant == "bad")
    assert sorted(guarded) == ["acme", "bad"]
    assert [len(ids) for ids in sorted(committed_after, key=len)] == [1, 2, 3]  # each commit after its result
    assert _committed(settings) == _ends(settings, requests)  # and every request committed


def _committed(settings: Settings) -> dict[int, int]:
    """The worker group's committed offsets on refresh-requests."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    topic = topic_name(REFRESH_REQUESTS, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    admin = admin_client(settings.kafka)
    request = ConsumerGroupTopicPartitions(settings.training.worker_group_id, [TopicPartition(topic, p) for p in ends])
    found = admin.list_consumer_group_offsets([request])[settings.training.worker_group_id].result(15)
    return {tp.partition: tp.offset for tp in found.topic_partitions if tp.offset >= 0}


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    """The end offsets of the partitions that hold anything."""
    return {p: end for p, end in committed_end_offsets(settings.kafka, topic).items() if end > 0}


# -- the faults: real workers, real refreshes of the tiny model --------------------------------------------------

_WORKER = """
import os, signal, sys, time
from pathlib import Path

import training.registry
from streamtune import logs
from streamtune.settings import load_settings
from training.worker import work

action, point, *files = sys.argv[1:]


def hook(name):
    if name != point:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hold":  # say that the refresh got there, then wait until the test says go on
        held, go_on = map(Path, files)
        held.touch()
        while not go_on.exists():
            time.sleep(0.05)


settings = load_settings(config_files=[])
logs.configure(settings.logging, service=False)
training.registry._crash_point = hook
sys.exit(work(settings))
"""


@dataclass
class Trainers:
    env: dict[str, str]
    settings: Settings
    work: Path
    started: list[subprocess.Popen[str] | ServiceProcess]

    def publish(self, tenant: str, count: int) -> None:
        publish_examples(self.settings, tenant, 0, count)

    def hooked(self, action: str, point: str, *files: Path, **env: str) -> tuple[subprocess.Popen[str], Path]:
        """A worker that dies (kill) or waits (hold) at the crash point ``point``, and its log."""
        log = self.work / f"worker-{action}-{point}.log"
        with log.open("w") as out:
            child = subprocess.Popen(
                [sys.executable, "-c", _WORKER, action, point, *map(str, files)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **self.env, **env},
            )
        self.started.append(child)
        return child, log

    def cli(self) -> ServiceProcess:
        """`streamtune train worker`, started."""
        worker = trainer_worker(self.work / "logs", self.env)
        self.started.append(worker)
        worker.start(timeout_s=120)
        return worker

    def announcements(self, tenant: str) -> list[str]:
        topic = topic_name(ADAPTER_UPDATES, self.settings.topics)
        ends = committed_end_offsets(self.settings.kafka, topic)
        updates = [ADAPTER_UPDATES.decode(m.value()) for m in read_range(self.settings.kafka, topic, {0: (0, ends[0])})]
        return [u.version for u in updates if u.tenant == tenant]

    def results(self) -> list[RefreshResult]:
        return read_results(self.settings, {0: 0})[0]

    def versions(self, tenant: str) -> list[tuple[str, str]]:
        return [(v.name, v.status) for v in open_registry(self.settings, tenant).versions()]


@pytest.fixture
def trainers(
    stack: Settings,
    tiny_model: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Trainers]]:
    """A deployment of its own whose refreshes train the tiny model in seconds (``harness.tiny_training``),
    with a worker group that declares a dead member after 6 s (the broker's least); ``extra``: more variables."""
    made: list[Trainers] = []

    def make(**extra: str) -> Trainers:
        env = isolated_env(
            tmp_path,
            "trainers",
            **{
                **tiny_training(tiny_model),
                "STREAMTUNE__TRAINING__WORKER_SESSION_TIMEOUT_S": "6",
                "STREAMTUNE__KAFKA__STATUS_INTERVAL_S": "2",
                **extra,
            },
        )
        deployment = Trainers(env, settings_for_env(env), tmp_path, [])
        create_topics(deployment.settings.kafka, deployment.settings.topics)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        for process in deployment.started:
            if isinstance(process, ServiceProcess):
                process.stop(grace_s=30)
            elif process.poll() is None:
                process.kill()
                process.wait(30)
        delete_topics(deployment.settings.kafka, deployment.settings.topics)


def _owns(log: Path) -> list[int] | None:
    """The partitions a worker's log last said it owns (None: none said yet)."""
    found = re.findall(r"owns \[([\d, ]*)\]", log.read_text(errors="replace")) if log.exists() else []
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else None


def _one_per_partition(partitions: int) -> list[str]:
    """Tenant names whose requests land on ``partitions`` different partitions: librdkafka's default partitioner
    (consistent_random) puts a keyed record on CRC32(key) modulo the partition count."""
    chosen: dict[int, str] = {}
    for i in itertools.count():
        name = f"tenant{i}"
        chosen.setdefault(zlib.crc32(name.encode()) % partitions, name)
        if len(chosen) == partitions:
            return [chosen[p] for p in range(partitions)]
    raise AssertionError("unreachable")


# Where the killed worker dies in its first refresh: the version renamed into place but not listed (the next run
# adopts it and announces it), or announced but neither recorded nor committed (a naive rerun would train a second
# version and announce again). The second case keeps its adapters in the stack's S3 server, as workers on several
# machines do (each run under a prefix of its own in the bucket).
_KILLED_AT = [("renamed", "local"), ("announced", "s3")]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.parametrize(("point", "store"), _KILLED_AT)
def test_two_workers_one_killed_mid_refresh_leave_four_tenants_one_version_and_one_announcement_each(
    trainers: Callable[..., Trainers], point: str, store: str
) -> None:
    adapters = {"STREAMTUNE__TRAINING__ADAPTERS_DIR": f"s3://streamtune-adapters/workers-{uuid.uuid4().hex[:8]}/"}
    world = trainers(STREAMTUNE__TOPICS__PARTITIONS="4", **(adapters if store == "s3" else {}))
    tenants = _one_per_partition(4)
    doomed, doomed_log = world.hooked("kill", point)
    other = world.cli()
    wait_for(lambda: len(_owns(doomed_log) or []) == len(_owns(other.log) or []) == 2, 120, "two partitions each")
    assert sorted((_owns(doomed_log) or []) + (_owns(other.log) or [])) == [0, 1, 2, 3]
    for tenant in tenants:
        world.publish(tenant, 8)
    watcher = world.settings.model_copy(
        update={
            "training": world.settings.training.model_copy(
                update={"distribute": "kafka", "watch_min_examples": 8, "watch_minutes": 60}
            )
        }
    )
    deadline = time.monotonic() + 300

    def served() -> bool:
        return {r.tenant for r in world.results()} >= set(tenants) or time.monotonic() > deadline

    assert watch_module.watch(watcher, poll_s=0.3, until=served) == 0

    assert doomed.wait(30) == -signal.SIGKILL, doomed_log.read_text()[-3000:]
    for tenant in tenants:
        assert world.versions(tenant) == [("v0001", "promoted")], tenant
        assert world.announcements(tenant) == ["v0001"], tenant  # a count: the list would show a second one
    results = world.results()
    assert Counter(r.tenant for r in results) == Counter(tenants)  # one result each: the killed worker wrote none
    (rerun,) = [r for r in results if r.status == "skipped"]  # the killed worker's request, run by the other
    assert rerun.reason.startswith("already made as v0001 (promoted)"), rerun.reason
    other_log = other.output()
    assert ("repaired: adopted v0001" in other_log) == (point == "renamed")  # the registry's repair, logged
    assert ("repairing: the registry's current is v0001" in other_log) == (point == "renamed")  # then announced
    assert {r.worker.rsplit(":", 1)[1] for r in results} == {str(other.process.pid)}  # type: ignore[union-attr]
    assert sorted(_owns(other.log) or []) == [0, 1, 2, 3]  # the dead worker's partitions came to it
    requests = topic_name(REFRESH_REQUESTS, world.settings.topics)
    assert _committed(world.settings) == _ends(world.settings, requests)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.fault
def test_a_worker_whose_partition_is_revoked_mid_refresh_announces_nothing_and_counts_it(
    trainers: Callable[..., Trainers],
) -> None:
    # One partition, and an eager assignor: a worker that joins makes the group revoke it from the first.
    world = trainers(STREAMTUNE__TOPICS__PARTITIONS="1", STREAMTUNE__TRAINING__WORKER_ASSIGNOR="range")
    port = free_port()
    held, go_on = world.work / "held", world.work / "go-on"
    first, first_log = world.hooked("hold", "trained", held, go_on, STREAMTUNE__TRAINING__WORKER_METRICS_PORT=str(port))
    wait_for(lambda: _owns(first_log) == [0], 120, "the first worker owning the partition")
    world.publish("acme", 8)
    publish_request(world.settings, "acme", _example_ends(world.settings), pending=8, reason="test")
    wait_for(held.exists, 180, "the first worker's candidate trained, nothing published yet")
    world.cli()  # joins: the partition is revoked from the first worker mid-refresh
    wait_for(lambda: "partition 0 revoked mid-refresh" in first_log.read_text(), 60, "the revocation")
    go_on.touch()

    wait_for(lambda: world.results(), 180, "the request's result")
    wait_for(lambda: "refresh fenced" in first_log.read_text(), 30, "the fenced refresh ending")
    assert metrics_has(port, 'streamtune_refresh_fenced_total{tenant="acme"} 1.0'), first_log.read_text()[-3000:]
    (result,) = world.results()
    # trained and published by the request's next run: the fenced one left no version behind (else "skipped")
    assert (result.tenant, result.status, result.version) == ("acme", "promoted", "v0001"), result
    assert world.versions("acme") == [("v0001", "promoted")]
    assert world.announcements("acme") == ["v0001"]
    assert "stopped before publish: partition 0 of" in first_log.read_text()  # at the step, not after it
    assert first.poll() is None  # the fenced worker lives on


def _example_ends(settings: Settings) -> dict[int, int]:
    from streamtune.topics import TRAINING_EXAMPLES

    return committed_end_offsets(settings.kafka, topic_name(TRAINING_EXAMPLES, settings.topics))


@pytest.mark.integration
def test_a_worker_started_while_kafka_is_down_waits_says_so_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = isolated_env(
        tmp_path,
        "down",
        STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # nothing listens there
        STREAMTUNE__KAFKA__REQUEST_TIMEOUT_S="2",
        STREAMTUNE__TRAINING__WORKER_METRICS_PORT=str(port),
    )
    worker = ServiceProcess(["train", "worker"], b"unavailable for", tmp_path / "logs", env)
    worker.start(timeout_s=120)  # retry's line: "worker: Kafka at ... unavailable for 0s ..."
    try:
        wait_for(lambda: metrics_has(port, 'streamtune_dependency_waiting{dependency="kafka"} 1.0'), 60, "the gauge")
        assert worker.running()
        assert b"worker: consuming" not in worker.log.read_bytes()
    finally:
        worker.stop(grace_s=30)
    assert worker.process is not None and worker.process.returncode == 0, worker.output()[-2000:]
    assert "Traceback" not in worker.output()
