"""The ingest job: ``domain-events`` → validate → scrub PII → chunk → embed in batches → Weaviate,
plus training examples on ``training-examples`` and dead letters on ``domain-events.dlq``.

Run it with ``streamtune streams run`` (local MiniCluster), or submit this file to a Flink cluster with
``flink run --python streams/job.py --jarfile <connector jar>``.

This module builds the graph (the Kafka source keyed by partition, the operator, two transactional Kafka
sinks), its configuration, the start-up checks and ``main``. The operator (``streams.operator``) holds Flink's
side: buffers, timers, batches in flight, outputs and counters; the batch work it runs (plan, encode, write
under the retry policy, context lookups, the record-by-record fallback) is ``streams.indexer``'s, free of Flink.

Batches flush on ``embedding.batch_size`` records or ``embedding.flush_ms`` milliseconds, whichever
comes first, so the tail of a live stream is never left waiting. A full batch runs in a pipeline of two
batches (``streams.pipeline``): the next batch is planned and encoded while one is written, and
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
import signal
import sys
import time
from typing import Any

from streamtune import logs
from streamtune.errors import ConfigError
from streamtune.settings import Settings, load_settings
from streamtune.topics import DOMAIN_EVENTS, DOMAIN_EVENTS_DLQ, TRAINING_EXAMPLES, topic_name

__all__ = ["latest_checkpoint", "main", "preflight", "run"]

log = logging.getLogger(__name__)

_DLQ_TAG_NAME = "dead-letters"


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
    """Start-up checks in the submitting process, so that misconfiguration fails before the job runs: the
    embedding model loads, and an existing collection holds vectors of its dimension. Started while Kafka or
    Weaviate is down, it waits for them as the job waits out an outage later (bounded backoff, one line per
    status interval) and says so on ``flink.metrics_port`` (``streamtune_dependency_waiting{dependency}``, as
    serve says it) until the job's own metrics take the port over."""
    from retrieval.client import connect_when_ready
    from retrieval.store import ChunkStore
    from streamtune.models import load_embedder

    embedder = load_embedder(settings)
    dimension = int(embedder.get_sentence_embedding_dimension())
    with _Waiting(settings.flink.metrics_port) as waiting:
        _wait_for_kafka(settings, lambda now: waiting.set("kafka", now))
        with connect_when_ready(
            settings.weaviate, give_up=False, on_wait=lambda now: waiting.set("weaviate", now)
        ) as client:
            ChunkStore(client, settings).ensure_collection(dimension)
    return dimension, settings.embedding.model


def _wait_for_kafka(settings: Settings, on_wait: Any) -> None:
    """Until the broker answers a metadata request: the Kafka source would otherwise fail the job at its
    first read and leave Flink's restart strategy to retry it without a word."""
    from confluent_kafka import KafkaException

    from streamtune.kafka import admin_client, while_unreachable

    admin = admin_client(settings.kafka)
    while_unreachable(
        settings.kafka,
        "streams",
        lambda: admin.list_topics(timeout=settings.kafka.request_timeout_s),
        log=log,
        transient=lambda exc: isinstance(exc, KafkaException),
        on_wait=on_wait,
    )


class _Waiting:
    """``streamtune_dependency_waiting{dependency}`` on ``port`` while the start-up checks run (0: not served)."""

    def __init__(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.port = port
        self.registry = CollectorRegistry()
        self.gauge = Gauge(
            "streamtune_dependency_waiting",
            "1 while `streams run` waits at start-up for this dependency (Kafka, Weaviate) to be reachable.",
            ["dependency"],
            registry=self.registry,
        )
        for dependency in ("kafka", "weaviate"):
            self.gauge.labels(dependency).set(0)
        self.server: Any = None

    def set(self, dependency: str, waiting: bool) -> None:
        self.gauge.labels(dependency).set(int(waiting))

    def __enter__(self) -> _Waiting:
        from prometheus_client import start_http_server

        if self.port:
            try:
                self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
            except OSError as exc:  # the job's reporter will say the same when it binds; the checks go on
                log.warning("streams: cannot serve the start-up gauge on port %d: %s", self.port, exc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:  # the job's own metrics take the port over
            self.server.shutdown()
            self.server.server_close()


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
    from streams.operator import IndexBatches

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
    # The operator has no .uid(): Flink derives its id from its place in this graph, and the checkpoints of
    # running deployments hold its state under that id; a uid set now would leave their state behind.
    examples = (
        rows.key_by(lambda row: int(row[2]), key_type=Types.INT())  # one buffer per partition keeps its order
        .process(IndexBatches(settings, events, dlq_tag), output_type=example_row)
        .name("validate-scrub-chunk-embed-index")
    )
    statements = t_env.create_statement_set()
    statements.add_insert("examples", t_env.from_data_stream(examples))
    statements.add_insert("dead_letters", t_env.from_data_stream(examples.get_side_output(dlq_tag)))
    return statements.execute()


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
