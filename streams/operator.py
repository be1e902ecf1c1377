"""The ingest job's keyed operator: Flink state, timers, outputs and counters around ``streams.indexer``.

Keyed by partition, ``IndexBatches`` buffers records in Flink state and hands them to a pipeline of
``_IN_FLIGHT`` batches (``streams.pipeline``) on ``embedding.batch_size`` records or ``embedding.flush_ms``
milliseconds, whichever comes first. A batch stays in Flink state (``in_flight``) until its outputs are
emitted, so a checkpoint taken meanwhile holds it and a restart runs it again (Weaviate's writes are
idempotent); a partition's outputs come out in the stream's order. The batch work itself (plan, encode, write
under the retry policy, context, the record-by-record fallback) is ``BatchIndexer``'s, free of Flink.

A checkpoint restores into this operator while its place in the graph (``streams.job.run``) and the names and
types of its state descriptors stay as they are: ``buffer``, ``size``, ``timer``, ``in_flight``, ``wake``.
Their values are pickled tuples and lists of bytes and ints, never an object of this code.

Imports PyFlink: only the job, in the Flink environment, imports this module.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from contextlib import nullcontext
from functools import partial
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from streams.flink import current_metrics_scope
from streams.indexer import BatchIndexer
from streams.pipeline import Pipeline
from streams.processing import BatchResult, RawRecord
from streamtune.contracts import encode
from streamtune.settings import Settings

__all__ = ["DEAD_LETTER_CLASSES", "IndexBatches"]

log = logging.getLogger(__name__)

# Dead-letter counters are registered when the operator opens; a class not listed counts as "Other".
DEAD_LETTER_CLASSES = (
    "PayloadTooLarge",
    "NotUtf8",
    "MalformedJson",
    "InvalidMessage",
    "UnsupportedSchemaVersion",
    "UnknownEventType",
    "InvalidEvent",
    "TextTooLarge",
    "IndexRejected",
    "InternalError",
    "Other",
)
_PII_KINDS = ("email", "iban", "card", "phone")
# Batches the operator runs at once (streams.pipeline): one is written while the next is planned and encoded.
_IN_FLIGHT = 2

Buffered = tuple[Any, ...]
"""A record as Flink state holds it: (key, value, partition, offset)."""


class IndexBatches(KeyedProcessFunction):
    def __init__(self, settings: Settings, topic: str, dlq_tag: OutputTag) -> None:
        self.settings = settings
        self.topic = topic
        self.dlq_tag = dlq_tag

    def open(self, runtime_context: RuntimeContext) -> None:
        self.indexer = BatchIndexer(self.settings)
        # A batch's whole work runs in the pipeline, so that the next batch is planned and encoded while this
        # one is written; its batches are those of ``in_flight``, in order.
        self.pipeline = Pipeline(_IN_FLIGHT, "streamtune-batch")
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("buffer", Types.PICKLED_BYTE_ARRAY()))
        self.size = runtime_context.get_state(ValueStateDescriptor("size", Types.INT()))
        self.timer = runtime_context.get_state(ValueStateDescriptor("timer", Types.LONG()))
        # batches handed to the pipeline whose results are not yet emitted: [records], oldest first; a
        # checkpoint keeps them, and a restart runs them again (Weaviate's writes are idempotent)
        self.in_flight = runtime_context.get_state(ValueStateDescriptor("in_flight", Types.PICKLED_BYTE_ARRAY()))
        self.wake = runtime_context.get_state(ValueStateDescriptor("wake", Types.LONG()))  # the latest wake-up
        metrics = runtime_context.get_metrics_group()
        self.counters = {
            name: metrics.counter(name)
            for name in ("records", "indexed", "deleted", "example", "skipped", "dead_letter", "chunks")
        }
        self.dead_letters = {
            name: metrics.add_group("dead_letter_class", name).counter("dead_letters") for name in DEAD_LETTER_CLASSES
        }
        self.pii = {kind: metrics.add_group("pii_kind", kind).counter("pii") for kind in _PII_KINDS}
        self.retry_ms = metrics.counter("weaviate_retry_ms")
        self.batch_size = metrics.distribution("batch_size")
        log.info("streams: indexing operator open (attempt %s)", runtime_context.get_attempt_number())

    def close(self) -> None:
        # (open may have failed part-way: close only what it made)
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.close()
        if getattr(self, "indexer", None) is not None:
            self.indexer.close()  # a batch waiting out Weaviate stops waiting; the checkpoint holds it

    def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
        self.metrics_scope = current_metrics_scope()  # on_timer counts in it
        self._restart(ctx.get_current_key())
        key, value, partition, offset = row[0], row[1], row[2], row[3]
        self.buffer.add(pickle.dumps((key, value, int(partition), int(offset))))
        size = (self.size.value() or 0) + 1
        now = ctx.timer_service().current_processing_time()
        # past its deadline, the buffer goes now: its timer fires late, or a restore lacks it (FLINK-37084,
        # ``_wake``) and the buffer would otherwise wait until it is full
        if size >= self.settings.embedding.batch_size or self._due(now):
            self._submit_buffer(ctx)
        else:
            self.size.update(size)
            if self.timer.value() is None:
                deadline = now + self.settings.embedding.flush_ms
                ctx.timer_service().register_processing_time_timer(deadline)
                self.timer.update(deadline)
        yield from self._emit(ctx)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        # PyFlink runs timers outside the operator's metrics scope (streams.flink.current_metrics_scope);
        # a timer restored from a checkpoint may fire before any element: then nothing to enter.
        with getattr(self, "metrics_scope", None) or nullcontext():
            self._restart(ctx.get_current_key())
            if self._due(timestamp):
                self._submit_buffer(ctx)
            outputs = list(self._emit(ctx))
        yield from outputs

    def _submit_buffer(self, ctx: Any) -> None:
        """Hand the buffered records to the pipeline as one batch, kept in state until its results are out.
        The buffer's timer stays registered (its firing then finds no deadline due): a wake-up for the batches
        in flight may fall on the same millisecond, and deleting one timer would delete both."""
        records = list(map(pickle.loads, self.buffer.get()))
        self.buffer.clear()
        self.size.clear()
        self.timer.clear()
        if not records:
            return
        self.batch_size.update(len(records))
        self.in_flight.update(pickle.dumps([*self._in_flight(), records]))
        self._start(ctx.get_current_key(), records)

    def _due(self, now: int) -> bool:
        deadline = self.timer.value()
        return deadline is not None and deadline <= now

    def _in_flight(self) -> list[list[Buffered]]:
        data = self.in_flight.value()
        return list(pickle.loads(data)) if data else []

    def _restart(self, partition: int) -> None:
        """The first time this process meets the partition, start again the batches a checkpoint held (on
        entry to ``process_element`` and ``on_timer``: before any new batch is added to them)."""
        if self.pipeline.first_sight(partition):
            for records in self._in_flight():
                log.info("streams: running again a batch of %d records that the checkpoint held", len(records))
                self._start(partition, records)

    def _start(self, partition: int, records: list[Buffered]) -> None:
        raw = [RawRecord(k, v, self.topic, p, o) for k, v, p, o in records]
        self.pipeline.start(partition, partial(self.indexer.index, raw))

    def _emit(self, ctx: Any) -> Iterator[Any]:
        """The outputs of this partition's finished batches, oldest first; wake-ups while any is in flight."""
        partition = ctx.get_current_key()
        finished: list[list[BatchResult]] = list(self.pipeline.finished(partition))
        if finished:
            retried = self.indexer.take_retried_ms()
            if retried:
                self.retry_ms.inc(retried)
            in_flight = self._in_flight()[len(finished) :]
            if in_flight:
                self.in_flight.update(pickle.dumps(in_flight))
            else:
                self.in_flight.clear()
        for result in (result for results in finished for result in results):
            self.counters["records"].inc(sum(result.counts.values()))
            self.counters["chunks"].inc(sum(len(w.chunks) for w in result.writes))
            for name, count in result.counts.items():
                self.counters[name].inc(count)
            for kind, count in result.pii.items():
                self.pii[kind].inc(count)
            for example in result.examples:
                yield Row(key=example.example_id.encode(), value=encode(example))
            for letter in result.dead_letters:
                self.dead_letters.get(letter.error_class, self.dead_letters["Other"]).inc()
                yield self.dlq_tag, Row(key=letter.key, value=letter.value, headers=letter.headers())
        if self.pipeline.in_flight(partition):
            self._wake(ctx)

    def _wake(self, ctx: Any) -> None:
        """Keep two timers ahead on a grid of ``embedding.flush_ms``, so that one registered in an earlier
        bundle is pending at any checkpoint. PyFlink registers a Python timer through the task's mailbox once
        the bundle is done (FLINK-37084), after a checkpoint taken at the end of that bundle, so a restore may
        lack the newest; with none, the batches the checkpoint holds would wait for the partition's next
        record. On the grid, a timer registered twice is one timer."""
        step = self.settings.embedding.flush_ms
        now = ctx.timer_service().current_processing_time()
        latest = self.wake.value()
        if latest is None or latest <= now + step:
            first = (now // step + 1) * step
            for at in (first, first + step):
                ctx.timer_service().register_processing_time_timer(at)
            self.wake.update(first + step)
