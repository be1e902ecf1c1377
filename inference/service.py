"""`streamtune serve`: the consumer group on ``queries``; `streamtune ask`: one question through the topics.

``serve`` batches continuously (``inference.scheduler``): up to ``inference.max_batch`` rows generate
together, a query that arrives joins the running batch at the next decoding step (when idle, the first
query is taken at once and the batch fills for at most ``inference.max_wait_ms``), and a finished row leaves
and frees its slot. A streamed query's text goes out on ``answer-deltas`` as it is generated. An answer is
delivered as soon as its row ends, and a partition's offsets are committed only up to its oldest query not yet
answered, so a killed ``serve`` loses no query (a restarted one may answer a query twice, which the contract
makes harmless and ``streamtune_answered_twice`` counts). SIGTERM stops taking queries, finishes the running
rows and exits; queries not started stay uncommitted for the next owner.

It outlives its dependencies: a broker outage or a rebalance is waited out (deliveries and commits are
retried with bounded backoff, the state is logged once per ``kafka.status_interval_s``), a Weaviate outage
gives error answers after ``inference.retrieval_budget_s``, and it resumes by itself. New adapters are read
from ``adapter-updates`` between batches: the next batch uses them.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from streamtune import logs
from streamtune.contracts import Answer, AnswerDelta, AnswerError, Query
from streamtune.errors import ContractError, KafkaUnavailableError
from streamtune.kafka import consumer, producer
from streamtune.settings import Settings
from streamtune.topics import ANSWER_DELTAS, ANSWERS, QUERIES, topic_name

__all__ = ["ask", "ask_many", "serve"]

log = logging.getLogger(__name__)

_REMEMBERED_ANSWERS = 100_000


def _query_id_of(raw: bytes | None, key: bytes | None, partition: int, offset: int) -> str:
    """The best id a malformed query can be answered under: its own field, its key, or its position."""
    try:
        value = json.loads(raw or b"")
        if isinstance(value, dict) and isinstance(value.get("query_id"), str) and value["query_id"]:
            return str(value["query_id"])
    except (ValueError, UnicodeDecodeError):
        pass
    if key:
        return key.decode("utf-8", "replace")
    return f"invalid-{partition}-{offset}"


class _Deliveries:
    """Produces answers and waits until every one is acknowledged, re-producing those the broker lost.

    The producer is idempotent, and an answer re-produced after an ambiguous failure is at worst a duplicate,
    which the contract allows; so no answer is ever given up on while ``serve`` runs.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        # No delivery timeout: an outage is waited out here, not turned into lost answers by librdkafka.
        self.producer = producer(settings.kafka, idempotent=True, **{"linger.ms": 5, "message.timeout.ms": 0})
        self.failed: list[tuple[str, bytes]] = []

    def deliver(self, answers: list[Answer], is_stopping: Any) -> bool:
        """True once every answer is acknowledged; False only when asked to stop first."""
        pending = [(a.query_id, ANSWERS.encode(a)) for a in answers]
        backoff = self.settings.kafka.backoff()
        attempt, first_failure, reported = 0, None, float("-inf")
        while True:
            self.failed = []
            for key, value in pending:
                self._produce(key, value)
            while self.producer.flush(1.0):  # librdkafka retries queued answers itself, without a deadline
                if is_stopping():
                    return False
                first_failure, reported = self._waiting(first_failure, reported, "delivering answers")
            if not self.failed:
                if first_failure is not None:
                    log.warning("serve: Kafka is back; answers delivered after %.0fs", time.monotonic() - first_failure)
                return True
            pending, attempt = list(self.failed), attempt + 1
            first_failure, reported = self._waiting(first_failure, reported, f"re-delivering {len(pending)} answers")
            if is_stopping():
                return False
            time.sleep(backoff.delay(attempt))

    def _produce(self, key: str, value: bytes) -> None:
        def report(error: Any, message: Any) -> None:
            if error is not None:
                self.failed.append((key, value))

        while True:
            try:
                self.producer.produce(self.topic, key=key.encode(), value=value, on_delivery=report)
                return
            except BufferError:  # the local queue is full during an outage: let it drain
                self.producer.poll(1.0)

    def _waiting(self, first: float | None, reported: float, what: str) -> tuple[float, float]:
        now = time.monotonic()
        first = now if first is None else first
        if now - reported >= self.settings.kafka.status_interval_s:
            log.warning("serve: Kafka unreachable for %.0fs while %s; waiting", now - first, what)
            reported = now
        return first, reported


class _Deltas:
    """Publishes the pieces of streamed answers on ``answer-deltas``: best effort, never waited for (the answer
    of record goes through ``_Deliveries``); a piece that cannot be queued is counted and dropped."""

    def __init__(self, settings: Settings, metrics: Any) -> None:
        self.topic = topic_name(ANSWER_DELTAS, settings.topics)
        self.metrics = metrics
        self.producer = producer(settings.kafka, idempotent=False, **{"linger.ms": 0})  # each piece at once

    def publish(self, query: Query, seq: int, text: str) -> None:
        delta = AnswerDelta(query_id=query.query_id, tenant=query.tenant, seq=seq, text=text)
        try:
            self.producer.produce(self.topic, key=query.query_id.encode(), value=ANSWER_DELTAS.encode(delta))
            self.metrics.deltas.inc()
        except BufferError:
            log.debug("serve: a delta of %s dropped (the local queue is full)", query.query_id)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(1.0)


class _Offsets:
    """Which consumed query records still wait for their answer: a partition is committed only up to its
    oldest record not yet answered, so a crash loses no query while answers finish out of order."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int], set[int]] = {}
        self.seen: dict[tuple[str, int], int] = {}
        self.by_query: dict[str, deque[tuple[str, int, int]]] = {}
        self.committed: dict[tuple[str, int], int] = {}

    def taken(self, query_id: str, topic: str, partition: int, offset: int) -> None:
        self.pending.setdefault((topic, partition), set()).add(offset)
        self.seen[(topic, partition)] = max(self.seen.get((topic, partition), -1), offset)
        self.by_query.setdefault(query_id, deque()).append((topic, partition, offset))

    def answered(self, query_id: str) -> None:
        positions = self.by_query.get(query_id)
        if not positions:
            return
        topic, partition, offset = positions.popleft()
        if not positions:
            del self.by_query[query_id]
        self.pending.get((topic, partition), set()).discard(offset)

    def committable(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset to commit now, where it moved since the last commit."""
        out = {}
        for where, last in self.seen.items():
            waiting = self.pending.get(where)
            offset = min(waiting) if waiting else last + 1
            if offset > self.committed.get(where, -1):
                out[where] = offset
        return out


def serve(settings: Settings, *, stop_after: int | None = None) -> int:
    """Answer queries until SIGTERM / Ctrl-C (or ``stop_after`` answers, for tests and benchmarks)."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from inference.adapters import UpdateReader
    from inference.engine import Answerer
    from inference.metrics import ServeMetrics
    from inference.scheduler import Scheduler

    inference = settings.inference
    metrics = ServeMetrics()
    if inference.metrics_port:
        metrics.serve(inference.metrics_port, inference.metrics_host)
    answerer = Answerer(settings, metrics)  # waits for Weaviate, the gauge saying so
    updates = _wait_for_kafka(settings, metrics, lambda: UpdateReader(settings))
    _take_updates(answerer, updates.poll(1.0), metrics)
    log.info(
        "serve: adapters %s; refused %s",
        answerer.book.latest or "none yet (base model)",
        answerer.book.refused or "none",
    )
    kafka_errors: list[Any] = []  # librdkafka reports an unreachable cluster here, not always through poll()

    def on_error(error: Any) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            kafka_errors.append(error)

    extra: dict[str, Any] = {"max.poll.interval.ms": int(inference.max_poll_interval_s * 1000), "error_cb": on_error}
    queries_in = consumer(settings.kafka, inference.group_id, **extra)
    queries, answers = topic_name(QUERIES, settings.topics), topic_name(ANSWERS, settings.topics)
    deliveries = _Deliveries(settings, answers)
    deltas = _Deltas(settings, metrics)
    scheduler = Scheduler(answerer, on_delta=deltas.publish)
    offsets = _Offsets()
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    queries_in.subscribe([queries])
    answered: OrderedDict[str, None] = OrderedDict()
    served = 0
    kafka_down_since: float | None = None
    reported = float("-inf")
    log.info(
        "serve: consuming %s as group %s, continuous batches of up to %d rows",
        queries,
        inference.group_id,
        inference.max_batch,
    )
    try:
        while stop_after is None or served < stop_after:
            if stopping and not scheduler.batcher.rows:
                break  # the running rows are finished first; queries not started stay uncommitted
            _take_updates(answerer, updates.poll(), metrics)
            messages: list[Any] = []
            free = scheduler.free if not stopping else 0
            if free and scheduler.busy:
                # rows are decoding: take what has arrived, never wait (the next step is due)
                messages = queries_in.consume(free, timeout=0)
            elif free:
                # idle: the first query is taken as soon as it arrives; the batch then fills for at most
                # max_wait_ms (consume() blocks until it has all it asked for or its timeout passes)
                first = queries_in.poll(0.5)
                if first is None:
                    if kafka_errors:
                        kafka_down_since, reported = _report_kafka(
                            settings, kafka_errors, kafka_down_since, reported, metrics
                        )
                    continue
                messages = [first]
                if first.error() is None and free > 1:
                    messages += queries_in.consume(free - 1, timeout=inference.max_wait_ms / 1000)
            errors = [m for m in messages if m.error() is not None]
            messages = [m for m in messages if m.error() is None]
            if errors and not messages and not scheduler.busy:
                kafka_errors.extend(m.error() for m in errors)
                kafka_down_since, reported = _report_kafka(settings, kafka_errors, kafka_down_since, reported, metrics)
                continue
            if messages and kafka_down_since is not None:
                log.warning("serve: consuming again after %.0fs", time.monotonic() - kafka_down_since)
                kafka_down_since, reported = None, float("-inf")
                metrics.waiting.labels("kafka").set(0)
            ready = _admit(scheduler, messages, offsets, inference.max_query_bytes) if messages else []
            if scheduler.batcher.rows:
                ready += scheduler.step()
            metrics.running_rows.set(len(scheduler.batcher))
            if not ready:
                continue
            if not deliveries.deliver(ready, lambda: stopping):
                break  # stopping with answers undelivered: their queries stay uncommitted
            for answer in ready:
                if answer.query_id in answered:
                    metrics.answered_twice.inc()
                answered[answer.query_id] = None
                answered.move_to_end(answer.query_id)
                if len(answered) > _REMEMBERED_ANSWERS:
                    answered.popitem(last=False)
                offsets.answered(answer.query_id)
            moved = offsets.committable()
            if moved:
                _commit(
                    queries_in,
                    [TopicPartition(t, p, o) for (t, p), o in moved.items()],
                    settings,
                    KafkaException,
                    KafkaError,
                )
                offsets.committed.update(moved)
            served += len(ready)
    except KeyboardInterrupt:
        pass
    finally:
        deltas.close()
        queries_in.close()
        updates.close()
        answerer.close()
    return 0


def _admit(scheduler: Any, messages: list[Any], offsets: _Offsets, max_query_bytes: int) -> list[Answer]:
    """Contract errors answered at once; valid queries prepared and started (``Scheduler.admit``). Every record
    is remembered under the id it will be answered by, for the commit."""
    answers: list[Answer] = []
    valid: list[Query] = []
    now = time.monotonic()
    for message in messages:
        raw = message.value()
        where = (message.topic() or "", message.partition() or 0, message.offset() or 0)
        try:
            query = QUERIES.decode(raw, max_bytes=max_query_bytes)
        except ContractError as exc:
            query_id = _query_id_of(raw, message.key(), where[1], where[2])
            answers.append(Answer(query_id=query_id, error=AnswerError(code="invalid_query", message=exc.reason)))
            log.warning("serve: an invalid query answered with invalid_query: %s", exc.reason, extra=_where(message))
            offsets.taken(query_id, *where)
            continue
        offsets.taken(query.query_id, *where)
        valid.append(query)
        with logs.context(tenant=query.tenant, query_id=query.query_id, source=logs.source(*where)):
            log.debug("serve: admitted")
    return answers + (scheduler.admit(valid, [now] * len(valid)) if valid else [])


def _wait_for_kafka(settings: Settings, metrics: Any, make: Callable[[], Any]) -> Any:
    """``make()``, a first Kafka read, with a broker down at start-up waited out as one that goes down later is:
    bounded backoff for as long as it lasts, one line per ``kafka.status_interval_s``, the gauge saying so."""
    from confluent_kafka import KafkaException

    from streamtune.kafka import while_unreachable

    waiting = metrics.waiting.labels("kafka")
    return while_unreachable(
        settings.kafka,
        "serve",
        make,
        log=log,
        transient=lambda exc: isinstance(exc, KafkaException | KeyError),
        on_wait=lambda now: waiting.set(int(now)),
    )


def _report_kafka(
    settings: Settings, errors: list[Any], down_since: float | None, reported: float, metrics: Any
) -> tuple[float, float]:
    """Say, once per ``kafka.status_interval_s``, that Kafka is unreachable and serve is waiting for it."""
    now = time.monotonic()
    down_since = down_since or now
    if now - reported >= settings.kafka.status_interval_s:
        log.warning("serve: Kafka unreachable (%s) for %.0fs; waiting", errors[-1], now - down_since)
        reported = now
    errors.clear()
    metrics.waiting.labels("kafka").set(1)
    return down_since, reported


def _take_updates(answerer: Any, updates: list[Any], metrics: Any) -> None:
    for update in updates:
        previous = answerer.book.latest.get(update.tenant)
        if not answerer.book.record(update):
            continue
        rollout = answerer.book.rollouts[update.tenant]
        if update.state == "canary":
            log.info(
                "serve: %s: canary %s answers %d%% of queries beside %s",
                update.tenant,
                update.version,
                rollout.canary_percent,
                rollout.current or "the base model",
                extra={"tenant": update.tenant},
            )
        elif update.state == "rolled_back":
            log.info("serve: %s: %s rolled back", update.tenant, update.version, extra={"tenant": update.tenant})
        if rollout.current is not None and rollout.current == update.version:
            answerer.drift.reference_from(update.tenant, update.manifest)  # what it was trained on
        if rollout.current is not None and rollout.current != previous:
            metrics.serving(update.tenant, rollout.current, previous)
            log.info("serve: %s now uses adapter %s", update.tenant, rollout.current, extra={"tenant": update.tenant})


def _where(message: Any) -> dict[str, str]:
    """The log fields naming a query record: its id as answered, and ``topic[partition]@offset``."""
    partition, offset = message.partition() or 0, message.offset() or 0
    return {
        "query_id": _query_id_of(message.value(), message.key(), partition, offset),
        "source": logs.source(message.topic(), partition, offset),
    }


def _commit(queries_in: Any, offsets: list[Any], settings: Settings, kafka_exception: Any, kafka_error: Any) -> None:
    """Commit after delivery; wait out an outage; a partition lost to a rebalance is someone else's now."""
    backoff = settings.kafka.backoff()
    attempt = 0
    while True:
        try:
            queries_in.commit(offsets=offsets, asynchronous=False)
            return
        except kafka_exception as exc:
            error = exc.args[0]
            code = error.code() if isinstance(error, kafka_error) else None
            if code in (
                kafka_error.ILLEGAL_GENERATION,
                kafka_error.UNKNOWN_MEMBER_ID,
                kafka_error.REBALANCE_IN_PROGRESS,
                kafka_error._NO_OFFSET,
            ):
                log.warning("serve: commit skipped (%s); the partition's new owner answers again", error)
                return
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning("serve: commit failed (%s); retrying", error)
            time.sleep(backoff.delay(attempt))


def ask(
    settings: Settings,
    question: str,
    tenant: str,
    *,
    top_k: int | None = None,
    adapter: str | None = None,
    timeout_s: float = 180.0,
    on_delta: Callable[[str], None] | None = None,
) -> Answer:
    """Produce one query and wait for its answer on ``answers``; ``on_delta`` (streaming) gets its text as it is
    generated."""
    return ask_many(settings, [question], tenant, top_k=top_k, adapter=adapter, timeout_s=timeout_s, on_delta=on_delta)[
        0
    ]


def ask_many(
    settings: Settings,
    questions: list[str],
    tenant: str,
    *,
    top_k: int | None = None,
    adapter: str | None = None,
    timeout_s: float = 180.0,
    on_delta: Callable[[str], None] | None = None,
) -> list[Answer]:
    """Produce one query per question at once (so that ``serve`` batches them) and wait for every answer
    (``inference.routing``); the answers in the questions' order."""
    from inference.routing import BlockingWaiter, QueryRouter, unsent

    router = QueryRouter(settings, name="ask", message_timeout_s=timeout_s, report_waits=False)
    router.start()
    deadline = time.monotonic() + timeout_s
    try:
        if not router.ready.wait(min(timeout_s, settings.kafka.request_timeout_s)):
            raise KafkaUnavailableError(
                f"cannot read the answers from Kafka at {settings.kafka.bootstrap_servers} ({router.status})"
            )
        queries = [
            Query(
                query_id=f"q-{uuid.uuid4().hex[:12]}",
                tenant=tenant,
                question=q,
                top_k=top_k,
                adapter=adapter,
                stream=on_delta is not None,
            )
            for q in questions
        ]
        waiters = [BlockingWaiter() for _ in queries]
        for query, waiter in zip(queries, waiters, strict=True):
            router.send(query, waiter)
        found = []
        for query, waiter in zip(queries, waiters, strict=True):
            streamed = ""
            while True:
                try:
                    event = waiter.events.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    raise KafkaUnavailableError(
                        f"no answer to {query.query_id} within {timeout_s:.0f}s; is `streamtune serve` running?"
                    ) from None
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, Answer):
                    if on_delta is not None and (rest := unsent(event, streamed)):
                        on_delta(rest)
                    found.append(event)
                    break
                streamed += event.text
                if on_delta is not None:
                    on_delta(event.text)
        return found
    finally:
        router.close()
