"""Serving benchmark: query-topic overhead, batched throughput, adapter hot-swap latency, the adapter cache.

    .venv/ml/bin/python bench/serving.py [--queries 12] [--swaps 2] [--backlog 32]

1. Yardstick, measured in the same run: the same retrieval + generation called in-process
   (``Answerer.answer``), median latency over the questions. Then the same questions through
   ``queries`` → ``streamtune serve`` → ``answers`` (``ask``), median end-to-end latency. Result: the
   ratio (goal ≤ 1.1).
2. Batched throughput: a backlog of ``--backlog`` queries answered by ``serve`` with
   ``inference.max_batch=8`` ÷ the same backlog answered by ``serve`` with ``max_batch=1`` (the sequential
   path), queries/s, for one tenant (goal ≥ 3.0) and for four tenants with four different adapters in the
   same batches (goal ≥ 2.5); p50/p99 of each query's latency from produce to answer.
3. Hot swap: while queries flow, a new adapter version is published and announced; reported is the
   time from the announcement to the first answer served with it, and how many queries failed or
   went unanswered across the swaps (goal 0).
4. The adapter cache: time to load one adapter, and the process's resident memory with 0, 4, 8 and 16
   adapters loaded.

Uses uuid-named topics, collection and registry against the running local stack; removes them after.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from inference.service import ask
from retrieval import connect
from retrieval.store import ChunkStore, DocumentChunks
from streamtune.contracts import Query, encode
from streamtune.harness import isolated_env, query_server, sample
from streamtune.kafka import client_config, create_topics, delete_topics
from streamtune.manifest import Manifest
from streamtune.models import base_model_source, load_embedder, sha256_file
from streamtune.settings import load_settings
from streamtune.topics import ANSWERS, QUERIES, topic_name
from training.publish import announce
from training.registry import AdapterRegistry

TENANT = "bench"
TENANTS = ("bench-a", "bench-b", "bench-c", "bench-d")


def _untrained_adapter(settings: Any, target: Path, seed: int, name: str, tenant: str = TENANT) -> None:
    """A real LoRA adapter for the base model (random B, so it changes the output slightly)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from training.trainer import lora_config

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_model_source(settings)), lora_config(settings.training)
    )
    for parameter_name, param in model.named_parameters():
        if "lora_B" in parameter_name:
            torch.nn.init.normal_(param, std=1e-3)
    model.save_pretrained(str(target))
    (target / "manifest.json").write_text(_manifest(settings, name, target, tenant).to_json())


def _manifest(settings: Any, name: str, folder: Path, tenant: str) -> Manifest:
    """A manifest that says what this adapter is: random LoRA weights, trained on nothing."""
    from streamtune.harness import sample_manifest
    from streamtune.manifest import AdapterDigest, BaseModelIdentity
    from training.trainer import ADAPTER_WEIGHTS

    return sample_manifest(
        tenant,
        name,
        base_model=BaseModelIdentity(setting=settings.models.base_model, source=base_model_source(settings)),
        training=settings.training.model_dump(mode="json"),
        quantization="none (benchmark: random LoRA weights)",
        gate={"reason": "benchmark hot swap"},
        adapter=AdapterDigest(sha256=sha256_file(folder / ADAPTER_WEIGHTS)),
    )


def _deployment(tmp: Path, max_new_tokens: int) -> tuple[dict[str, str], Any]:
    """The variables of an isolated deployment (set in this process too) and its settings, its topics created.
    Every question generates (none abstains), so the workload is what it was before grounding."""
    import os

    env = isolated_env(
        tmp,
        "bench",
        STREAMTUNE__INFERENCE__MAX_NEW_TOKENS=str(max_new_tokens),
        STREAMTUNE__INFERENCE__NO_CONTEXT="answer",
    )
    os.environ.update(env)
    settings = load_settings()
    create_topics(settings.kafka, settings.topics)
    return env, settings


def _index_demo_documents(settings: Any, client: Any) -> None:
    """The bundled demo documents, indexed for ``TENANT`` and each of ``TENANTS``."""
    documents = sample("demo_documents.jsonl")
    embedder = load_embedder(settings)
    store = ChunkStore(client, settings)
    store.ensure_collection(int(embedder.get_sentence_embedding_dimension()))
    vectors = embedder.encode([d["text"] for d in documents], normalize_embeddings=True).tolist()
    for tenant in (TENANT, *TENANTS):
        store.upsert(
            [
                DocumentChunks(tenant, d["doc_id"], d["title"], [d["text"]], [v], "bench", "2026-11-21T00:00:00Z")
                for d, v in zip(documents, vectors, strict=True)
            ]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--swaps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--backlog", type=int, default=32, help="queries in each throughput run")
    parser.add_argument(
        "--interval",
        type=float,
        default=2.5,
        help="seconds between queries during swaps (keep it above one answer's time)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    env, settings = _deployment(tmp, args.max_new_tokens)
    questions = [qa["question"] for qa in sample("demo_qa.jsonl")]
    questions = (questions * 4)[: args.queries]
    client = connect(settings.weaviate)
    server = query_server(tmp / "logs", env)
    try:
        _index_demo_documents(settings, client)

        from inference.engine import Answerer

        answerer = Answerer(settings)
        answerer.answer(Query(query_id="warm", tenant=TENANT, question=questions[0]))
        local = []
        for i, question in enumerate(questions):
            begin = time.perf_counter()
            answerer.answer(Query(query_id=f"local-{i}", tenant=TENANT, question=question))
            local.append(time.perf_counter() - begin)
        answerer.close()
        del answerer
        print(
            f"yardstick: in-process retrieval + generation, median {statistics.median(local) * 1000:.0f} ms", flush=True
        )

        server.start()
        ask(settings, questions[0], TENANT)  # warm-up
        remote = []
        for question in questions:
            begin = time.perf_counter()
            answer = ask(settings, question, TENANT)
            remote.append(time.perf_counter() - begin)
            assert answer.error is None, answer.error
        ratio = statistics.median(remote) / statistics.median(local)
        print(
            f"through queries → serve → answers: median {statistics.median(remote) * 1000:.0f} ms; ratio {ratio:.2f}",
            flush=True,
        )
        over_http = _http_latencies(settings, env, tmp, questions)
        http_ratio = statistics.median(over_http) / statistics.median(local)
        print(
            f"through the HTTP gateway (POST /v1/chat/completions): median {statistics.median(over_http) * 1000:.0f} "
            f"ms; ratio {http_ratio:.2f}",
            flush=True,
        )

        server.stop()
        for i, tenant in enumerate(TENANTS):
            registry = AdapterRegistry(settings.adapters_dir, tenant)
            announce(
                settings,
                registry.publish(
                    "v0001",
                    lambda target, i=i, t=tenant: _untrained_adapter(settings, target, 100 + i, "v0001", t),
                    "promoted",
                ),
            )
        throughput = {}
        for label, tenants in (("one_tenant", [TENANT]), ("four_tenants", list(TENANTS))):
            runs = {batch: _backlog(settings, env, tmp, tenants, questions, args.backlog, batch) for batch in (1, 8)}
            ratio_b = runs[8]["qps"] / runs[1]["qps"]
            print(
                f"throughput, {label.replace('_', ' ')}: sequential {runs[1]['qps']:.2f} q/s, batched "
                f"{runs[8]['qps']:.2f} q/s, ratio {ratio_b:.2f}; latency p50/p99 sequential "
                f"{runs[1]['p50_ms']:.0f}/{runs[1]['p99_ms']:.0f} ms, batched {runs[8]['p50_ms']:.0f}/"
                f"{runs[8]['p99_ms']:.0f} ms",
                flush=True,
            )
            throughput[label] = {"sequential": runs[1], "batched": runs[8], "ratio": round(ratio_b, 3)}
        cache = _adapter_cache(settings, tmp)
        print(f"adapter cache: {json.dumps(cache)}", flush=True)
        server.start()

        swap = _hot_swaps(settings, args.swaps, args.interval)
        print(
            json.dumps(
                {
                    "machine": f"{platform.node()} {platform.machine()}",
                    "base_model": settings.models.base_model,
                    "max_new_tokens": args.max_new_tokens,
                    "queries": len(questions),
                    "in_process_median_ms": round(statistics.median(local) * 1000),
                    "topic_median_ms": round(statistics.median(remote) * 1000),
                    "ratio": round(ratio, 3),
                    "http_median_ms": round(statistics.median(over_http) * 1000),
                    "http_ratio": round(http_ratio, 3),
                    "throughput": throughput,
                    "adapter_cache": cache,
                    **swap,
                }
            )
        )
    finally:
        server.stop()
        ChunkStore(client, settings).drop()
        client.close()
        delete_topics(settings.kafka, settings.topics)


def _http_latencies(settings: Any, env: dict[str, str], tmp: Path, questions: list[str]) -> list[float]:
    """Each question as an OpenAI chat completion through `streamtune http` (no key: loopback)."""
    import urllib.request

    from streamtune.harness import free_port, http_gateway

    port = free_port()
    gateway = http_gateway(tmp / "logs", {**env, "STREAMTUNE__HTTP__PORT": str(port)})
    gateway.start()
    try:

        def complete(question: str) -> float:
            body = json.dumps({"model": TENANT, "messages": [{"role": "user", "content": question}]}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
            )
            begin = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as response:
                reply = json.loads(response.read())
            assert reply["choices"][0]["message"]["content"] is not None
            return time.perf_counter() - begin

        complete(questions[0])  # warm-up
        return [complete(question) for question in questions]
    finally:
        gateway.stop()


def _backlog(
    settings: Any, env: dict[str, str], tmp: Path, tenants: list[str], questions: list[str], count: int, batch: int
) -> dict[str, float]:
    """``count`` queries, round-robin over ``tenants``, queued at once and answered by a `serve` of ``batch``."""
    group = f"bench-{batch}-{uuid.uuid4().hex[:6]}"
    server = query_server(tmp / "logs", {**env, "STREAMTUNE__INFERENCE__GROUP_ID": group,
                                         "STREAMTUNE__INFERENCE__MAX_BATCH": str(batch)})  # fmt: skip
    consumer = Consumer(client_config(settings.kafka, **{"group.id": uuid.uuid4().hex, "auto.offset.reset": "latest"}))
    consumer.subscribe([topic_name(ANSWERS, settings.topics)])
    consumer.poll(2.0)
    server.start()
    try:
        warm = Query(query_id=f"warm-{group}", tenant=tenants[0], question=questions[0])
        _produce(settings, [warm])
        _collect(consumer, {warm.query_id}, {})
        queries = [
            Query(query_id=f"{group}-{i}", tenant=tenants[i % len(tenants)], question=questions[i % len(questions)])
            for i in range(count)
        ]
        sent = _produce(settings, queries)
        begin = min(sent.values())
        received: dict[str, float] = {}
        _collect(consumer, set(sent), received)
    finally:
        server.stop()
        consumer.close()
    latencies = sorted(received[q] - sent[q] for q in sent)
    return {
        "qps": round(count / (max(received.values()) - begin), 3),
        "p50_ms": round(statistics.median(latencies) * 1000),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000),
    }


def _produce(settings: Any, queries: list[Query]) -> dict[str, float]:
    out = Producer(client_config(settings.kafka))
    sent = {}
    for query in queries:
        out.produce(topic_name(QUERIES, settings.topics), key=query.query_id.encode(), value=encode(query))
        sent[query.query_id] = time.monotonic()
    out.flush(30)
    return sent


def _collect(consumer: Any, wanted: set[str], received: dict[str, float], timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(received):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted - set(received))} answers missing after {timeout_s:.0f}s")
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            answer = json.loads(message.value() or b"")
            assert answer["error"] is None, answer["error"]
            received.setdefault(answer["query_id"], time.monotonic())


def _adapter_cache(settings: Any, tmp: Path) -> dict[str, Any]:
    """Load time of one adapter, and resident memory with 0, 4, 8 and 16 adapters loaded (SmolLM2 LoRA r16)."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    from inference.adapters import AdapterCache, Announced

    store = tmp / "cache-adapters"
    adapters = []
    for i in range(16):
        folder = store / f"c{i:02d}" / "v0001"
        folder.mkdir(parents=True)
        _untrained_adapter(settings, folder, 200 + i, "v0001", f"c{i:02d}")
        adapters.append(Announced(f"c{i:02d}", "v0001", folder, sha256_file(folder / "adapter_model.safetensors")))
    gc.collect()
    base = AutoModelForCausalLM.from_pretrained(base_model_source(settings), dtype=torch.float32)
    memory = {"0": _rss_mb()}
    cache = AdapterCache(base, capacity=16)
    loads: list[float] = []
    cache.on_load = lambda tenant, seconds: loads.append(seconds)
    for n in (4, 8, 16):
        cache.ensure(adapters[:n])
        gc.collect()
        memory[str(n)] = _rss_mb()
    return {
        "load_ms_median": round(statistics.median(loads) * 1000, 1),
        "rss_mb_by_loaded": memory,
        "adapter_file_mb": round((adapters[0].path / "adapter_model.safetensors").stat().st_size / 2**20, 1),
    }


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _hot_swaps(settings: Any, swaps: int, interval: float) -> dict[str, Any]:
    registry = AdapterRegistry(settings.adapters_dir, TENANT)
    sent: list[str] = []
    stop = threading.Event()

    def flow() -> None:
        producer = Producer(client_config(settings.kafka))
        while not stop.is_set():
            query_id = f"swap-{len(sent)}"
            query = Query(query_id=query_id, tenant=TENANT, question="How much is a city bike per day?")
            producer.produce(topic_name(QUERIES, settings.topics), key=query_id.encode(), value=encode(query))
            producer.flush(10)
            sent.append(query_id)
            time.sleep(interval)

    consumer = Consumer(client_config(settings.kafka, **{"group.id": uuid.uuid4().hex, "auto.offset.reset": "latest"}))
    consumer.subscribe([topic_name(ANSWERS, settings.topics)])
    consumer.poll(2.0)
    thread = threading.Thread(target=flow)
    thread.start()
    answers: dict[str, dict[str, Any]] = {}
    delays = []
    try:
        for n in range(swaps):
            name = registry.next_name()
            version = registry.publish(
                name, lambda target, n=n, name=name: _untrained_adapter(settings, target, n, name), "promoted"
            )
            announced = time.monotonic()
            announce(settings, version)
            while True:
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    answer = json.loads(message.value() or b"")
                    answers[answer["query_id"]] = answer
                    if answer["adapter_version"] == name:
                        delays.append(time.monotonic() - announced)
                        break
                if time.monotonic() - announced > 120:
                    raise TimeoutError(f"{name} not served within 120 s")
            print(
                f"hot swap {n + 1}: {name} announced → first answer with it in {delays[-1] * 1000:.0f} ms", flush=True
            )
    finally:
        stop.set()
        thread.join()
    deadline = time.monotonic() + 120
    while not set(sent) <= set(answers) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            answer = json.loads(message.value() or b"")
            answers[answer["query_id"]] = answer
    consumer.close()
    failed = [q for q in sent if answers.get(q, {}).get("error")]
    missing = [q for q in sent if q not in answers]
    print(f"queries during swaps: {len(sent)}; failed {len(failed)}; unanswered {len(missing)}", flush=True)
    return {
        "swap_ms": [round(d * 1000) for d in delays],
        "swap_interval_s": interval,
        "swap_queries": len(sent),
        "swap_failed": len(failed),
        "swap_unanswered": len(missing),
    }


if __name__ == "__main__":
    main()
