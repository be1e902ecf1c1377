"""Ingest benchmark: event → searchable latency, job throughput against the physical limit, and recovery
from a Weaviate outage.

    .venv/flink/bin/python bench/ingest.py [--docs 600] [--repeats 3] [--rates 10] [--fractions 0.5]
        [--seconds 30] [--outage-docs 300] [--plot bench/plots/freshness.png]

Yardstick, measured in the same run: raw batched ``encode`` throughput of the same embedding model on
the same machine (documents/s, each document one chunk), with the job's torch threads, allocator
(``memory.keep_freed_mb``; ``--yardstick-allocator glibc``: glibc's defaults, as a plain script runs) and
OpenMP wait policy (``OMP_WAIT_POLICY``, PASSIVE as the Makefile runs the job, unless the environment says
otherwise). The job's
throughput is documents/s through the whole Flink job (Kafka → parse → scrub → chunk → embed → Weaviate) on a
backlog, from the first produce to the last object Weaviate created, after a warm-up of one full batch per
partition (the yardstick is warmed up too). This machine's speed drifts by 20-30 % within a minute, so the
backlog runs ``--repeats`` times, each round between two yardstick runs; per round the job's docs/s ÷ the mean
of the two, and the result is the median round (goal ≥ 0.9). Beside it, the share of the machine's CPU each
process used during that round's backlog and during the yardstick (from /proc, Linux): what the job's Python
functions (encoding among them), its JVM, Weaviate, Kafka and this benchmark took, and what stayed idle; and the
minor page faults the job's Python took in each round (memory it faulted in afresh, ``memory.keep_freed_mb``).

Freshness: documents produced at a steady rate, each one's latency from produce to its object's creation
time in Weaviate (the server's clock, same machine), p50 / p99, and the rate the documents became searchable
at; at ``--rates`` (events/s) and at ``--fractions`` of the throughput just
measured (goal: p99 ≤ 1 s at 0.5). ``--plot`` draws latency and delivered rate against the offered rate.
Settings under test (``STREAMTUNE__EMBEDDING__FLUSH_MS``, ``STREAMTUNE__STREAMS__BUNDLE_TIME_MS``,
``STREAMTUNE__STREAMS__BUFFER_TIMEOUT_MS``, ...) come from the environment, as the job's do.

Outage: with the job running, Weaviate is stopped, ``--outage-docs`` documents are produced, and Weaviate is
started again; reported is the time from Weaviate answering again to the backlog being indexed, beside
the time the same backlog takes at the job's measured throughput (the ratio is the cost of the retries);
``--outage-docs 0`` leaves it out.

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
from pathlib import Path
from typing import Any

from common import cpus, document, raw_encoder, send_document
from confluent_kafka import Producer

from retrieval import connect
from streamtune.harness import free_port, ingest_job, isolated_env
from streamtune.kafka import client_config, create_topics, delete_topics
from streamtune.settings import MemorySettings, load_settings
from streamtune.stack import Stack
from streamtune.topics import DOMAIN_EVENTS, topic_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600, help="backlog size for the throughput run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="backlog rounds, each between two yardstick runs; the result is the median (upper of an even count)",
    )
    parser.add_argument("--rates", type=float, nargs="*", default=[10.0], help="events/s of freshness runs")
    parser.add_argument(
        "--fractions", type=float, nargs="*", default=[0.5], help="freshness runs at these shares of the throughput"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each freshness run")
    parser.add_argument("--outage-docs", type=int, default=300, help="documents produced while Weaviate is down")
    parser.add_argument("--plot", type=Path, help="PNG of latency and delivered rate against the offered rate")
    parser.add_argument(
        "--yardstick-allocator",
        choices=("job", "glibc"),
        default="job",
        help="job: the yardstick keeps freed memory as the job does (memory.keep_freed_mb); glibc: its defaults",
    )
    args = parser.parse_args()

    # The yardstick encodes under the OpenMP wait policy the job runs with (the Makefile's, PASSIVE, unless
    # the environment says otherwise); it must be set before torch is first imported.
    policy = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
            STREAMTUNE__STACK__WEAVIATE_METRICS_PORT=str(free_port()),
            STREAMTUNE__CACHE_DIR=str(shared.cache_dir),
            OMP_WAIT_POLICY=policy,
        )
        os.environ.update(env)
        settings = load_settings()
        weaviate = Stack(settings, say=lambda _: None, only=("weaviate",))
        weaviate.up()
        create_topics(settings.kafka, settings.topics)
        texts = [document(i) for i in range(args.docs)]
        yardstick = settings
        if args.yardstick_allocator == "glibc":
            yardstick = settings.model_copy(update={"memory": MemorySettings(keep_freed_mb=0)})
        encode = raw_encoder(yardstick, texts)
        raw_cpu: list[float] = []  # share of the machine the yardstick's own process used
        raw_shares: list[dict[str, float]] = []  # and what the machine's other processes used meanwhile

        def raw_encode() -> float:
            begin, cpu, ticks = time.perf_counter(), time.process_time(), _cpu_ticks()
            rate = encode()
            seconds = time.perf_counter() - begin
            raw_cpu.append((time.process_time() - cpu) / seconds / cpus())
            raw_shares.append(_cpu_shares(ticks, _cpu_ticks(), seconds))
            return rate

        yardsticks = [raw_encode()]

        job = ingest_job(Path(tmp), env)
        job.start()
        client = connect(settings.weaviate)
        producer = Producer(client_config(settings.kafka))
        topic = topic_name(DOMAIN_EVENTS, settings.topics)
        try:
            # Warm, as the yardstick is: a full batch per partition through every step before the clock runs.
            warmup = settings.embedding.batch_size * settings.topics.partitions
            for i in range(warmup):
                send_document(producer, topic, "warmup", i, document(args.docs + i))
            producer.flush(15)
            _wait_count(client, settings.weaviate.collection, "warmup", warmup, 300)

            # Rounds of backlog, each between two yardstick runs (the machine's speed drifts by 20-30 % within a
            # minute): per round the job's docs/s ÷ the mean of the two; the result is the median round.
            rounds: list[dict[str, Any]] = []
            for k in range(args.repeats):
                rounds.append(_backlog(producer, topic, client, settings.weaviate.collection, f"throughput{k}", texts))
                yardsticks.append(raw_encode())
                rounds[-1]["raw_docs_per_s"] = (yardsticks[-2] + yardsticks[-1]) / 2
                rounds[-1]["ratio"] = rounds[-1]["docs_per_s"] / rounds[-1]["raw_docs_per_s"]
                print(
                    f"round {k + 1}/{args.repeats}: job {rounds[-1]['docs_per_s']:.0f} docs/s, raw encode "
                    f"{yardsticks[-2]:.0f} before / {yardsticks[-1]:.0f} after; ratio {rounds[-1]['ratio']:.2f}",
                    flush=True,
                )
            middle = sorted(rounds, key=lambda r: float(r["ratio"]))[len(rounds) // 2]
            job_rate, raw_rate, cpu = middle["docs_per_s"], middle["raw_docs_per_s"], middle["cpu"]
            seconds = args.docs / job_rate
            print(
                f"yardstick: raw batched encode {raw_rate:.0f} docs/s in the median round (batch "
                f"{settings.embedding.batch_size}; allocator: {args.yardstick_allocator}'s; all runs "
                f"{', '.join(f'{y:.0f}' for y in yardsticks)}), using "
                f"{statistics.mean(raw_cpu):.0%} of the machine's CPU"
            )
            print(
                f"job: {job_rate:.0f} docs/s through Kafka → Flink → Weaviate; ratio {job_rate / raw_rate:.2f} "
                f"(median of {args.repeats} rounds: {', '.join(format(r['ratio'], '.2f') for r in rounds)}); "
                f"page faults of the job's Python per round: {', '.join(str(r['job_page_faults']) for r in rounds)}"
            )
            print(
                f"CPU during that round's backlog ({seconds:.1f}s x {cpus()} cores = {seconds * cpus():.1f} core-s): "
                + ", ".join(f"{role} {share:.0%}" for role, share in cpu.items())
            )
            raw_others = {role: statistics.mean(s[role] for s in raw_shares) for role in raw_shares[0]}
            print(
                f"CPU during the yardstick (mean of all runs; OMP_WAIT_POLICY={policy} for both): "
                + ", ".join(f"{role} {share:.0%}" for role, share in raw_others.items())
            )

            rates = sorted([*args.rates, *(f * job_rate for f in args.fractions)])
            runs = [
                _freshness(producer, topic, client, settings.weaviate.collection, f"fresh{k}", rate, args.seconds)
                for k, rate in enumerate(rates)
            ]
            for run in runs:
                print(
                    f"freshness at {run['rate']:.1f} events/s ({run['rate'] / job_rate:.2f} of the throughput) over "
                    f"{args.seconds:g}s: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms; searchable at "
                    f"{run['delivered_rate']:.1f} docs/s",
                    flush=True,
                )
            if args.plot:
                _plot(runs, job_rate, raw_rate, args.plot)
            outage: dict[str, float] = {}
            if args.outage_docs:
                client.close()
                weaviate.down()
                for i in range(args.outage_docs):
                    send_document(producer, topic, "outage", i, document(i))
                producer.flush(30)
                time.sleep(5)  # the job meets the outage with a backlog waiting
                weaviate.up()
                back = time.perf_counter()
                client = connect(settings.weaviate)
                _wait_count(client, settings.weaviate.collection, "outage", args.outage_docs, 900)
                drained = time.perf_counter() - back
                expected = args.outage_docs / job_rate
                outage = {"outage_docs": args.outage_docs, "drained_after_return_s": round(drained, 1)}
                outage["drain_ratio"] = round(drained / expected, 2)
                print(
                    f"outage: {args.outage_docs} documents produced while Weaviate was down; indexed "
                    f"{drained:.1f}s after it was back (at the job's throughput they take {expected:.1f}s; "
                    f"ratio {drained / expected:.2f})"
                )
            print(
                json.dumps(
                    {
                        "machine": f"{platform.node()} {platform.machine()}",
                        "cpus": cpus(),
                        "raw_encode_docs_per_s": round(raw_rate, 1),
                        "raw_encode_runs": [round(y, 1) for y in yardsticks],
                        "raw_encode_cpu_share": round(statistics.mean(raw_cpu), 3),
                        "raw_encode_cpu_shares": {role: round(share, 3) for role, share in raw_others.items()},
                        "job_docs_per_s": round(job_rate, 1),
                        "ratio": round(job_rate / raw_rate, 3),
                        "ratio_per_round": [round(r["ratio"], 3) for r in rounds],
                        "job_page_faults_per_round": [r["job_page_faults"] for r in rounds],
                        "backlog_cpu_shares": {role: round(share, 3) for role, share in cpu.items()},
                        "omp_wait_policy": policy,
                        "yardstick_allocator": args.yardstick_allocator,
                        "settings": {
                            "embedding.flush_ms": settings.embedding.flush_ms,
                            "streams.bundle_time_ms": settings.streams.bundle_time_ms,
                            "streams.buffer_timeout_ms": settings.streams.buffer_timeout_ms,
                            "memory.keep_freed_mb": settings.memory.keep_freed_mb,
                        },
                        "freshness": runs,
                        **outage,
                    }
                )
            )
        finally:
            client.close()
            job.stop()
            weaviate.down()
            delete_topics(settings.kafka, settings.topics)


_JOB_PYTHON = "job: Python"
_ROLES = (  # the first whose marks are all in a process's command line names its role
    ("job: Flink (JVM)", ("java ", "flink")),
    # a local job runs its Python functions in the driver's process (PyFlink's loopback mode), else in workers
    (_JOB_PYTHON, ("streamtune streams run",)),
    (_JOB_PYTHON, ("pyflink.fn_execution",)),
    ("Weaviate", ("weaviate-server",)),
    ("Kafka", ("kafka.Kafka",)),
)


_THIS = "this benchmark (yardstick, polling)"


def _cpu_ticks() -> dict[int, tuple[str, int, int]]:
    """Per process: its role (``_ROLES``, else "other"), CPU ticks so far (user + system) and minor page faults
    so far, from /proc (Linux)."""
    ticks: dict[int, tuple[str, int, int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        role = next((name for name, marks in _ROLES if all(m in cmdline for m in marks)), "other")
        if int(proc.name) == os.getpid():
            role = _THIS
        ticks[int(proc.name)] = (role, int(fields[11]) + int(fields[12]), int(fields[7]))
    return ticks


def _cpu_shares(
    before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]], seconds: float
) -> dict[str, float]:
    """Share of the machine's core-seconds over ``seconds`` each role used between two ``_cpu_ticks``; "idle"
    is what no process used."""
    hertz = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid, (role, total, _) in after.items():
        used[role] = used.get(role, 0.0) + (total - before.get(pid, (role, 0, 0))[1]) / hertz
    capacity = seconds * cpus()
    roles = [*dict.fromkeys(name for name, _ in _ROLES), _THIS, "other"]
    shares = {role: used.get(role, 0.0) / capacity for role in roles}
    shares["idle"] = max(1.0 - sum(shares.values()), 0.0)
    return shares


def _page_faults(before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]], role: str) -> int:
    """Minor page faults the processes of ``role`` took between two ``_cpu_ticks``."""
    return sum(faults - before.get(pid, (role, 0, 0))[2] for pid, (name, _, faults) in after.items() if name == role)


def _backlog(
    producer: Producer, topic: str, client: object, collection: str, tenant: str, texts: list[str]
) -> dict[str, Any]:
    """``texts`` produced at once for ``tenant``: docs/s from the first produce to the last object Weaviate
    created (its clock, this machine), and each process's share of the CPU meanwhile. The benchmark polls every
    250 ms, not every 50 ms, so that its polling neither loads the job's cores nor sets the precision of the end."""
    begin, ticks, wall = time.perf_counter(), _cpu_ticks(), time.time()
    for i, text in enumerate(texts):
        send_document(producer, topic, tenant, i, text)
    producer.flush(30)
    _wait_count(client, collection, tenant, len(texts), 600, poll_s=0.25)
    after = _cpu_ticks()
    cpu = _cpu_shares(ticks, after, time.perf_counter() - begin)
    seconds = max(_created(client, collection, tenant).values()) - wall
    return {"docs_per_s": len(texts) / seconds, "cpu": cpu, "job_page_faults": _page_faults(ticks, after, _JOB_PYTHON)}


def _wait_count(
    client: object, collection: str, tenant: str, count: int, timeout_s: float, poll_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    col = client.collections.get(collection)  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        if (
            col.tenants.exists(tenant)
            and col.with_tenant(tenant).aggregate.over_all(total_count=True).total_count >= count
        ):
            return
        time.sleep(poll_s)
    raise TimeoutError(f"{tenant}: fewer than {count} chunks after {timeout_s}s")


def _freshness(
    producer: Producer, topic: str, client: object, collection: str, tenant: str, rate: float, seconds: float
) -> dict[str, float]:
    """Documents produced at ``rate`` for ``seconds``: produce → searchable p50 / p99, and the rate they
    became searchable at (first produced to last searchable)."""
    sent: dict[str, float] = {}
    count = max(int(rate * seconds), 2)
    start = time.time()
    for i in range(count):
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        sent[f"{tenant}-{i}"] = time.time()
        send_document(producer, topic, tenant, i, document(i, 20))
        producer.poll(0)
    producer.flush(15)
    _wait_count(client, collection, tenant, count, 300)
    created = _created(client, collection, tenant)
    latencies = sorted(created[doc] - at for doc, at in sent.items())
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else latencies[-1]
    return {
        "rate": round(rate, 2),
        "p50_ms": round(statistics.median(latencies) * 1000),
        "p99_ms": round(p99 * 1000),
        "delivered_rate": round(count / (max(created.values()) - min(sent.values())), 2),
        "documents": count,
    }


def _plot(runs: list[dict[str, float]], job_rate: float, raw_rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [r["rate"] for r in runs]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    lat.plot(offered, [r["p50_ms"] for r in runs], "o-", label="p50")
    lat.plot(offered, [r["p99_ms"] for r in runs], "o-", label="p99")
    lat.axhline(1000, color="grey", linestyle=":", label="1 s")
    lat.set_xlabel("offered events/s")
    lat.set_ylabel("produce → searchable, ms")
    lat.legend()
    thr.plot(offered, [r["delivered_rate"] for r in runs], "o-", label="searchable docs/s")
    thr.plot(offered, offered, ":", color="grey", label="offered")
    thr.axhline(job_rate, color="C2", linestyle="--", label=f"backlog throughput {job_rate:.0f}/s")
    thr.axhline(raw_rate, color="C3", linestyle="--", label=f"raw encode {raw_rate:.0f}/s")
    thr.set_xlabel("offered events/s")
    thr.set_ylabel("docs/s")
    thr.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def _created(client: object, collection: str, tenant: str) -> dict[str, float]:
    """Per document of ``tenant``: the time Weaviate created its object (its own clock, this machine)."""
    from weaviate.classes.query import MetadataQuery

    col = client.collections.get(collection).with_tenant(tenant)  # type: ignore[attr-defined]
    return {
        obj.properties["doc_id"]: obj.metadata.creation_time.timestamp()
        for obj in col.iterator(return_properties=["doc_id"], return_metadata=MetadataQuery(creation_time=True))
    }


if __name__ == "__main__":
    main()
