"""`streamtune serve`: the consumer group on ``queries``; `streamtune ask`: one question through the topics.

An answer is produced, and its delivery confirmed, before the query's offset is committed, so a killed
``serve`` loses no query (a restarted one may answer a query twice, which the contract makes harmless).
New adapters are read from ``adapter-updates`` between requests: no restart, no failed request.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import uuid
from typing import Any

from streamtune.contracts import Answer, AnswerError, Query
from streamtune.errors import ContractError, KafkaUnavailableError
from streamtune.kafka import consumer, producer
from streamtune.settings import Settings
from streamtune.topics import ANSWERS, QUERIES, topic_name

__all__ = ["ask", "serve"]

log = logging.getLogger(__name__)


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


def serve(settings: Settings, *, stop_after: int | None = None) -> int:
    """Answer queries until SIGTERM / Ctrl-C (or ``stop_after`` answers, for tests and benchmarks)."""
    from inference.adapters import UpdateReader
    from inference.engine import Answerer

    answerer = Answerer(settings)
    updates = UpdateReader(settings)
    for update in updates.poll(1.0):
        answerer.book.record(update)
    log.info(
        "serve: adapters %s; ignored %s",
        answerer.book.latest or "none yet (base model)",
        answerer.book.ignored or "none",
    )
    queries_in = consumer(settings.kafka, settings.inference.group_id)
    answers_out = producer(settings.kafka, idempotent=True, **{"linger.ms": 0})
    queries, answers = topic_name(QUERIES, settings.topics), topic_name(ANSWERS, settings.topics)
    queries_in.subscribe([queries])
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    served = 0
    log.info("serve: consuming %s as group %s", queries, settings.inference.group_id)
    try:
        while not stopping and (stop_after is None or served < stop_after):
            for update in updates.poll():
                if answerer.book.record(update):
                    log.info("serve: %s now uses adapter %s", update.tenant, update.version)
            message = queries_in.poll(0.2)
            if message is None or message.error() is not None:
                continue
            raw = message.value()
            try:
                query = QUERIES.decode(raw, max_bytes=settings.inference.max_query_bytes)
                answer = answerer.answer(query)
            except ContractError as exc:
                query_id = _query_id_of(raw, message.key(), message.partition() or 0, message.offset() or 0)
                answer = Answer(query_id=query_id, error=AnswerError(code="invalid_query", message=exc.reason))
            answers_out.produce(answers, key=answer.query_id.encode(), value=ANSWERS.encode(answer))
            if answers_out.flush(settings.kafka.request_timeout_s) != 0:
                raise KafkaUnavailableError(f"answer to {answer.query_id} not delivered; its query stays uncommitted")
            queries_in.commit(message=message, asynchronous=False)
            served += 1
    except KeyboardInterrupt:
        pass
    finally:
        queries_in.close()
        updates.close()
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
    from confluent_kafka import TopicPartition

    answers = topic_name(ANSWERS, settings.topics)
    reader = consumer(settings.kafka, committed_only=False)
    partitions = reader.list_topics(answers, timeout=settings.kafka.request_timeout_s).topics[answers].partitions
    ends = [TopicPartition(answers, p, reader.get_watermark_offsets(TopicPartition(answers, p))[1]) for p in partitions]
    reader.assign(ends)  # positioned before the query is sent: the answer cannot slip past
    query = Query(query_id=f"q-{uuid.uuid4().hex[:12]}", tenant=tenant, question=question, top_k=top_k, adapter=adapter)
    sender = producer(settings.kafka)
    sender.produce(topic_name(QUERIES, settings.topics), key=query.query_id.encode(), value=QUERIES.encode(query))
    sender.flush(settings.kafka.request_timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is None and message.key() == query.query_id.encode():
                return ANSWERS.decode(message.value())
    finally:
        reader.close()
    raise KafkaUnavailableError(
        f"no answer to {query.query_id} within {timeout_s:.0f}s; is `streamtune serve` running?"
    )
