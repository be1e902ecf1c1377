"""Peer benchmark: streamtune's ingest job beside a Pathway pipeline, same topic, same backlog, same model.

    make bench-peers            (builds .venv/peers once, then runs this with the Flink environment)
    .venv/flink/bin/python bench/peers.py [--docs 600] [--seconds 30] [--rate R]

Both systems read the same uuid-named ``domain-events`` topic from its start on the running local Kafka.
Reported per system, in the same run:

- throughput on a backlog: each system is started and warmed up (one document searchable: its model is
  loaded and its pipeline running), then the same backlog of documents (same texts, its own ids) is
  produced to the topic; the clock runs from the backlog being in Kafka to its last document searchable;
- freshness: documents produced at a steady rate (default: half of our job's backlog throughput, the
  load the issue names), each one's latency from produce to searchable, p50 / p99;
- the yardstick both are held against: raw batched ``encode`` of the same model on the same machine, in
  this process, before our job, between the two systems and after Pathway (the machine's speed drifts by
  20-30 % within minutes); each system is held against the mean of the two runs around it.

"Searchable" means, for us, the object's creation time in Weaviate (the server's clock, same machine);
for Pathway, the wall-clock time its engine delivered the embedded row, which is the minibatch in which the
row enters its in-memory KNN index; a query through that index at the end checks that the documents timed
are the documents found. The systems run one after the other, never together, so each has both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import cpus, document, raw_encoder, send_document
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from retrieval import connect
from streamtune.harness import ingest_job, isolated_env, wait_for
from streamtune.kafka import admin_client, client_config, create_topics, delete_topics
from streamtune.models import embedding_model_source
from streamtune.settings import load_settings
from streamtune.topics import DOMAIN_EVENTS, topic_name

PEER_PYTHON = Path(".venv/peers/bin/python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600, help="backlog size")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each freshness run")
    parser.add_argument("--rate", type=float, default=None, help="events/s for freshness (default: half of ours)")
    args = parser.parse_args()
    if not PEER_PYTHON.exists():
        sys.exit(f"{PEER_PYTHON} is missing: run `make bench-peers` (it builds the peer's environment first)")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(isolated_env(Path(tmp), "peers"))
        settings = load_settings()
        create_topics(settings.kafka, settings.topics)
        topic = topic_name(DOMAIN_EVENTS, settings.topics)
        queries = f"{settings.topics.prefix}peer-queries"
        producer = Producer(client_config(settings.kafka))
        try:
            # The machine's speed drifts by 20-30 % within minutes: the yardstick runs before our job, between
            # the two systems and after Pathway, and each system is held against the mean of the two around it.
            # torch's idle threads do not spin meanwhile under the Makefile's OMP_WAIT_POLICY=PASSIVE
            raw_encode = raw_encoder(settings, [document(i) for i in range(args.docs)])
            yardsticks = [raw_encode()]
            ours, ours_fresh = _ours(settings, producer, topic, args)
            rate = args.rate or ours["docs_per_s"] / 2
            ours_fresh = ours_fresh(rate)
            yardsticks.append(raw_encode())
            peer, peer_fresh = _pathway(settings, producer, topic, queries, Path(tmp), args, rate)
            yardsticks.append(raw_encode())
            ours["raw_encode_docs_per_s"] = round((yardsticks[0] + yardsticks[1]) / 2, 1)
            peer["raw_encode_docs_per_s"] = round((yardsticks[1] + yardsticks[2]) / 2, 1)
            print(
                f"yardstick: raw batched encode {', '.join(f'{y:.0f}' for y in yardsticks)} docs/s (batch "
                f"{settings.embedding.batch_size}; before us, between, after Pathway)"
            )
            rows = [("streamtune (Flink job)", ours, ours_fresh), ("Pathway 0.33", peer, peer_fresh)]
            print(f"\n{'system':24} {'docs/s':>7} {'÷ raw':>6} {'p50 ms':>7} {'p99 ms':>7}   at {rate:.1f} events/s")
            for name, through, fresh in rows:
                ratio = through["docs_per_s"] / through["raw_encode_docs_per_s"]
                print(
                    f"{name:24} {through['docs_per_s']:7.1f} {ratio:6.2f} {fresh['p50_ms']:7.0f} {fresh['p99_ms']:7.0f}"
                )
            print(f"ratio streamtune ÷ Pathway (throughput): {ours['docs_per_s'] / peer['docs_per_s']:.2f}")
            print(
                json.dumps(
                    {
                        "cpus": cpus(),
                        "docs": args.docs,
                        "raw_encode_runs": [round(y, 1) for y in yardsticks],
                        "rate": round(rate, 1),
                        "ours": {**ours, **ours_fresh},
                        "pathway": {**peer, **peer_fresh},
                    }
                )
            )
        finally:
            delete_topics(settings.kafka, settings.topics)
            admin_client(settings.kafka).delete_topics([queries])


def _backlog(producer: Producer, topic: str, tenant: str, docs: int) -> float:
    """Produces the backlog; returns when it is all in Kafka (the throughput clock's start)."""
    for i in range(docs):
        send_document(producer, topic, tenant, i, document(i))
    producer.flush(30)
    return time.perf_counter()


def _throughput(docs: int, begin: float) -> dict[str, float]:
    took = time.perf_counter() - begin
    return {"docs_per_s": docs / took, "backlog_s": took}


def _freshness(latencies: list[float]) -> dict[str, float]:
    latencies = sorted(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else latencies[-1]
    return {"p50_ms": statistics.median(latencies) * 1000, "p99_ms": p99 * 1000, "n": len(latencies)}


def _steady(producer: Producer, topic: str, tenant: str, rate: float, seconds: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    count = int(rate * seconds)
    start = time.time()
    for i in range(count):
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)  # the producer's schedule, not a wait for a condition
        sent[f"{tenant}-{i}"] = time.time()
        send_document(producer, topic, tenant, i, document(i, 20))
        producer.poll(0)
    producer.flush(15)
    return sent


def _ours(settings, producer: Producer, topic: str, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Our job over the backlog; returns its throughput and a function running its freshness phase."""
    from weaviate.classes.query import MetadataQuery

    work = Path(tempfile.mkdtemp(prefix="peers-ours-"))
    job = ingest_job(work, dict(os.environ))
    job.start()
    client = connect(settings.weaviate)

    def created(tenant: str) -> dict[str, float]:
        col = client.collections.get(settings.weaviate.collection)
        if not col.tenants.exists(tenant):
            return {}
        return {
            o.properties["doc_id"]: o.metadata.creation_time.timestamp()
            for o in col.with_tenant(tenant).iterator(
                return_properties=["doc_id"], return_metadata=MetadataQuery(creation_time=True)
            )
        }

    send_document(producer, topic, "warmup-ours", 0, "warm-up document.")
    producer.flush(15)
    wait_for(lambda: created("warmup-ours"), 600, "our job to start")
    begin = _backlog(producer, topic, "backlog-ours", args.docs)
    wait_for(lambda: len(created("backlog-ours")) >= args.docs, 900, "our job to index the backlog")
    through = _throughput(args.docs, begin)

    def fresh(rate: float) -> dict[str, float]:
        try:
            sent = _steady(producer, topic, "fresh-ours", rate, args.seconds)
            wait_for(lambda: len(created("fresh-ours")) >= len(sent), 300, "our job to index the steady stream")
            times = created("fresh-ours")
            return _freshness([times[d] - sent[d] for d in sent])
        finally:
            client.close()
            job.stop()

    return through, fresh


def _pathway(settings, producer, topic, queries, work: Path, args, rate):  # type: ignore[no-untyped-def]
    out = work / "pathway.jsonl"
    out.touch()
    admin = admin_client(settings.kafka)  # kept referenced until the future resolves
    admin.create_topics([NewTopic(queries, num_partitions=1)])[queries].result(30)
    process = subprocess.Popen(
        [
            str(PEER_PYTHON),
            str(Path(__file__).with_name("peer_pathway.py")),
            "--bootstrap",
            settings.kafka.bootstrap_servers,
            "--topic",
            topic,
            "--queries",
            queries,
            "--model",
            embedding_model_source(settings),
            "--batch-size",
            str(settings.embedding.batch_size),
            "--threads",
            str(settings.embedding.torch_threads),
            "--out",
            str(out),
        ],
        stdout=open(work / "pathway.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PATHWAY_THREADS": "1"},
    )

    def seen(prefix: str) -> dict[str, float]:
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        return {r["doc_id"]: r["t"] for r in rows if "doc_id" in r and r["doc_id"].startswith(prefix)}

    def alive() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"Pathway exited ({process.returncode}): {(work / 'pathway.log').read_text()[-3000:]}")

    try:
        send_document(producer, topic, "warmup-peer", 0, "warm-up document.")
        producer.flush(15)
        wait_for(lambda: alive() or seen("warmup-peer-"), 600, "Pathway to start")
        begin = _backlog(producer, topic, "backlog-peer", args.docs)
        wait_for(lambda: alive() or len(seen("backlog-peer-")) >= args.docs, 900, "Pathway to index the backlog")
        through = _throughput(args.docs, begin)
        sent = _steady(producer, topic, "fresh-peer", rate, args.seconds)
        wait_for(lambda: alive() or len(seen("fresh-peer-")) >= len(sent), 300, "Pathway to index the stream")
        times = seen("fresh-peer-")
        fresh = _freshness([times[d] - sent[d] for d in sent])
        query_id = uuid.uuid4().hex
        last = args.docs - 1
        producer.produce(queries, value=json.dumps({"query_id": query_id, "text": document(last)}).encode())
        producer.flush(15)

        def answer() -> list[str] | None:
            alive()
            rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            return next((r["doc_ids"] for r in rows if r.get("query_id") == query_id), None)

        wait_for(lambda: answer() is not None, 120, "Pathway to answer the check query")
        found = answer() or []
        if f"backlog-peer-{last}" not in found:
            raise RuntimeError(f"Pathway's index did not find backlog-peer-{last} for its own text: {found}")
        print(f"check: Pathway's index answers a query with backlog-peer-{last} among {found}")
        return through, fresh
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
