"""`streamtune train worker`: one of the processes of the consumer group ``training.worker_group_id`` that take
refresh requests off ``refresh-requests`` (published by `train watch` with ``training.distribute = "kafka"``) and
run them, one at a time.

The work is distributed by Kafka, not by a scheduler of ours. Requests are keyed by tenant, so all of a tenant's
requests are in one partition, and the group's assignment gives each partition one worker at a time, across
machines. A request's offset is committed only after its result (promoted, canary, rejected, skipped, failed or
invalid) is on ``refresh-results``. A worker that dies mid-refresh leaves its request uncommitted, and the
partition's next owner (once ``training.worker_session_timeout_s`` has passed) runs it again. That second run
makes no second version: opening the registry for writing repairs what the dead worker left (a version renamed
into place is adopted, a half-written one removed), ``ensure_announced`` announces a current version whose
announcement is missing (never twice), and a version that already reaches the request's offsets
(``RefreshRequest.up_to``, ``AdapterRegistry.covering``) ends the request as served, without training.

**Ownership through a rebalance.** A refresh takes minutes, and the group may move its partition meanwhile (a
worker joins, leaves or is declared dead). Three things keep the old owner from writing once the new one starts:

1. *The revocation fence.* The main thread keeps polling while the refresh runs in a thread of its own, so the
   group's callbacks are served on time (and ``max.poll.interval.ms`` never lapses); it alone uses the consumer.
   When the partition of the refresh in flight is revoked or lost, the callback fences that refresh. Each step that
   others see (the repair's announcement; the new version's publication together with its announcement) runs inside
   ``Ownership.step``, under a lock that the callback takes too: a revocation waits for a step in progress (a
   rename, an index write and a flush: seconds), and every later step raises ``Fenced``. The group hands the
   partition on only after the callback has returned (in the eager and in the cooperative protocol), so all the old
   owner's writes come before the new owner's first read. The fence belongs to the refresh, not to the partition:
   getting the partition back does not lift it (the request is delivered again instead).
2. *The group's generation, checked by the broker.* A worker that the group dropped without its knowing (cut off,
   frozen past the session timeout) gets no callback in time. So right before each step the worker commits the
   request's own offset again (no progress, so nothing can be lost by it; the main thread makes that commit for the
   refresh thread): the coordinator refuses a commit from a member of an earlier generation or from one it no longer
   knows (``ILLEGAL_GENERATION``, ``UNKNOWN_MEMBER_ID``), and the refresh is fenced. (The classic protocol checks
   membership, not which partitions a member owns: that is what the fence of 1. is for.) What remains is a worker
   dropped in the instant between that check and its step: the registry's lock (local disk) makes the new owner wait
   for it, its conditional writes (object store) refuse the second writer, and the next run of the request finds the
   version made.
3. *An idempotent outcome*, above: whatever a fenced or dead worker did before it stopped, the next run of the
   request repairs, announces what is missing, and trains only when no version reaches the request's offsets.

A fenced refresh is counted (``streamtune_refresh_fenced_total``) and logged, and neither its result is recorded
nor its request committed: the partition's new owner runs it.

A service like `train watch`: a Kafka outage at start-up or later is waited out with ``kafka.backoff()`` (one log
line per ``kafka.status_interval_s``; ``streamtune_dependency_waiting{dependency="kafka"}`` is 1 meanwhile, on
``training.worker_metrics_port``); a failed refresh is its request's ``failed`` result (the watcher asks again
after its backoff), never the worker's end; a record that is no valid request gets an ``invalid`` result and is
committed: never retried forever, never dropped unsaid. SIGTERM or Ctrl-C stop it after the refresh in progress;
it then leaves the group at once, so that its partitions go to the others without waiting for the session
timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streamtune import logs
from streamtune.contracts import RefreshRequest, RefreshResult
from streamtune.errors import ContractError, KafkaUnavailableError, StreamtuneError
from streamtune.kafka import admin_client, committed_end_offsets, consumer, producer, read_range, while_unreachable
from streamtune.retry import Backoff
from streamtune.settings import Settings
from streamtune.topics import REFRESH_REQUESTS, REFRESH_RESULTS, topic_name
from training.data import MissingDocs
from training.refresh import RefreshOutcome, refresh

__all__ = ["Fenced", "Ownership", "publish_request", "read_results", "work"]

log = logging.getLogger(__name__)

_NOT_A_MEMBER = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.STALE_MEMBER_EPOCH,
    }
)
"""The coordinator's refusals that mean the group does not count this worker as a member of the current
generation: whatever it owned is someone else's now."""
_REBALANCING = frozenset({KafkaError.REBALANCE_IN_PROGRESS})
_NOT_OURS = frozenset({KafkaError._STATE, KafkaError._NO_OFFSET, KafkaError._UNKNOWN_PARTITION})
"""librdkafka's own refusals of a commit for a partition it no longer has assigned (an eager rebalance)."""


class Fenced(StreamtuneError):
    """The worker may no longer write the tenant of the refresh it runs: the request's partition was revoked, or
    the group no longer counts the worker as a member. The partition's next owner runs the request."""


class Ownership:
    """Whether this worker still owns the partition of the request it runs; ``step`` wraps each step of the
    refresh that others see (``training.refresh.Guard``), ``revoke`` is called by the group's callback.

    ``commit`` commits one offset for the group, synchronously (``_Probes.commit``: on the consumer's thread)."""

    def __init__(
        self,
        commit: Callable[[TopicPartition], None],
        where: TopicPartition,
        backoff: Backoff,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._commit = commit
        self._where = TopicPartition(where.topic, where.partition, where.offset)
        self._backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._revoked = threading.Event()
        self.why = ""

    @property
    def revoked(self) -> bool:
        return self._revoked.is_set()

    def revoke(self, why: str) -> None:
        """Fence the refresh: a step in progress is waited for, every later one raises ``Fenced``."""
        with self._lock:
            self.why = why
            self._revoked.set()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        # The broker's check runs outside the lock: during a rebalance the commit may wait for the group, and the
        # group waits for our revocation callback, which takes the lock.
        self._confirm(name)
        with self._lock:
            if self._revoked.is_set():
                raise Fenced(f"stopped before {name}: {self.why}")
            yield

    def _confirm(self, name: str) -> None:
        """Commit the request's own offset again; the coordinator refuses it from a member it no longer counts."""
        attempt = 0
        while True:
            if self._revoked.is_set():
                raise Fenced(f"stopped before {name}: {self.why}")
            try:
                self._commit(self._where)
                return
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                code = error.code() if isinstance(error, KafkaError) else None
                if code in _NOT_A_MEMBER:
                    self.revoke(f"the group no longer counts this worker as a member ({error})")
                    raise Fenced(f"stopped before {name}: {self.why}") from exc
                attempt += 1
                if code not in _REBALANCING and (attempt == 1 or attempt % 10 == 0):
                    log.warning("worker: cannot confirm that it owns %s yet (%s); retrying", _at(self._where), error)
                # a rebalance: its callback tells whether the partition stays; an outage: waited out
                self._sleep(self._backoff.delay(attempt))


def _at(where: TopicPartition) -> str:
    return logs.source(where.topic, where.partition, where.offset)


class _Probes:
    """The refresh thread's commits (``Ownership``'s check), made by the main thread: a consumer is not to be
    shared across threads (confluent-kafka serializes concurrent calls, and a thread that polls in a loop starves
    the other one; its "Thread safety" notes)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._waiting: list[tuple[TopicPartition, Future[None]]] = []
        self._closed = False

    def commit(self, where: TopicPartition) -> None:
        """From the refresh thread: commit ``where`` on the main thread and wait for it (its error is raised)."""
        done: Future[None] = Future()
        with self._lock:
            if self._closed:
                raise Fenced("the worker is stopping")
            self._waiting.append((where, done))
        done.result()

    def serve(self) -> None:
        """On the main thread, between polls."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for where, done in waiting:
            try:
                self._client.commit(offsets=[where], asynchronous=False)
            except KafkaException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

    def close(self) -> None:
        """No more commits (the main loop ends): the refresh waiting for one is fenced instead of waiting forever."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for _, done in waiting:
            done.set_exception(Fenced("the worker is stopping"))


# -- what the watcher calls ------------------------------------------------------------------------------------


def publish_request(
    settings: Settings, tenant: str, up_to: Mapping[int, int], *, pending: int = 0, reason: str = ""
) -> RefreshRequest:
    """Publish a refresh request for ``tenant`` on ``refresh-requests`` (keyed by the tenant), flushed; return it.
    ``up_to``: per partition of ``training-examples``, the committed end the decision counted to."""
    request = RefreshRequest(
        request_id=f"{tenant}-{uuid.uuid4().hex[:12]}",
        tenant=tenant,
        requested_at=datetime.now(UTC),
        up_to=dict(up_to),
        pending=pending,
        reason=reason,
    )
    client = producer(settings.kafka, idempotent=True)
    client.produce(
        topic_name(REFRESH_REQUESTS, settings.topics), key=tenant.encode(), value=REFRESH_REQUESTS.encode(request)
    )
    if client.flush(settings.kafka.request_timeout_s) != 0:
        raise KafkaUnavailableError(f"could not publish the refresh request of {tenant} on refresh-requests")
    return request


def read_results(settings: Settings, since: Mapping[int, int] | None) -> tuple[list[RefreshResult], dict[int, int]]:
    """The results on ``refresh-results`` from ``since`` (per partition; None: from the end, i.e. none) up to the
    committed end, in order, and that end. Records that do not decode are skipped (only a foreign producer
    writes those)."""
    topic = topic_name(REFRESH_RESULTS, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    if since is None:
        return [], ends
    results = []
    for message in read_range(settings.kafka, topic, {p: (since.get(p, 0), end) for p, end in ends.items()}):
        try:
            results.append(REFRESH_RESULTS.decode(message.value()))
        except ContractError as exc:
            log.warning("watch: skipped a record that is no refresh result (%s)", exc, extra=_where(message))
    return results, ends


# -- the worker ------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    message: Message
    ownership: Ownership
    future: Future[RefreshOutcome]
    request: RefreshRequest
    began: float = field(default_factory=time.monotonic)

    @property
    def partition(self) -> int:
        return self.message.partition() or 0


class _Stopped(Exception):
    """SIGTERM arrived while waiting for Kafka."""


def work(
    settings: Settings,
    *,
    missing_docs: MissingDocs | None = None,
    until: Callable[[], bool] | None = None,
) -> int:
    """Take refresh requests and run them until SIGTERM / Ctrl-C (or, for tests, until ``until()`` is true,
    checked while no refresh runs). ``missing_docs`` is handed to every refresh (``training.refresh.refresh``)."""
    from training.metrics import WorkerMetrics

    training = settings.training
    metrics = WorkerMetrics()
    if training.worker_metrics_port:
        metrics.serve(training.worker_metrics_port, training.metrics_host)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    topic = topic_name(REFRESH_REQUESTS, settings.topics)
    me = f"{socket.gethostname()}:{os.getpid()}"
    try:
        _wait_for_kafka(settings, metrics, stop, lambda: _topic_exists(settings, topic))
    except (_Stopped, KeyboardInterrupt):
        signal.signal(signal.SIGTERM, previous)
        return 0
    outage = _Outage(settings, metrics)
    results = _Results(settings, metrics)
    session_ms = int(training.worker_session_timeout_s * 1000)
    group: dict[str, Any] = {
        "partition.assignment.strategy": training.worker_assignor,
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": min(3000, session_ms // 3),
        "error_cb": outage.reported,
    }
    client = consumer(settings.kafka, training.worker_group_id, **group)
    queue: deque[Message] = deque()
    owned: set[int] = set()
    job: _Job | None = None

    def assigned(_: Any, partitions: list[TopicPartition]) -> None:
        owned.update(p.partition for p in partitions)
        metrics.partitions.set(len(owned))
        log.info("worker: assigned %s partitions %s; owns %s", topic, _numbers(partitions), sorted(owned))

    def revoked(_: Any, partitions: list[TopicPartition], how: str = "revoked") -> None:
        gone = {p.partition for p in partitions}
        owned.difference_update(gone)
        metrics.partitions.set(len(owned))
        # what was fetched from them is delivered again to their next owner, from the committed offset
        kept = [m for m in queue if m.partition() not in gone]
        queue.clear()
        queue.extend(kept)
        if job is not None and job.partition in gone and not job.future.done():
            tenant = job.request.tenant
            log.warning(
                "worker: %s: partition %d %s mid-refresh; fencing it (a step in progress finishes first)",
                tenant,
                job.partition,
                how,
                extra={"tenant": tenant, "source": _at_message(job.message)},
            )
            job.ownership.revoke(f"partition {job.partition} of {topic} was {how}")
        log.info("worker: %s partitions %s; owns %s", how, _numbers(partitions), sorted(owned))

    def lost(c: Any, partitions: list[TopicPartition]) -> None:
        revoked(c, partitions, "lost")

    client.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)
    log.info(
        "worker: consuming %s as group %s (%s, session timeout %gs) as %s",
        topic,
        training.worker_group_id,
        training.worker_assignor,
        training.worker_session_timeout_s,
        me,
    )
    executor = ThreadPoolExecutor(1, thread_name_prefix="refresh")
    probes = _Probes(client)
    done = 0
    try:
        while True:
            if job is None and (stop.is_set() or (until is not None and until())):
                break
            message = client.poll(0.1 if job is not None else 0.5)
            probes.serve()
            outage.check(client, topic)
            if message is not None and message.error() is None:
                queue.append(message)
            elif message is not None:
                outage.failed(message.error())
            if job is not None and job.future.done():
                _finish(settings, client, job, results, metrics, me, stop)
                job = None
                done += 1
            while job is None and queue and not stop.is_set():
                job = _start(
                    settings, client, queue.popleft(), executor, missing_docs, probes, results, metrics, me, stop
                )
    except KeyboardInterrupt:
        stop.set()
    finally:
        probes.close()  # a refresh still running is fenced at its next step: its request stays uncommitted
        executor.shutdown(wait=True)
        client.close()  # leaves the group: the partitions go to the others now, not after the session timeout
        results.close()
        signal.signal(signal.SIGTERM, previous)
    log.info("worker: stopped after %d requests", done)
    return 0


def _start(
    settings: Settings,
    client: Any,
    message: Message,
    executor: ThreadPoolExecutor,
    missing_docs: MissingDocs | None,
    probes: _Probes,
    results: _Results,
    metrics: Any,
    me: str,
    stop: threading.Event,
) -> _Job | None:
    """The refresh of ``message``'s request, started in the refresh thread; an invalid record is answered with an
    ``invalid`` result and committed at once (None)."""
    where = TopicPartition(message.topic() or "", message.partition() or 0, message.offset() or 0)
    try:
        request = REFRESH_REQUESTS.decode(message.value())
    except ContractError as exc:
        key = (message.key() or b"").decode("utf-8", errors="replace")
        log.error("worker: a record that is no refresh request: %s", exc.reason, extra=_where(message))
        result = RefreshResult(
            request_id=_at(where),
            tenant=key,
            status="invalid",
            reason=f"{exc.error_class}: {exc.reason}",
            worker=me,
            finished_at=datetime.now(UTC),
            seconds=0.0,
        )
        metrics.refreshes.labels(key, "invalid").inc()
        if results.record(result, stop):
            _commit(client, TopicPartition(where.topic, where.partition, where.offset + 1), settings, stop)
        return None
    ownership = Ownership(probes.commit, where, settings.kafka.backoff())
    tenant = request.tenant
    log.info(
        "worker: %s: refreshing for request %s (%s)",
        tenant,
        request.request_id,
        request.reason or f"{request.pending} new examples",
        extra={"tenant": tenant, "source": _at(where)},
    )
    metrics.busy.set(1)

    def run() -> RefreshOutcome:
        with logs.context(tenant=tenant, source=_at(where)):
            return refresh(
                settings, tenant, missing_docs=missing_docs, say=log.info, up_to=request.up_to, guard=ownership.step
            )

    return _Job(message, ownership, executor.submit(run), request)


def _finish(
    settings: Settings,
    client: Any,
    job: _Job,
    results: _Results,
    metrics: Any,
    me: str,
    stop: threading.Event,
) -> None:
    """Record the refresh's result, then commit its request; a fenced refresh neither (its next owner runs it)."""
    metrics.busy.set(0)
    request, seconds = job.request, time.monotonic() - job.began
    tenant = request.tenant
    extra = {"tenant": tenant, "source": _at_message(job.message)}
    try:
        outcome = job.future.result()
    except Fenced as exc:
        metrics.fenced.labels(tenant).inc()
        log.warning("worker: %s: refresh fenced after %.1fs: %s; nothing recorded", tenant, seconds, exc, extra=extra)
        return
    except Exception as exc:  # MemoryError included: that request's failure, not the worker's
        log.error(
            "worker: %s: refresh failed (%s: %s); the watcher asks again after its backoff",
            tenant,
            type(exc).__name__,
            exc,
            exc_info=not isinstance(exc, StreamtuneError),
            extra=extra,
        )
        status, reason, version, manifest = "failed", f"{type(exc).__name__}: {exc}", None, None
    else:
        status, reason, version, manifest = outcome.status, outcome.reason, outcome.version, outcome.manifest
        log.info("worker: %s: %s %s (%s)", tenant, status, version or "", reason, extra=extra)
    metrics.refreshed(tenant, status, seconds, manifest)
    result = RefreshResult(
        request_id=request.request_id,
        tenant=tenant,
        status=status,
        reason=reason,
        version=version,
        worker=me,
        finished_at=datetime.now(UTC),
        seconds=round(seconds, 3),
    )
    if not results.record(result, stop):
        return  # stopped during an outage: the request stays uncommitted and is run again (found made)
    if job.ownership.revoked:
        # revoked after the refresh ended: its writes came first; the next owner finds the version made
        log.info("worker: %s: partition %d revoked since; its next owner commits", tenant, job.partition, extra=extra)
        return
    where = TopicPartition(job.message.topic() or "", job.partition, (job.message.offset() or 0) + 1)
    _commit(client, where, settings, stop)


class _Results:
    """The results producer: idempotent, no delivery timeout (an outage is waited out, the record kept)."""

    def __init__(self, settings: Settings, metrics: Any) -> None:
        self._settings = settings
        self._metrics = metrics
        self._topic = topic_name(REFRESH_RESULTS, settings.topics)
        self._client = producer(settings.kafka, idempotent=True, **{"message.timeout.ms": 0})

    def record(self, result: RefreshResult, stop: threading.Event) -> bool:
        """Deliver ``result``; False when SIGTERM came while Kafka was away (the request stays uncommitted)."""
        delivered: list[Any] = []

        def report(error: Any, _: Any) -> None:
            delivered.append(error)

        self._client.produce(
            self._topic, key=result.tenant.encode(), value=REFRESH_RESULTS.encode(result), on_delivery=report
        )
        kafka = self._settings.kafka
        since, reported = time.monotonic(), float("-inf")
        while True:
            self._client.flush(kafka.request_timeout_s)
            if delivered and delivered[-1] is None:
                break
            if delivered:  # with no delivery timeout only a fatal error ends up here: produce it again
                log.error("worker: the result of %s was refused (%s); producing it again", result.request_id, delivered)
                delivered.clear()
                self._client.produce(
                    self._topic, key=result.tenant.encode(), value=REFRESH_RESULTS.encode(result), on_delivery=report
                )
            self._metrics.waiting.labels("kafka").set(1)
            if time.monotonic() - reported >= kafka.status_interval_s:
                log.warning(
                    "worker: Kafka at %s unavailable for %.0fs; holding the result of %s",
                    kafka.bootstrap_servers,
                    time.monotonic() - since,
                    result.request_id,
                )
                reported = time.monotonic()
            if stop.wait(kafka.retry_max_s):
                return False
        self._metrics.waiting.labels("kafka").set(0)
        return True

    def close(self) -> None:
        self._client.flush(self._settings.kafka.request_timeout_s)


def _commit(client: Any, where: TopicPartition, settings: Settings, stop: threading.Event) -> None:
    """Commit ``where`` (the offset after the request); wait out an outage; a partition lost to a rebalance is
    its next owner's, who runs the request again and finds it served."""
    backoff = settings.kafka.backoff()
    attempt = 0
    while not stop.is_set() or attempt == 0:
        try:
            client.commit(offsets=[where], asynchronous=False)
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code in _NOT_A_MEMBER | _REBALANCING | _NOT_OURS or (isinstance(error, KafkaError) and error.fatal()):
                log.warning("worker: commit of %s skipped (%s); the partition's next owner runs it", _at(where), error)
                return
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning("worker: commit of %s failed (%s); retrying", _at(where), error)
            stop.wait(backoff.delay(attempt))


class _Outage:
    """librdkafka reports an unreachable cluster through ``error_cb``: one log line per status interval and the
    gauge while it lasts, and a line once the topic's metadata answers again."""

    def __init__(self, settings: Settings, metrics: Any) -> None:
        self._kafka = settings.kafka
        self._metrics = metrics
        self._errors: list[Any] = []
        self._since: float | None = None
        self._reported = float("-inf")
        self._checked = float("-inf")

    def reported(self, error: Any) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._errors.append(error)

    def failed(self, error: Any) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._errors.append(error)
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("worker: consumer error: %s", error)

    def check(self, client: Any, topic: str) -> None:
        now = time.monotonic()
        if self._errors:
            self._since = self._since or now
            if now - self._reported >= self._kafka.status_interval_s:
                log.warning("worker: Kafka unreachable (%s) for %.0fs; waiting", self._errors[-1], now - self._since)
                self._reported = now
            self._errors.clear()
            self._metrics.waiting.labels("kafka").set(1)
            return
        if self._since is None or now - self._checked < self._kafka.retry_max_s:
            return
        self._checked = now
        try:
            client.list_topics(topic, timeout=min(self._kafka.request_timeout_s, 5.0))
        except KafkaException:
            return
        log.warning("worker: Kafka is back after %.0fs", now - self._since)
        self._since, self._reported = None, float("-inf")
        self._metrics.waiting.labels("kafka").set(0)


def _topic_exists(settings: Settings, topic: str) -> None:
    admin = admin_client(settings.kafka)
    try:
        metadata = admin.list_topics(topic=topic, timeout=settings.kafka.request_timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailableError(f"cannot read the metadata of {topic}: {exc}") from exc
    finally:
        admin.poll(0)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise KafkaUnavailableError(
            f"topic {topic} does not exist on {settings.kafka.bootstrap_servers} (`streamtune topics create` makes it)"
        )


def _wait_for_kafka(settings: Settings, metrics: Any, stop: threading.Event, check: Callable[[], None]) -> None:
    """``check()``, waiting out a broker that is down at start-up as one that goes down later: bounded backoff
    for as long as it lasts, one line per ``kafka.status_interval_s``, the gauge saying so; SIGTERM ends it."""

    def attempt() -> None:
        if stop.is_set():
            raise _Stopped
        check()

    waiting = metrics.waiting.labels("kafka")
    while_unreachable(
        settings.kafka,
        "worker",
        attempt,
        log=log,
        stop=stop,
        on_wait=lambda now: waiting.set(int(now)),
        fix="Start Kafka (`streamtune stack up`), create the topics (`streamtune topics create`) or fix the "
        "[kafka] settings.",
    )


def _numbers(partitions: list[TopicPartition]) -> list[int]:
    return sorted(p.partition for p in partitions)


def _at_message(message: Message) -> str:
    return logs.source(message.topic(), message.partition(), message.offset())


def _where(message: Message) -> dict[str, str]:
    return {"source": _at_message(message)}
