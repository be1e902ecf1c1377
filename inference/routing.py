"""A query out to ``queries``, its answer (and, streamed, its text as it is generated) back from ``answers`` and
``answer-deltas``: the one routing of "produce a query, wait for its answer", used by the HTTP gateway and by
`streamtune ask`.

The promise: a router holds one idempotent producer and ONE consumer, assigned every partition of ``answers``
and ``answer-deltas`` at their end offsets when it starts (no consumer group, nothing committed), so it is
positioned before any query it sends and cannot miss an answer. Its thread hands each record to the waiter of
its ``query_id`` and drops the rest (other routers' answers, duplicates, answers that came too late). Kafka
outages at start or later are waited out with bounded backoff (``status`` says what it waits for); partitions
added to the topics later are read too.

A waiter gets ``delta`` for each piece of a streamed answer (in order: one key, one partition), then ``answer``
once; or ``failed`` when its query could not be delivered. The two topics are read apart, so an answer can
overtake the last pieces of its stream: the answer says how many pieces came before it (``Answer.pieces``), and
the router holds it until they have come, for at most ``_PIECES_GRACE_S`` (a piece lost in an outage is not
waited for longer). The answer is the text of record: a streaming caller sends what the pieces lacked.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from streamtune import logs
from streamtune.contracts import Answer, AnswerDelta, Query
from streamtune.errors import KafkaUnavailableError
from streamtune.kafka import consumer, producer
from streamtune.settings import Settings
from streamtune.topics import ANSWER_DELTAS, ANSWERS, QUERIES, topic_name

__all__ = ["BlockingWaiter", "QueryRouter", "Waiter", "unsent"]

log = logging.getLogger(__name__)

_PROBE_INTERVAL_S = 5.0
_PIECES_GRACE_S = 1.0


class Waiter(Protocol):
    def delta(self, delta: AnswerDelta) -> None: ...
    def answer(self, answer: Answer) -> None: ...
    def failed(self, error: Exception) -> None: ...


class QueryRouter:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "router",
        message_timeout_s: float | None = None,
        report_waits: bool = True,
    ) -> None:
        """``report_waits`` False: a wait for Kafka is logged at debug only (a one-shot command reports it in the
        one line it exits with)."""
        self.settings = settings
        self.name = name
        self._wait_level = logging.WARNING if report_waits else logging.DEBUG
        self.queries = topic_name(QUERIES, settings.topics)
        self.topics = (topic_name(ANSWERS, settings.topics), topic_name(ANSWER_DELTAS, settings.topics))
        timeout_ms = max(int((message_timeout_s or settings.kafka.request_timeout_s) * 1000), 1000)
        # A query still undelivered when its asker gives up would be answered for nobody: it expires then.
        self._producer = producer(settings.kafka, idempotent=True, **{"linger.ms": 1, "message.timeout.ms": timeout_ms})
        self._consumer = consumer(settings.kafka, committed_only=False, from_beginning=False)
        self._waiting: dict[str, Waiter] = {}
        self._pieces: dict[str, int] = {}  # query id -> pieces handed to its waiter
        self._held: dict[str, tuple[Answer, float]] = {}  # query id -> an answer ahead of its pieces, held until
        self._lock = threading.Lock()
        self._assigned: dict[tuple[str, int], int] = {}
        self.ready = threading.Event()
        self.status = "connecting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, query: Query, waiter: Waiter) -> None:
        """Register ``waiter`` for ``query``'s answer, then produce the query (BufferError when the local queue is
        full)."""
        with self._lock:
            self._waiting[query.query_id] = waiter

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                waiter.failed(KafkaUnavailableError(f"could not deliver the query to {self.queries}: {error}"))

        try:
            self._producer.produce(
                self.queries, key=query.query_id.encode(), value=QUERIES.encode(query), on_delivery=delivered
            )
        except BufferError:
            self.forget(query.query_id)
            raise

    def forget(self, query_id: str) -> None:
        """Its asker stopped waiting: what arrives for it from now on is dropped."""
        with self._lock:
            self._waiting.pop(query_id, None)
            self._pieces.pop(query_id, None)
            self._held.pop(query_id, None)

    def publish(self, topic: str, key: bytes, value: bytes, on_delivery: Callable[[Any, Any], None]) -> None:
        """Produce any record with this router's producer (the gateway's feedback events)."""
        self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)

    # -- the thread
    def _run(self) -> None:
        backoff = self.settings.kafka.backoff()
        attempt, reported, probed = 0, float("-inf"), time.monotonic()
        while not self._stop.is_set():
            if not self.ready.is_set():
                try:
                    self._assign()
                except (KafkaException, KafkaUnavailableError) as exc:
                    self.status = _kafka_status(exc)
                    attempt += 1
                    if time.monotonic() - reported >= self.settings.kafka.status_interval_s:
                        log.log(
                            self._wait_level,
                            "%s: cannot read %s yet (%s); retrying",
                            self.name,
                            " and ".join(self.topics),
                            exc,
                        )
                        reported = time.monotonic()
                    self._stop.wait(backoff.delay(attempt))
                    continue
                attempt, probed = 0, time.monotonic()
            try:
                message = self._consumer.poll(0.05)
                self._producer.poll(0)
                if message is not None:
                    self._take(message)
                if self._held:
                    self._release_held()
                if time.monotonic() - probed >= _PROBE_INTERVAL_S:
                    probed = time.monotonic()
                    self._probe()
            except Exception:  # this thread answers every asker of the process: it must not die
                log.exception("%s: reading answers failed; going on", self.name)
                self._stop.wait(1.0)

    def _partitions(self, timeout: float | None = None) -> list[tuple[str, int]]:
        timeout = self.settings.kafka.request_timeout_s if timeout is None else timeout
        found = []
        for topic in self.topics:
            metadata = self._consumer.list_topics(topic, timeout=timeout).topics.get(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise KafkaUnavailableError(
                    f"topic {topic} does not exist on {self.settings.kafka.bootstrap_servers}; "
                    "create it with `streamtune topics create`"
                )
            found += [(topic, p) for p in sorted(metadata.partitions)]
        return found

    def _assign(self) -> None:
        timeout = self.settings.kafka.request_timeout_s
        for topic, partition in self._partitions():
            high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)[1]
            self._assigned[(topic, partition)] = int(high)
        self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in self._assigned.items()])
        self.status = "ok"
        self.ready.set()
        log.debug("%s: reading %s from their ends", self.name, " and ".join(self.topics))

    def _probe(self) -> None:
        """Kafka's health for health checks; partitions added since start-up are read too."""
        try:  # a short look: answers are not read while it waits
            partitions = self._partitions(min(self.settings.kafka.request_timeout_s, _PROBE_INTERVAL_S))
        except (KafkaException, KafkaUnavailableError) as exc:
            if self.status == "ok":
                log.warning("%s: Kafka unreachable (%s); answers wait until it is back", self.name, exc)
            self.status = _kafka_status(exc)
            return
        if self.status != "ok":
            log.warning("%s: Kafka reachable again", self.name)
        self.status = "ok"
        new = [tp for tp in partitions if tp not in self._assigned]
        if new:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in self._assigned])
            keep = {
                (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else self._assigned[(tp.topic, tp.partition)]
                for tp in positions
            }
            self._assigned = {**keep, **dict.fromkeys(new, OFFSET_BEGINNING)}
            self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in self._assigned.items()])
            log.info("%s: the answer topics grew; reading %d partitions", self.name, len(self._assigned))

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.debug("%s: %s", self.name, error)
            return
        query_id = (message.key() or b"").decode("utf-8", "replace")
        with self._lock:
            waiter = self._waiting.get(query_id)
        if waiter is None:  # another router's, a duplicate, or one whose asker gave up
            return
        topic = message.topic() or ""
        try:
            if topic == self.topics[1]:
                waiter.delta(ANSWER_DELTAS.decode(message.value()))
                self._pieced(query_id)
                return
            answer = ANSWERS.decode(message.value())
        except Exception as exc:  # a foreign, invalid record is not ours to crash on
            log.warning(
                "%s: %s[%s]@%s: ignored an invalid record: %s",
                self.name,
                topic,
                message.partition(),
                message.offset(),
                exc,
                extra={"query_id": query_id, "source": logs.source(topic, message.partition(), message.offset())},
            )
            return
        with self._lock:
            if self._pieces.get(query_id, 0) < answer.pieces:  # ahead of its last pieces: they come first
                self._held[query_id] = (answer, time.monotonic() + _PIECES_GRACE_S)
                return
        self._answer(query_id, answer)

    def _answer(self, query_id: str, answer: Answer) -> None:
        with self._lock:
            waiter = self._waiting.get(query_id)
        self.forget(query_id)
        if waiter is not None:
            waiter.answer(answer)

    def _pieced(self, query_id: str) -> None:
        """One more piece of ``query_id`` handed over: its held answer follows once it has all of them."""
        with self._lock:
            count = self._pieces[query_id] = self._pieces.get(query_id, 0) + 1
            held = self._held.get(query_id)
        if held is not None and count >= held[0].pieces:
            self._answer(query_id, held[0])

    def _release_held(self) -> None:
        """Answers whose missing pieces did not come within the grace go out without them."""
        now = time.monotonic()
        with self._lock:
            due = [(query_id, answer) for query_id, (answer, until) in self._held.items() if until <= now]
        for query_id, answer in due:
            self._answer(query_id, answer)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._producer.flush(1)
        with contextlib.suppress(RuntimeError):
            self._consumer.close()


def unsent(answer: Answer, streamed: str) -> str:
    """What a streaming caller still owes its client once the answer (the text of record) has come: the end of
    its text that the pieces relayed so far (``streamed``) lacked, because they were lost or later than the
    grace. Nothing when the pieces already make it up or do not begin it."""
    return answer.answer[len(streamed) :] if answer.answer.startswith(streamed) else ""


def _kafka_status(exc: Exception) -> str:
    return f"unreachable: {exc}"


class BlockingWaiter:
    """A waiter for a thread that blocks on it (`ask`)."""

    def __init__(self) -> None:
        self.events: queue.Queue[AnswerDelta | Answer | Exception] = queue.Queue()

    def delta(self, delta: AnswerDelta) -> None:
        self.events.put(delta)

    def answer(self, answer: Answer) -> None:
        self.events.put(answer)

    def failed(self, error: Exception) -> None:
        self.events.put(error)
