"""Ingest throughput on the standalone Flink cluster at parallelism 1 and 2.

    .venv/flink/bin/python bench/cluster.py [--docs 600] [--variants 1x2 2x1 2x2]

A variant ``PxT`` is the ingest job submitted with parallelism P, each of its Python workers encoding with
T torch threads (``embedding.torch_threads``). The cluster is the stack's own standalone cluster (a
jobmanager and two one-slot taskmanagers from the Flink distribution in the apache-flink package, on
127.0.0.1 and free ports, private to this run); Kafka and Weaviate are the running local stack. Each variant
gets its own uuid-named topics (3 partitions, so that two subtasks both have work), collection and consumer
group: the job is submitted, warmed up on a full batch per partition, then a backlog of ``--docs``
documents is produced and timed from the backlog being in Kafka to its last document being searchable; the
job is cancelled and everything removed.

Yardstick, in the same run: raw batched ``encode`` of the same model in this process, with the machine's
threads (the physical limit of the work that dominates). On a machine with C cores, P workers with T threads
each want P*T cores: beyond C they take turns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from common import cpus, document, raw_encoder, send_document
from confluent_kafka import Producer

from retrieval import connect
from retrieval.store import ChunkStore
from streamtune.harness import free_port, isolated_env, wait_for
from streamtune.kafka import client_config, create_topics, delete_topics
from streamtune.settings import Settings, load_settings
from streamtune.stack import Stack
from streamtune.stack.flink_jobs import cancel_job, job_status, submit_job
from streamtune.topics import DOMAIN_EVENTS, topic_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600, help="backlog size per variant")
    parser.add_argument("--variants", nargs="+", default=["1x2", "2x1", "2x2"], help="PARALLELISM x TORCH_THREADS")
    args = parser.parse_args()
    variants = [tuple(int(x) for x in v.split("x")) for v in args.variants]

    shared = load_settings()
    raw_rate = raw_encoder(shared, [document(i) for i in range(args.docs)], threads=cpus())()
    batch = shared.embedding.batch_size
    print(f"yardstick: raw batched encode {raw_rate:.1f} docs/s ({cpus()} threads, batch {batch})")

    with tempfile.TemporaryDirectory() as tmp:
        cluster = _cluster(shared, Path(tmp))
        results = []
        try:
            Stack(cluster, say=lambda _: None).up()
            for parallelism, threads in variants:
                rate = _variant(cluster, Path(tmp) / f"p{parallelism}t{threads}", parallelism, threads, args.docs)
                results.append({"parallelism": parallelism, "torch_threads": threads, "docs_per_s": round(rate, 1)})
                print(
                    f"parallelism {parallelism}, {threads} torch thread(s) each: {rate:.1f} docs/s, "
                    f"ratio to raw encode {rate / raw_rate:.2f}",
                    flush=True,
                )
        finally:
            Stack(cluster, say=lambda _: None).down()
    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}",
                "cpus": cpus(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "raw_encode_docs_per_s": round(raw_rate, 1),
                "docs": args.docs,
                "variants": [{**r, "ratio": round(r["docs_per_s"] / raw_rate, 3)} for r in results],
            }
        )
    )


def _cluster(shared: Settings, tmp: Path) -> Settings:
    """The stack's standalone cluster on free ports, under ``tmp``: two one-slot taskmanagers."""
    flink = shared.flink.model_copy(
        update={
            "cluster": True,
            "rest_port": free_port(),
            "rpc_port": free_port(),
            "cluster_metrics_port": 0,
            "taskmanagers": 2,
            "task_slots": 1,
        }
    )
    return shared.model_copy(update={"flink": flink, "stack": shared.stack.model_copy(update={"home": tmp / "stack"})})


def _variant(cluster: Settings, work: Path, parallelism: int, threads: int, docs: int) -> float:
    """Backlog docs/s of the job at ``parallelism`` with ``threads`` torch threads per worker."""
    env = isolated_env(work, "cluster", STREAMTUNE__EMBEDDING__TORCH_THREADS=str(threads))
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        deployment = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    create_topics(deployment.kafka, deployment.topics)
    client = connect(deployment.weaviate)
    store = ChunkStore(client, deployment)
    producer = Producer(client_config(deployment.kafka))
    topic = topic_name(DOMAIN_EVENTS, deployment.topics)
    job_id = None
    try:
        job_id = submitted = submit_job(cluster, parallelism=parallelism, env=env)
        wait_for(lambda: job_status(cluster, submitted).running, 180, "the job running on the cluster")
        # warm, as the yardstick is: a full batch per partition (so through every subtask) before the clock runs
        partitions, batch = deployment.topics.partitions, deployment.embedding.batch_size
        for i in range(batch * partitions):
            send_document(producer, topic, "warmup", i, document(docs + i), partition=i % partitions)
        producer.flush(15)
        wait_for(lambda: store.count("warmup") >= batch * partitions, 300, "the warm-up documents indexed")
        for i, text in enumerate(document(i) for i in range(docs)):
            send_document(producer, topic, "backlog", i, text)
        producer.flush(30)
        begin = time.perf_counter()
        wait_for(lambda: store.count("backlog") >= docs, 900, f"{docs} documents indexed", interval_s=0.05)
        return docs / (time.perf_counter() - begin)
    finally:
        if job_id is not None:
            cancel_job(cluster, job_id)
        store.drop()
        client.close()
        delete_topics(deployment.kafka, deployment.topics)


if __name__ == "__main__":
    main()
