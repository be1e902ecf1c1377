"""Ingest benchmark: event → searchable latency, job throughput against the physical limit, and recovery
from a Weaviate outage.

    .venv/flink/bin/python bench/ingest.py [--docs 600] [--rate 10] [--seconds 30] [--outage-docs 300]

Yardstick, measured in the same run: raw batched ``encode`` throughput of the same embedding model on
the same machine (documents/s, each document one chunk). The job's throughput is documents/s through
the whole Flink job (Kafka → parse → scrub → chunk → embed → Weaviate) on a backlog; the ratio is the
result (goal ≥ 0.8). Freshness: documents produced at a steady rate, each one's latency from produce to
its object's creation time in Weaviate (the server's clock, same machine), p50 / p99.

Outage: with the job running, Weaviate is stopped, ``--outage-docs`` documents are produced, and Weaviate is
started again; reported is the time from Weaviate answering again to the backlog being indexed, beside
the time the same backlog takes at the job's measured throughput (the ratio is the cost of the retries).

Runs on uuid-named topics, group and collection against the running local Kafka, with a Weaviate of its
own (started and stopped here, on free ports), and removes them after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer

from retrieval import connect
from streamtune.harness import free_port, ingest_job, isolated_env
from streamtune.kafka import client_config, create_topics, delete_topics
from streamtune.models import load_embedder
from streamtune.settings import load_settings
from streamtune.stack import Stack
from streamtune.topics import DOMAIN_EVENTS, topic_name

WORDS = "refund shipping invoice warranty order parcel customer account policy return exchange store".split()  # noqa: SIM905


def document(i: int, words: int = 40) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) + f" document {i}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600, help="backlog size for the throughput run")
    parser.add_argument("--rate", type=float, default=10.0, help="events/s for the freshness run")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of the freshness run")
    parser.add_argument("--outage-docs", type=int, default=300, help="documents produced while Weaviate is down")
    args = parser.parse_args()

    shared = load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        env = isolated_env(
            Path(tmp),
            "bench",
            STREAMTUNE__WEAVIATE__HTTP_PORT=str(free_port()),
            STREAMTUNE__WEAVIATE__GRPC_PORT=str(free_port()),
            STREAMTUNE__STACK__HOME=str(Path(tmp) / "stack"),
            STREAMTUNE__STACK__WEAVIATE_GOSSIP_PORT=str(free_port(pair=True)),
            STREAMTUNE__STACK__WEAVIATE_RAFT_PORT=str(free_port(pair=True)),
            STREAMTUNE__CACHE_DIR=str(shared.cache_dir),
        )
        os.environ.update(env)
        settings = load_settings()
        weaviate = Stack(settings, say=lambda _: None, only=("weaviate",))
        weaviate.up()
        create_topics(settings.kafka, settings.topics)
        import torch

        torch.set_num_threads(settings.embedding.torch_threads)
        embedder = load_embedder(settings)
        texts = [document(i) for i in range(args.docs)]
        embedder.encode(texts[:64], batch_size=settings.embedding.batch_size)  # warm-up
        begin = time.perf_counter()
        embedder.encode(texts, batch_size=settings.embedding.batch_size, normalize_embeddings=True)
        raw_rate = args.docs / (time.perf_counter() - begin)
        print(f"yardstick: raw batched encode {raw_rate:.0f} docs/s (batch {settings.embedding.batch_size})")

        job = ingest_job(Path(tmp), env)
        job.start()
        client = connect(settings.weaviate)
        producer = Producer(client_config(settings.kafka))
        topic = topic_name(DOMAIN_EVENTS, settings.topics)
        try:
            _send(producer, topic, "warmup", 0, "warm-up document.")
            producer.flush(15)
            _wait_count(client, settings.weaviate.collection, "warmup", 1, 300)

            for i, text in enumerate(texts):
                _send(producer, topic, "throughput", i, text)
            producer.flush(30)
            begin = time.perf_counter()
            _wait_count(client, settings.weaviate.collection, "throughput", args.docs, 600)
            job_rate = args.docs / (time.perf_counter() - begin)
            print(f"job: {job_rate:.0f} docs/s through Kafka → Flink → Weaviate; ratio {job_rate / raw_rate:.2f}")

            sent: dict[str, float] = {}
            count = int(args.rate * args.seconds)
            start = time.time()
            for i in range(count):
                delay = start + i / args.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                sent[f"fresh-{i}"] = time.time()
                _send(producer, topic, "fresh", i, document(i, 20))
                producer.poll(0)
            producer.flush(15)
            _wait_count(client, settings.weaviate.collection, "fresh", count, 300)
            latencies = _latencies(client, settings.weaviate.collection, sent)
            p50 = statistics.median(latencies)
            p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else max(latencies)
            print(
                f"freshness at {args.rate:g} events/s over {args.seconds:g}s: p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms (flush_ms={settings.embedding.flush_ms})"
            )

            client.close()
            weaviate.down()
            for i in range(args.outage_docs):
                _send(producer, topic, "outage", i, document(i))
            producer.flush(30)
            time.sleep(5)  # the job meets the outage with a backlog waiting
            weaviate.up()
            back = time.perf_counter()
            client = connect(settings.weaviate)
            _wait_count(client, settings.weaviate.collection, "outage", args.outage_docs, 900)
            drained = time.perf_counter() - back
            expected = args.outage_docs / job_rate
            print(
                f"outage: {args.outage_docs} documents produced while Weaviate was down; indexed {drained:.1f}s "
                f"after it was back (at the job's throughput they take {expected:.1f}s; ratio {drained / expected:.2f})"
            )
            print(
                json.dumps(
                    {
                        "machine": f"{platform.node()} {platform.machine()}",
                        "cpus": _cpus(),
                        "raw_encode_docs_per_s": round(raw_rate, 1),
                        "job_docs_per_s": round(job_rate, 1),
                        "ratio": round(job_rate / raw_rate, 3),
                        "rate": args.rate,
                        "p50_ms": round(p50 * 1000),
                        "p99_ms": round(p99 * 1000),
                        "outage_docs": args.outage_docs,
                        "drained_after_return_s": round(drained, 1),
                        "drain_ratio": round(drained / expected, 2),
                    }
                )
            )
        finally:
            client.close()
            job.stop()
            weaviate.down()
            delete_topics(settings.kafka, settings.topics)


def _send(producer: Producer, topic: str, tenant: str, i: int, text: str) -> None:
    event = {
        "schema_version": 1,
        "event_id": f"{tenant}-{i}",
        "type": "document.upserted",
        "tenant": tenant,
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {"doc_id": f"{tenant}-{i}", "text": text},
    }
    producer.produce(topic, key=f"{tenant}:{tenant}-{i}".encode(), value=json.dumps(event).encode())


def _wait_count(client: object, collection: str, tenant: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    col = client.collections.get(collection)  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        if (
            col.tenants.exists(tenant)
            and col.with_tenant(tenant).aggregate.over_all(total_count=True).total_count >= count
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{tenant}: fewer than {count} chunks after {timeout_s}s")


def _latencies(client: object, collection: str, sent: dict[str, float]) -> list[float]:
    from weaviate.classes.query import MetadataQuery

    col = client.collections.get(collection).with_tenant("fresh")  # type: ignore[attr-defined]
    latencies = []
    for obj in col.iterator(return_properties=["doc_id"], return_metadata=MetadataQuery(creation_time=True)):
        latencies.append(obj.metadata.creation_time.timestamp() - sent[obj.properties["doc_id"]])
    return latencies


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
