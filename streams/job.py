"""The ingest job: ``domain-events`` → validate → scrub PII → chunk → embed in batches → Weaviate,
plus training examples on ``training-examples`` and dead letters on ``domain-events.dlq``.

Run it with ``streamtune streams run`` (local MiniCluster), or submit this file to a Flink cluster with
``flink run --python streams/job.py --jarfile <connector jar>``.

Batches flush on ``embedding.batch_size`` records or ``embedding.flush_ms`` milliseconds, whichever
comes first, so the tail of a live stream is never left waiting. A full batch runs in a pipeline of
``_IN_FLIGHT`` batches (``streams.pipeline``): the next batch is planned and encoded while one is written, and
a partition's writes and outputs keep the stream's order. Buffered records and the batches in flight live in
Flink state until their outputs are emitted, and the Kafka sinks are transactional, so a restart from the
retained checkpoint loses and duplicates nothing: it runs the batches in flight again, and Weaviate writes
are idempotent (deterministic ids), so replaying them is harmless.

Each training example carries the context it is meant to be answered with, looked up in the index once the
batch's writes are done (so a document of the same batch is found): the chunks of the documents a
``qa.recorded`` event names, else the tenant's top-k chunks for the question (``processing.add_context``).

Nothing stops the job but a Weaviate outage longer than ``weaviate.give_up_s``: a record the contract
refuses, one Weaviate refuses (``IndexRejected``) or one our code fails on (``InternalError``) is
dead-lettered; while Weaviate is down or read-only the operator waits with bounded backoff (the job stops
consuming: backpressure) and says so once per ``weaviate.status_interval_s``.
"""

from __future__ import annotations

import logging
import pickle
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from streamtune import logs
from streamtune.errors import ConfigError
from streamtune.settings import Settings, load_settings
from streamtune.topics import DOMAIN_EVENTS, DOMAIN_EVENTS_DLQ, TRAINING_EXAMPLES, topic_name

__all__ = ["DEAD_LETTER_CLASSES", "latest_checkpoint", "main", "preflight", "run"]

log = logging.getLogger(__name__)

_DLQ_TAG_NAME = "dead-letters"
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


class Stopped(Exception):
    """A batch's wait for Weaviate ended because its operator closed (the job stops or restarts)."""


def latest_checkpoint(uri: str) -> str | None:
    """The newest completed checkpoint (a ``chk-N`` folder holding ``_metadata``) under ``uri``, as a URI.

    Listed through pyarrow's filesystems, so a local path, ``s3://`` and ``hdfs://`` work alike.
    """
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True, recursive=True))
    except Exception as exc:
        raise ConfigError(
            "streams.checkpoint_dir", uri, f"its checkpoints cannot be listed ({exc}); use a reachable path or URI"
        ) from exc
    done = [info for info in infos if info.base_name == "_metadata" and info.path.rsplit("/", 2)[-2].startswith("chk-")]
    if not done:
        return None
    newest = max(done, key=lambda info: info.mtime_ns or 0).path.rsplit("/", 1)[0]
    scheme = uri.split("://", 1)[0]
    return f"file://{newest}" if scheme == "file" else f"{scheme}://{newest}"


def preflight(settings: Settings) -> tuple[int, str]:
    """Start-up checks in the submitting process, so that misconfiguration fails before the job runs:
    the embedding model loads, and an existing collection holds vectors of its dimension."""
    from retrieval.client import connect_when_ready
    from retrieval.store import ChunkStore
    from streamtune.models import load_embedder

    embedder = load_embedder(settings)
    dimension = int(embedder.get_sentence_embedding_dimension())
    with connect_when_ready(settings.weaviate) as client:
        ChunkStore(client, settings).ensure_collection(dimension)
    return dimension, settings.embedding.model


def _flink_config(settings: Settings) -> dict[str, str]:
    checkpoints = f"{settings.checkpoint_uri}/{settings.streams.group_id}"
    # An operator may wait out a Weaviate outage for up to weaviate.give_up_s; checkpoints taken meanwhile
    # must neither time out into a restart nor count as failures that fail the job.
    patience_ms = int((settings.weaviate.give_up_s + 120) * 1000)
    config = {
        "execution.checkpointing.dir": checkpoints,
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "execution.checkpointing.timeout": f"{patience_ms} ms",
        "execution.checkpointing.tolerable-failed-checkpoints": "1000",
        "restart-strategy.type": "exponential-delay",
        "python.fn-execution.bundle.time": str(settings.streams.bundle_time_ms),
        "execution.buffer-timeout.interval": f"{settings.streams.buffer_timeout_ms} ms",
        "python.fn-execution.bundle.size": str(max(settings.embedding.batch_size, 1000)),
    }
    if settings.flink.local_rest_port:
        config["rest.port"] = str(settings.flink.local_rest_port)
    # A local MiniCluster listens on every interface unless told otherwise.
    for key in (
        "rest.bind-address",
        "rest.address",
        "jobmanager.bind-host",
        "taskmanager.bind-host",
        "taskmanager.host",
    ):
        config[key] = "127.0.0.1"
    restore = latest_checkpoint(checkpoints)
    if restore is not None:
        config["execution.state-recovery.path"] = restore
    return config


def run(settings: Settings) -> Any:
    """Build the job and submit it; returns the TableResult (``.wait()`` blocks until it ends)."""
    from pyflink.common import Types
    from pyflink.datastream import OutputTag

    from streams.flink import kafka_sink, kafka_source, table_environment

    config = _flink_config(settings)
    if "execution.state-recovery.path" in config:
        log.info("streams: resuming from checkpoint %s", config["execution.state-recovery.path"])
    _, t_env = table_environment(settings, config=config)
    events = topic_name(DOMAIN_EVENTS, settings.topics)
    t_env.create_temporary_table("events", kafka_source(events, settings, group_id=settings.streams.group_id))
    # Stable across restarts of this deployment, distinct per consumer group: on start the sink aborts the
    # transactions a crashed run left open under this prefix (they would hold back read_committed readers),
    # and a replay with another group beside the live job cannot fence the live job's producers.
    prefix = f"streamtune-{settings.topics.prefix}{settings.streams.group_id}-"
    t_env.create_temporary_table(
        "examples",
        kafka_sink(topic_name(TRAINING_EXAMPLES, settings.topics), settings, transactional_id=f"{prefix}examples"),
    )
    t_env.create_temporary_table(
        "dead_letters",
        kafka_sink(
            topic_name(DOMAIN_EVENTS_DLQ, settings.topics),
            settings,
            with_headers=True,
            transactional_id=f"{prefix}dlq",
            max_request_bytes=settings.streams.dlq_max_request_bytes,
        ),
    )
    raw = Types.PRIMITIVE_ARRAY(Types.BYTE())
    example_row = Types.ROW_NAMED(["key", "value"], [raw, raw])
    dlq_row = Types.ROW_NAMED(["key", "value", "headers"], [raw, raw, Types.MAP(Types.STRING(), raw)])
    dlq_tag = OutputTag(_DLQ_TAG_NAME, dlq_row)

    rows = t_env.to_data_stream(t_env.sql_query("SELECT `key`, `value`, `partition`, `offset` FROM events"))
    examples = (
        rows.key_by(lambda row: int(row[2]), key_type=Types.INT())  # one buffer per partition keeps its order
        .process(_index_batches_class()(settings, events, dlq_tag), output_type=example_row)
        .name("validate-scrub-chunk-embed-index")
    )
    statements = t_env.create_statement_set()
    statements.add_insert("examples", t_env.from_data_stream(examples))
    statements.add_insert("dead_letters", t_env.from_data_stream(examples.get_side_output(dlq_tag)))
    return statements.execute()


def _index_batches_class() -> type:
    """Defined on demand so that this module imports without PyFlink."""
    import copy
    import threading
    from concurrent.futures import Future, ThreadPoolExecutor, wait
    from functools import partial

    from pyflink.common import Row, Types
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

    class IndexBatches(KeyedProcessFunction):
        def __init__(self, settings: Settings, topic: str, dlq_tag: Any) -> None:
            self.settings = settings
            self.topic = topic
            self.dlq_tag = dlq_tag

        def open(self, runtime_context: RuntimeContext) -> None:
            from retrieval.client import connect_when_ready
            from retrieval.retriever import Retriever
            from retrieval.store import ChunkStore
            from streams.chunking import Chunker
            from streams.pipeline import Pipeline
            from streams.processing import scrubber_for
            from streamtune.models import load_embedder, prepare_torch

            # Every encode runs on this one long-lived thread rather than on whichever of Beam's worker threads
            # delivers the bundle: glibc's arena and the OpenMP team belong to the thread that encodes, and a
            # thread met for the first time faults its buffers in afresh (BENCHMARKS.md, "where the job's time goes").
            self.encoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamtune-encode")
            # A batch's whole work (plan, encode, write, context) runs in the pipeline, so that the next batch is
            # planned and encoded while this one is written; its batches are those of ``in_flight``, in order.
            self.pipeline = Pipeline(_IN_FLIGHT, "streamtune-batch")
            self.stopping = threading.Event()
            self.retried_ms = 0  # counted on the pipeline's threads, reported on the operator's (metrics)
            self.retries = threading.Lock()
            self._encoding(prepare_torch, self.settings.embedding.torch_threads, self.settings.memory)
            self.embedder = load_embedder(self.settings)
            streams = self.settings.streams
            # its own tokenizer: the encode (on another thread) sets truncation on the model's, and a Rust
            # tokenizer used from two threads while one changes its settings fails ("Already borrowed")
            tokenizer = copy.deepcopy(self.embedder.tokenizer)
            self.chunker = Chunker(tokenizer, streams.chunk_tokens, streams.chunk_overlap)
            self.planning = threading.Lock()  # the chunker's tokenizer, for one pipeline thread at a time
            self.scrubber = scrubber_for(streams)
            self.client = connect_when_ready(self.settings.weaviate)
            self.store = ChunkStore(self.client, self.settings)
            self.store.ensure_collection(int(self.embedder.get_sentence_embedding_dimension()))
            # questions are embedded as serve embeds a query: same model, same normalisation
            self.retriever = Retriever(self.settings, embedder=self.embedder, client=self.client)
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
                name: metrics.add_group("dead_letter_class", name).counter("dead_letters")
                for name in DEAD_LETTER_CLASSES
            }
            self.pii = {kind: metrics.add_group("pii_kind", kind).counter("pii") for kind in _PII_KINDS}
            self.retry_ms = metrics.counter("weaviate_retry_ms")
            self.batch_size = metrics.distribution("batch_size")
            log.info("streams: indexing operator open (attempt %s)", runtime_context.get_attempt_number())

        def close(self) -> None:
            if getattr(self, "stopping", None) is not None:
                self.stopping.set()  # a batch waiting out Weaviate stops waiting; the checkpoint holds it
            if getattr(self, "pipeline", None) is not None:
                self.pipeline.close()
            if getattr(self, "encoding", None) is not None:
                self.encoding.shutdown(wait=False, cancel_futures=True)
            if getattr(self, "client", None) is not None:
                self.client.close()

        def _encoding(self, function: Any, *args: Any, **kwargs: Any) -> Any:
            """``function``'s result, run on the encoding thread (``open``); its exceptions are raised here."""
            return self.encoding.submit(function, *args, **kwargs).result()

        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            from streams.flink import current_metrics_scope

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
            from contextlib import nullcontext

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

        def _in_flight(self) -> list[list[tuple[Any, ...]]]:
            data = self.in_flight.value()
            return list(pickle.loads(data)) if data else []

        def _restart(self, partition: int) -> None:
            """The first time this process meets the partition, start again the batches a checkpoint held (on
            entry to ``process_element`` and ``on_timer``: before any new batch is added to them)."""
            if self.pipeline.first_sight(partition):
                for records in self._in_flight():
                    log.info("streams: running again a batch of %d records that the checkpoint held", len(records))
                    self._start(partition, records)

        def _start(self, partition: int, records: list[tuple[Any, ...]]) -> None:
            from streams.processing import RawRecord

            raw = [RawRecord(k, v, self.topic, p, o) for k, v, p, o in records]
            self.pipeline.start(partition, partial(self._process, raw))

        def _emit(self, ctx: Any) -> Iterator[Any]:
            """The outputs of this partition's finished batches, oldest first; wake-ups while any is in flight."""
            from streamtune.contracts import encode

            partition = ctx.get_current_key()
            finished = list(self.pipeline.finished(partition))
            if finished:
                self._report_retries()
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

        def _report_retries(self) -> None:
            with self.retries:
                retried, self.retried_ms = self.retried_ms, 0
            if retried:
                self.retry_ms.inc(retried)

        def _process(self, records: list[Any], after: Future[list[Any]] | None) -> list[Any]:
            """The batch's results (on a pipeline thread); if indexing the batch fails for a reason of ours, each
            record alone, so that only the record that fails on its own is dead-lettered (InternalError). Its
            writes wait for ``after``, the partition's batch before it, so that they land in the stream's order."""
            from streams.processing import internal_error, plan_batch
            from streamtune.errors import RetryExhausted

            streams = self.settings.streams
            with self.planning:
                plan = plan_batch(records, streams, self.chunker, self.scrubber)
            try:
                self._index(plan, after)
                return [plan]
            except (RetryExhausted, Stopped):
                raise  # Weaviate stayed down past weaviate.give_up_s (fail, naming it), or the operator closed
            except Exception as exc:
                self._unless_stopped(exc)
                log.warning(
                    "streams: indexing a batch of %d records failed (%s: %s); indexing them one by one",
                    len(records),
                    type(exc).__name__,
                    exc,
                )
            results = []
            for record in records:
                with self.planning:
                    single = plan_batch([record], streams, self.chunker, self.scrubber)
                try:
                    self._index(single, after)
                except (RetryExhausted, Stopped):
                    raise
                except Exception as exc:
                    self._unless_stopped(exc)
                    log.error(
                        "streams: %s[%d]@%d dead-lettered: %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        exc,
                        extra={"source": logs.source(record.topic, record.partition, record.offset)},
                    )
                    single = internal_error([record], exc, streams)
                results.append(single)
            return results

        def _unless_stopped(self, exc: Exception) -> None:
            """A batch that fails once its operator closed (its client closed under it) is not the records'
            fault: nothing is dead-lettered, and the checkpoint holds the batch."""
            if self.stopping.is_set():
                raise Stopped(f"the operator closed while a batch ran ({type(exc).__name__})") from exc

        def _index(self, plan: Any, after: Future[list[Any]] | None) -> None:
            from retrieval.client import address, is_transient
            from streams.processing import add_context, documents, reject
            from streamtune.retry import retrying

            texts = [text for write in plan.writes for text in write.chunks]
            vectors: list[Any] = []
            if texts:
                batch = self.settings.embedding.batch_size
                encoded = self._encoding(self.embedder.encode, texts, batch_size=batch, normalize_embeddings=True)
                vectors = encoded.tolist()
            if after is not None:
                wait([after])
            weaviate = self.settings.weaviate

            def patiently(operation: Any) -> Any:
                return retrying(
                    operation,
                    transient=is_transient,
                    backoff=weaviate.backoff(),
                    what=f"Weaviate at {address(weaviate)}",
                    fix="Start Weaviate, free its disk, or raise weaviate.give_up_s; the job resumes from its "
                    "last checkpoint when restarted.",
                    log=log,
                    sleep=self._sleep,
                )

            if plan.deletes:
                patiently(lambda: self.store.delete([(d.tenant, d.doc_id) for d in plan.deletes]))
            if plan.writes:
                refused = patiently(lambda: self.store.upsert(documents(plan.writes, vectors)))
                reject(plan, refused, self.settings.streams)
            # after the writes, so that an example finds the documents of its own batch
            add_context(plan, lambda requests: self._context(requests, patiently))

        def _context(self, requests: Any, patiently: Any) -> list[Any]:
            """Per request, the passages an example is answered with: the named documents' best chunks for the
            question, else the tenant's top-k (``retrieval.top_k``, ``retrieval.alpha``: serve's defaults)."""
            from streams.processing import passages

            top_k = self.settings.retrieval.top_k
            vectors = self._encoding(self.retriever.embed, [r.question for r in requests])

            def search() -> list[Any]:
                return [
                    passages(
                        self.store.search_documents(r.tenant, r.question, vector, top_k, r.doc_ids)
                        if r.doc_ids
                        else self.retriever.search_with(r.tenant, r.question, vector, top_k)
                    )
                    for r, vector in zip(requests, vectors, strict=True)
                ]

            return list(patiently(search))

        def _sleep(self, seconds: float) -> None:
            with self.retries:
                self.retried_ms += int(seconds * 1000)
            if self.stopping.wait(seconds):
                raise Stopped("the operator closed while a batch waited for Weaviate; the checkpoint holds it")

    return IndexBatches


def main(settings: Settings) -> int:
    """Run the job until it is stopped (Ctrl-C or SIGTERM); a restart resumes from the last checkpoint."""
    try:
        import pyflink  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "python environment", sys.executable, "run the job from the Flink environment: .venv/flink/bin/streamtune"
        ) from exc
    begin = time.monotonic()
    dimension, model = preflight(settings)
    log.info("streams: %s (%s-d), collection %s ready", model, dimension, settings.weaviate.collection)
    result = run(settings)
    job = result.get_job_client()
    job_id = job.get_job_id() if job is not None else "?"
    log.info(
        "streams: job %s running (%.1fs): %s → Weaviate + %s",
        job_id,
        time.monotonic() - begin,
        topic_name(DOMAIN_EVENTS, settings.topics),
        topic_name(TRAINING_EXAMPLES, settings.topics),
    )
    if _detached():
        log.info("streams: submitted detached; the job runs on the cluster until it is cancelled")
        return 0
    # SIGTERM (docker stop, kill) cancels the job cleanly, like Ctrl-C; the checkpoint is kept for the restart.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result.wait()
    except KeyboardInterrupt:
        if job is not None:
            log.info("streams: stopping; the next start resumes from the last checkpoint")
            job.cancel().result()
    return 0


def _detached() -> bool:
    """True under `flink run -d`: the job outlives this client, which must return rather than wait on it
    (``TableResult.wait()`` would block for as long as the job runs, and a SIGTERM here would cancel it)."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    t_env = StreamTableEnvironment.create(StreamExecutionEnvironment.get_execution_environment())
    return bool(t_env.get_config().get("execution.attached", "true") == "false")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # `flink run --python streams/job.py`: the client logs JSON lines, as a service
    _settings = load_settings()
    logs.configure(_settings.logging, service=True)
    sys.exit(main(_settings))
