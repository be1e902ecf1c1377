"""`streamtune serve`: the consumer group on ``queries``; `streamtune ask`: one question through the topics.

An answer is produced, and its delivery confirmed, before the query's offset is committed, so a killed
``serve`` loses no query (a restarted one may answer a query twice, which the contract makes harmless).
New adapters are read from ``adapter-updates`` between requests: no restart, no failed request.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from streamtune.contracts import AdapterUpdate, Answer, AnswerError, Query, decode, encode
from streamtune.errors import ContractError, KafkaUnavailableError
from streamtune.kafka import client_config
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, ANSWERS, QUERIES, topic_name

__all__ = ["ask", "serve"]


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


class _Updates:
    """A reader of ``adapter-updates`` from the beginning, polled without blocking between requests."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        topic = topic_name(ADAPTER_UPDATES, settings.topics)
        self.consumer = Consumer(
            client_config(
                settings.kafka,
                **{
                    "group.id": f"adapter-reader-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                },
            )
        )
        partitions = self.consumer.list_topics(topic, timeout=settings.kafka.request_timeout_s).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def poll(self, timeout_s: float = 0.0) -> list[AdapterUpdate]:
        updates = []
        while (message := self.consumer.poll(timeout_s)) is not None:
            if message.error() is None:
                with contextlib.suppress(ContractError):  # a foreign, invalid announcement is not ours
                    updates.append(decode(message.value() or b"", AdapterUpdate))
            timeout_s = 0.0
        return updates


def serve(settings: Settings, *, say: Callable[[str], None] = print, stop_after: int | None = None) -> int:
    """Answer queries until SIGTERM / Ctrl-C (or ``stop_after`` answers, for tests and benchmarks)."""
    from confluent_kafka import Consumer, Producer

    from inference.engine import Answerer

    answerer = Answerer(settings)
    updates = _Updates(settings)
    for update in updates.poll(1.0):
        answerer.book.record(update)
    say(f"serve: adapters {answerer.book.latest or 'none yet (base model)'}; ignored {answerer.book.ignored or 'none'}")
    consumer = Consumer(
        client_config(
            settings.kafka,
            **{
                "group.id": settings.inference.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            },
        )
    )
    producer = Producer(client_config(settings.kafka, **{"enable.idempotence": True, "linger.ms": 0}))
    queries, answers = topic_name(QUERIES, settings.topics), topic_name(ANSWERS, settings.topics)
    consumer.subscribe([queries])
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    served = 0
    say(f"serve: consuming {queries} as group {settings.inference.group_id}")
    try:
        while not stopping and (stop_after is None or served < stop_after):
            for update in updates.poll():
                if answerer.book.record(update):
                    say(f"serve: {update.tenant} now uses adapter {update.version}")
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            raw = message.value()
            try:
                query = decode(raw or b"", Query, max_bytes=settings.inference.max_query_bytes)
                answer = answerer.answer(query)
            except ContractError as exc:
                query_id = _query_id_of(raw, message.key(), message.partition() or 0, message.offset() or 0)
                answer = Answer(query_id=query_id, error=AnswerError(code="invalid_query", message=exc.reason))
            producer.produce(answers, key=answer.query_id.encode(), value=encode(answer))
            if producer.flush(settings.kafka.request_timeout_s) != 0:
                raise KafkaUnavailableError(f"answer to {answer.query_id} not delivered; its query stays uncommitted")
            consumer.commit(message=message, asynchronous=False)
            served += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        answerer.close()
    return 0


def ask(
    settings: Settings,
    question: str,
    tenant: str,
    *,
    top_k: int | None = None,
    adapter: str | None = None,
    timeout_s: float = 180.0,
) -> Answer:
    """Produce one query and wait for its answer on ``answers``."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    answers = topic_name(ANSWERS, settings.topics)
    consumer = Consumer(
        client_config(settings.kafka, **{"group.id": f"ask-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    )
    partitions = consumer.list_topics(answers, timeout=settings.kafka.request_timeout_s).topics[answers].partitions
    ends = [
        TopicPartition(answers, p, consumer.get_watermark_offsets(TopicPartition(answers, p))[1]) for p in partitions
    ]
    consumer.assign(ends)  # positioned before the query is sent: the answer cannot slip past
    query = Query(query_id=f"q-{uuid.uuid4().hex[:12]}", tenant=tenant, question=question, top_k=top_k, adapter=adapter)
    producer = Producer(client_config(settings.kafka))
    producer.produce(topic_name(QUERIES, settings.topics), key=query.query_id.encode(), value=encode(query))
    producer.flush(settings.kafka.request_timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None and message.key() == query.query_id.encode():
                return decode(message.value() or b"", Answer)
    finally:
        consumer.close()
    raise KafkaUnavailableError(
        f"no answer to {query.query_id} within {timeout_s:.0f}s; is `streamtune serve` running?"
    )
