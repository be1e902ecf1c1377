"""Serving benchmark: query-topic overhead and adapter hot-swap latency.

    .venv/ml/bin/python bench/serving.py [--queries 12] [--swaps 2]

1. Yardstick, measured in the same run: the same retrieval + generation called in-process
   (``Answerer.answer``), median latency over the questions. Then the same questions through
   ``queries`` → ``streamtune serve`` → ``answers`` (``ask``), median end-to-end latency. Result: the
   ratio (goal ≤ 1.1).
2. Hot swap: while queries flow, a new adapter version is published and announced; reported is the
   time from the announcement to the first answer served with it, and how many queries failed or
   went unanswered across the swaps (goal 0).

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
from importlib.resources import files
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from inference.service import ask
from retrieval import connect
from retrieval.store import ChunkStore, DocumentChunks
from streamtune.contracts import Query, encode
from streamtune.harness import query_server
from streamtune.kafka import client_config, create_topics, delete_topics
from streamtune.manifest import Manifest
from streamtune.models import base_model_source, load_embedder, sha256_file
from streamtune.settings import load_settings
from streamtune.topics import ANSWERS, QUERIES, topic_name
from training.publish import announce
from training.registry import AdapterRegistry

TENANT = "bench"


def _untrained_adapter(settings: Any, target: Path, seed: int, name: str) -> None:
    """A real LoRA adapter for the base model (random B, so it changes the output slightly)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from training.trainer import lora_config

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_model_source(settings)), lora_config(settings.training)
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1e-3)
    model.save_pretrained(str(target))
    (target / "manifest.json").write_text(_manifest(settings, name, target).to_json())


def _manifest(settings: Any, name: str, folder: Path) -> Manifest:
    """A manifest that says what this adapter is: random LoRA weights, trained on nothing."""
    from datetime import UTC, datetime

    from streamtune.manifest import (
        AdapterDigest,
        BaseModelIdentity,
        CodeVersion,
        DataWindow,
        EvalScores,
        Metrics,
        SideScores,
        Split,
        TrainFigures,
        Verdict,
    )
    from training.trainer import ADAPTER_WEIGHTS

    nothing = EvalScores(loss=float("nan"), exact_match=float("nan"), token_f1=float("nan"), examples=0)
    scores = SideScores(held_out=nothing, anchor=nothing)
    return Manifest(
        tenant=TENANT,
        version=name,
        created_at=datetime.now(UTC),
        base_model=BaseModelIdentity(setting=settings.models.base_model, source=base_model_source(settings)),
        parent=None,
        data=DataWindow(topic="none", ranges={}, replay_ranges={}, new_examples=0, train=0, held_out=0, replay=0),
        split=Split(seed=0, held_out_percent=0),
        training=settings.training.model_dump(mode="json"),
        quantization="none (benchmark: random LoRA weights)",
        libraries={},
        code=CodeVersion(streamtune="bench", training_sha256=""),
        metrics=Metrics(
            train=TrainFigures(steps=0, tokens=0, seconds=0, tokens_per_second=0), candidate=scores, current=scores
        ),
        gate=Verdict(promoted=True, reason="benchmark hot swap", anchor_tolerance=0),
        adapter=AdapterDigest(sha256=sha256_file(folder / ADAPTER_WEIGHTS)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--swaps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--interval",
        type=float,
        default=2.5,
        help="seconds between queries during swaps (keep it above one answer's time)",
    )
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    env = {
        "STREAMTUNE__TOPICS__PREFIX": f"bench-{tag}.",
        "STREAMTUNE__WEAVIATE__COLLECTION": f"Bench{tag}",
        "STREAMTUNE__INFERENCE__GROUP_ID": f"bench-{tag}",
        "STREAMTUNE__INFERENCE__MAX_NEW_TOKENS": str(args.max_new_tokens),
        "STREAMTUNE__TRAINING__ADAPTERS_DIR": str(tmp / "adapters"),
    }
    import os

    os.environ.update(env)
    settings = load_settings()
    create_topics(settings.kafka, settings.topics)
    documents = [
        json.loads(x) for x in files("streamtune").joinpath("data", "demo_documents.jsonl").read_text().splitlines()
    ]
    questions = [
        json.loads(x)["question"]
        for x in files("streamtune").joinpath("data", "demo_qa.jsonl").read_text().splitlines()
    ]
    questions = (questions * 4)[: args.queries]
    client = connect(settings.weaviate)
    server = query_server(tmp / "logs", env)
    try:
        embedder = load_embedder(settings)
        store = ChunkStore(client, settings)
        store.ensure_collection(int(embedder.get_sentence_embedding_dimension()))
        vectors = embedder.encode([d["text"] for d in documents], normalize_embeddings=True).tolist()
        store.upsert(
            [
                DocumentChunks(TENANT, d["doc_id"], d["title"], [d["text"]], [v], "bench", "2026-11-21T00:00:00Z")
                for d, v in zip(documents, vectors, strict=True)
            ]
        )

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
                    **swap,
                }
            )
        )
    finally:
        server.stop()
        ChunkStore(client, settings).drop()
        client.close()
        delete_topics(settings.kafka, settings.topics)


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
