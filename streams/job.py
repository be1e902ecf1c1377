"""The ingest job: ``domain-events`` → validate → scrub PII → chunk → embed in batches → Weaviate,
plus training examples on ``training-examples`` and dead letters on ``domain-events.dlq``.

Run it with ``streamtune streams run`` (local MiniCluster), or submit this file to a Flink cluster with
``flink run --python streams/job.py --jarfile <connector jar>``.

Batches flush on ``embedding.batch_size`` records or ``embedding.flush_ms`` milliseconds, whichever
comes first, so the tail of a live stream is never left waiting. Buffered records live in Flink state
and the Kafka sinks are transactional, so a restart from the retained checkpoint loses and duplicates
nothing; Weaviate writes are idempotent (deterministic ids), so replaying them is harmless.
"""

from __future__ import annotations

import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from streamtune.errors import ConfigError
from streamtune.settings import Settings, load_settings
from streamtune.topics import DOMAIN_EVENTS, DOMAIN_EVENTS_DLQ, TRAINING_EXAMPLES, topic_name

__all__ = ["latest_checkpoint", "main", "preflight", "run"]

_DLQ_TAG_NAME = "dead-letters"


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` folder holding ``_metadata``) under ``directory``."""
    done = [meta.parent for meta in directory.glob("*/chk-*/_metadata") if meta.is_file()]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


def preflight(settings: Settings) -> tuple[int, str]:
    """Start-up checks in the submitting process, so that misconfiguration fails before the job runs:
    the embedding model loads, and an existing collection holds vectors of its dimension."""
    from retrieval import connect
    from retrieval.store import ChunkStore
    from streamtune.models import load_embedder

    embedder = load_embedder(settings)
    dimension = int(embedder.get_sentence_embedding_dimension())
    with connect(settings.weaviate) as client:
        ChunkStore(client, settings).ensure_collection(dimension)
    return dimension, settings.embedding.model


def _flink_config(settings: Settings) -> dict[str, str]:
    checkpoints = settings.checkpoint_dir / settings.streams.group_id
    config = {
        "execution.checkpointing.dir": checkpoints.resolve().as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "restart-strategy.type": "exponential-delay",
        "python.fn-execution.bundle.time": str(settings.streams.bundle_time_ms),
        "python.fn-execution.bundle.size": str(max(settings.embedding.batch_size, 1000)),
    }
    restore = latest_checkpoint(checkpoints)
    if restore is not None:
        config["execution.state-recovery.path"] = restore.resolve().as_uri()
    return config


def run(settings: Settings, *, say: Callable[[str], None] = lambda line: print(line, flush=True)) -> Any:
    """Build the job and submit it; returns the TableResult (``.wait()`` blocks until it ends)."""
    from pyflink.common import Types
    from pyflink.datastream import OutputTag

    from streams.flink import kafka_sink_ddl, kafka_source_ddl, table_environment

    config = _flink_config(settings)
    if "execution.state-recovery.path" in config:
        say(f"streams: resuming from checkpoint {config['execution.state-recovery.path']}")
    _, t_env = table_environment(settings, config=config)
    events = topic_name(DOMAIN_EVENTS, settings.topics)
    t_env.execute_sql(kafka_source_ddl("events", events, settings, group_id=settings.streams.group_id))
    # Stable across restarts and replays: on start the sink aborts transactions a crashed run left
    # open under this prefix, which would otherwise hold back read_committed consumers.
    prefix = f"streamtune-{settings.topics.prefix}"
    t_env.execute_sql(
        kafka_sink_ddl(
            "examples", topic_name(TRAINING_EXAMPLES, settings.topics), settings, transactional_id=f"{prefix}examples"
        )
    )
    t_env.execute_sql(
        kafka_sink_ddl(
            "dead_letters",
            topic_name(DOMAIN_EVENTS_DLQ, settings.topics),
            settings,
            with_headers=True,
            transactional_id=f"{prefix}dlq",
        )
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
    from pyflink.common import Row, Types
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

    class IndexBatches(KeyedProcessFunction):
        def __init__(self, settings: Settings, topic: str, dlq_tag: Any) -> None:
            self.settings = settings
            self.topic = topic
            self.dlq_tag = dlq_tag

        def open(self, runtime_context: RuntimeContext) -> None:
            import torch

            from retrieval import connect
            from retrieval.store import ChunkStore
            from streams.chunking import Chunker
            from streamtune.models import load_embedder

            torch.set_num_threads(self.settings.models.torch_threads or 2)
            self.embedder = load_embedder(self.settings)
            streams = self.settings.streams
            self.chunker = Chunker(self.embedder.tokenizer, streams.chunk_tokens, streams.chunk_overlap)
            self.client = connect(self.settings.weaviate)
            self.store = ChunkStore(self.client, self.settings)
            self.store.ensure_collection(int(self.embedder.get_sentence_embedding_dimension()))
            self.buffer = runtime_context.get_list_state(ListStateDescriptor("buffer", Types.PICKLED_BYTE_ARRAY()))
            self.size = runtime_context.get_state(ValueStateDescriptor("size", Types.INT()))
            self.timer = runtime_context.get_state(ValueStateDescriptor("timer", Types.LONG()))
            metrics = runtime_context.get_metrics_group()
            self.counters = {
                name: metrics.counter(name)
                for name in ("records", "indexed", "deleted", "example", "skipped", "dead_letter", "chunks")
            }

        def close(self) -> None:
            if getattr(self, "client", None) is not None:
                self.client.close()

        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            key, value, partition, offset = row[0], row[1], row[2], row[3]
            self.buffer.add(pickle.dumps((key, value, int(partition), int(offset))))
            size = (self.size.value() or 0) + 1
            if size >= self.settings.embedding.batch_size:
                yield from self._flush(ctx)
                return
            self.size.update(size)
            if self.timer.value() is None:
                deadline = ctx.timer_service().current_processing_time() + self.settings.embedding.flush_ms
                ctx.timer_service().register_processing_time_timer(deadline)
                self.timer.update(deadline)

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            yield from self._flush(ctx)

        def _flush(self, ctx: Any) -> Iterator[Any]:
            from streams.processing import RawRecord, documents, plan_batch
            from streamtune.contracts import encode

            pending = self.timer.value()
            if pending is not None:
                ctx.timer_service().delete_processing_time_timer(pending)
            records = [RawRecord(k, v, self.topic, p, o) for k, v, p, o in map(pickle.loads, self.buffer.get())]
            self.buffer.clear()
            self.size.clear()
            self.timer.clear()
            if not records:
                return
            plan = plan_batch(records, self.settings.streams, self.chunker)
            texts = [text for write in plan.writes for text in write.chunks]
            vectors = (
                self.embedder.encode(
                    texts, batch_size=self.settings.embedding.batch_size, normalize_embeddings=True
                ).tolist()
                if texts
                else []
            )
            self.store.delete([(d.tenant, d.doc_id) for d in plan.deletes])
            self.store.upsert(documents(plan.writes, vectors))
            self.counters["records"].inc(len(records))
            self.counters["chunks"].inc(len(texts))
            for name, count in plan.counts.items():
                self.counters[name].inc(count)
            for example in plan.examples:
                yield Row(key=example.example_id.encode(), value=encode(example))
            for letter in plan.dead_letters:
                yield self.dlq_tag, Row(key=letter.key, value=letter.value, headers=dict(letter.headers))

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
    print(f"streams: {model} ({dimension}-d), collection {settings.weaviate.collection} ready", flush=True)
    result = run(settings)
    job = result.get_job_client()
    job_id = job.get_job_id() if job is not None else "?"
    print(
        f"streams: job {job_id} running ({time.monotonic() - begin:.1f}s): "
        f"{topic_name(DOMAIN_EVENTS, settings.topics)} → Weaviate + {topic_name(TRAINING_EXAMPLES, settings.topics)}",
        flush=True,
    )
    # SIGTERM (docker stop, kill) cancels the job cleanly, like Ctrl-C; the checkpoint is kept for the restart.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result.wait()
    except KeyboardInterrupt:
        if job is not None:
            print("streams: stopping; the next start resumes from the last checkpoint", flush=True)
            job.cancel().result()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # `flink run --python streams/job.py`
    sys.exit(main(load_settings()))
