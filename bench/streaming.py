"""Serving that streams and keeps up: continuous batching against the sequential path and the static batcher,
time to first token through an `openai` streaming client, and a burst against admission control.

    .venv/ml/bin/python bench/streaming.py [--backlog 24] [--max-new-tokens 32] [--burst 100]

1. Throughput: a backlog of ``--backlog`` queries queued at once, answered by `serve` (SmolLM2, CPU) three
   ways: one at a time (``max_batch=1``, the yardstick), the static batcher (``batching=static``,
   ``max_batch=8``: every row of a batch runs until its longest ends, as `serve` did before), and continuous
   batching (``max_batch=--slots``). Queries/s as a ratio to the yardstick (goal >= 3.0 for one tenant,
   >= 3.5 for four tenants with four adapters in the same batches), and p50/p99 latency from produce to
   answer (goal: continuous p99 below the static batcher's).
2. Time to first token: the same prompts in-process (``Answerer`` + ``Scheduler``: retrieval, prefill, first
   token) against the first content chunk at an `openai` client with ``stream=True`` through `streamtune http`
   → `serve`; medians, ratio (goal <= 1.3).
3. A burst: ``--burst`` concurrent chat completions against one `serve` (about one answer a second) with
   ``http.answer_timeout_s`` 20: every request ends within its timeout + 5 s with 200, 429 or 503; queries
   whose deadline passed before their generation are counted by `serve` (none generated); and the time from
   the burst's last response until `serve` runs no row.

Uses uuid-named topics, collection and registry against the running local stack; removes them after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serving import (  # bench/serving.py
    TENANT,
    TENANTS,
    _backlog,
    _deployment,
    _index_demo_documents,
    _untrained_adapter,
)

from retrieval import connect
from retrieval.store import ChunkStore
from streamtune.contracts import Query
from streamtune.harness import free_port, http_gateway, query_server, sample, wait_for
from streamtune.kafka import create_topics, delete_topics
from streamtune.settings import load_settings
from training.publish import announce
from training.registry import AdapterRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=24)
    parser.add_argument("--slots", type=int, default=24, help="continuous batching's max_batch")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--ttft-queries", type=int, default=8)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    env, settings = _deployment(tmp, args.max_new_tokens)
    questions = [qa["question"] for qa in sample("demo_qa.jsonl")]
    client = connect(settings.weaviate)
    report: dict[str, Any] = {"machine": f"{platform.node()} {platform.machine()}", "cpus": os.cpu_count()}
    try:
        _index_demo_documents(settings, client)
        for i, tenant in enumerate(TENANTS):
            registry = AdapterRegistry(settings.adapters_dir, tenant)
            publish = registry.publish(
                "v0001",
                lambda target, i=i, t=tenant: _untrained_adapter(settings, target, 100 + i, "v0001", t),
                "promoted",
            )
            announce(settings, publish)

        report["throughput"] = {}
        for label, tenants in (("one_tenant", [TENANT]), ("four_tenants", list(TENANTS))):
            runs = {}
            for name, batch, mode in (
                ("sequential", 1, "continuous"),
                ("static", 8, "static"),
                ("continuous", args.slots, "continuous"),
            ):
                with _fresh_topics(env, f"{label}-{name}") as (run_settings, run_env):
                    runs[name] = _backlog(
                        run_settings,
                        {**run_env, "STREAMTUNE__INFERENCE__BATCHING": mode},
                        tmp,
                        tenants,
                        questions,
                        args.backlog,
                        batch,
                    )
            for name in ("static", "continuous"):
                runs[name]["ratio"] = round(runs[name]["qps"] / runs["sequential"]["qps"], 2)
            print(
                f"throughput, {label.replace('_', ' ')}, {args.backlog} queued: "
                + "; ".join(
                    f"{n} {r['qps']:.2f} q/s (x{r.get('ratio', 1.0):.2f}), p50/p99 {r['p50_ms']}/{r['p99_ms']} ms"
                    for n, r in runs.items()
                ),
                flush=True,
            )
            report["throughput"][label] = runs

        with _fresh_topics(env, "ttft") as (run_settings, run_env):
            report["ttft"] = _ttft(run_settings, run_env, tmp, questions[: args.ttft_queries])
        print(f"time to first token: {json.dumps(report['ttft'])}", flush=True)
        with _fresh_topics(env, "burst") as (run_settings, run_env):
            report["burst"] = _burst(run_settings, run_env, tmp, questions, args.burst)
        print(f"burst: {json.dumps(report['burst'])}", flush=True)
        print(json.dumps(report))
    finally:
        ChunkStore(client, settings).drop()
        client.close()
        delete_topics(settings.kafka, settings.topics)


@contextmanager
def _fresh_topics(env: dict[str, str], run: str) -> Iterator[tuple[Any, dict[str, str]]]:
    """Topics of one run's own, with the four tenants' adapters announced on them: a `serve` of a new consumer
    group reads ``queries`` from its beginning, so a run on shared topics would answer every earlier run's
    backlog first."""
    run_env = {**env, "STREAMTUNE__TOPICS__PREFIX": f"{env['STREAMTUNE__TOPICS__PREFIX']}{run}."}
    os.environ.update(run_env)
    settings = load_settings()
    create_topics(settings.kafka, settings.topics)
    for tenant in TENANTS:
        announce(settings, AdapterRegistry(settings.adapters_dir, tenant).get("v0001"))
    try:
        yield settings, run_env
    finally:
        delete_topics(settings.kafka, settings.topics)
        os.environ.update(env)


def _ttft(settings: Any, env: dict[str, str], tmp: Path, questions: list[str]) -> dict[str, Any]:
    """Median time to the first token in-process vs to the first content chunk at an `openai` stream."""
    import openai

    from inference.engine import Answerer
    from inference.scheduler import Scheduler

    answerer = Answerer(settings)
    firsts: dict[str, float] = {}
    scheduler = Scheduler(
        answerer, on_delta=lambda query, seq, text: firsts.setdefault(query.query_id, time.perf_counter())
    )
    local = []
    for i, question in enumerate([questions[0], *questions]):  # the first is a warm-up
        query = Query(query_id=f"ttft-{i}", tenant=TENANT, question=question, stream=True)
        begin = time.perf_counter()
        scheduler.admit([query], [time.monotonic()])
        while scheduler.busy:  # the row runs to its end, so the next measurement starts idle
            scheduler.step()
        if i and query.query_id in firsts:
            local.append(firsts[query.query_id] - begin)
    answerer.close()
    del answerer
    port = free_port()
    server = query_server(tmp / "logs", env)
    gateway = http_gateway(tmp / "logs", {**env, "STREAMTUNE__HTTP__PORT": str(port)})
    server.start()
    gateway.start()
    remote = []
    try:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
        for i, question in enumerate([questions[0], *questions]):
            begin = time.perf_counter()
            stream = api.chat.completions.create(
                model=TENANT, messages=[{"role": "user", "content": question}], stream=True
            )
            seen = None
            for piece in stream:
                if seen is None and piece.choices and piece.choices[0].delta.content:
                    seen = time.perf_counter() - begin
            if i and seen is not None:
                remote.append(seen)
    finally:
        gateway.stop()
        server.stop()
    return {
        "in_process_p50_ms": round(statistics.median(local) * 1000),
        "openai_stream_p50_ms": round(statistics.median(remote) * 1000),
        "ratio": round(statistics.median(remote) / statistics.median(local), 2),
        "prompts": len(local),
    }


def _burst(settings: Any, env: dict[str, str], tmp: Path, questions: list[str], count: int) -> dict[str, Any]:
    """``count`` concurrent chat completions; statuses, the slowest, expired queries and serve's time to idle."""
    import httpx

    port, serve_port = free_port(), free_port()
    timeout_s = 20.0
    burst_env = {
        **env,
        "STREAMTUNE__HTTP__PORT": str(port),
        "STREAMTUNE__HTTP__ANSWER_TIMEOUT_S": str(timeout_s),
        "STREAMTUNE__INFERENCE__METRICS_PORT": str(serve_port),
        "STREAMTUNE__INFERENCE__MAX_NEW_TOKENS": "96",
    }
    server = query_server(tmp / "logs", burst_env)
    gateway = http_gateway(tmp / "logs", burst_env)
    server.start()
    gateway.start()

    def post(i: int) -> tuple[int, float]:
        body = {"model": TENANT, "messages": [{"role": "user", "content": questions[i % len(questions)]}]}
        begin = time.monotonic()
        try:
            status = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=timeout_s + 60
            ).status_code
        except httpx.HTTPError:
            status = -1  # a hang or a broken connection: counted, it is what must not happen
        return status, time.monotonic() - begin

    try:
        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(post, range(count)))
        last = time.monotonic()
        wait_for(lambda: _metric(serve_port, "streamtune_serve_running_rows") == 0, 120, "serve idle", 0.2)
        idle_after = time.monotonic() - last
        expired = _metric(serve_port, "streamtune_deadline_exceeded_total")
    finally:
        gateway.stop()
        server.stop()
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "requests": count,
        "statuses": statuses,
        "slowest_s": round(max(e for _, e in results), 1),
        "limit_s": timeout_s + 5,
        "expired_not_generated": int(expired),
        "serve_idle_after_s": round(idle_after, 1),
    }


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.split("{")[0].split(" ")[0] == name)


if __name__ == "__main__":
    main()
