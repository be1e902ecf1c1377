"""`make demo`: the whole loop on a fictional bike shop, on one CPU machine.

Stack up → ingest job → publish the sample domain (documents and vetted QA pairs) → wait until indexed
→ train and gate the first adapter, which becomes the canary beside the base model → answer questions
through ``queries`` / ``answers`` with citations and the adapter version → rate answers as a user who knows
the truth would (events, and one over HTTP) until the decision step promotes or rolls back the canary →
change a fact and show the answer change. A canary that an earlier run left undecided is not trained over (one
trial at a time): its trial goes on with this run's rounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from streamtune.contracts import encode
from streamtune.errors import ConfigError
from streamtune.harness import (
    ServiceProcess,
    document_upserted,
    ingest_job,
    qa_recorded,
    query_server,
    sample,
    wait_for,
)
from streamtune.kafka import committed_end_offsets, create_topics, producer
from streamtune.settings import Settings
from streamtune.stack import Stack
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name

__all__ = ["main", "register"]

TENANT = "fjordline"
QUESTIONS = (
    "How long do I have to return an unused item?",
    "Where do orders ship from?",
    "How much does a basic tune-up cost?",
    "Who won the football world cup in 2022?",  # off-topic: no document is relevant, so serve abstains
)
CHANGED_DOC = "repairs"
CHANGED_TEXT = (
    "Our workshop services any brand. A basic tune-up costs 699 NOK and takes one day. "
    "Flat tyres are fixed while you wait for 150 NOK."
)
CHANGED_QUESTION = "How much does a basic tune-up cost?"
HTTP_QUESTION = "Can I rent an electric bike?"


def register(commands: Any) -> None:
    commands.add_parser("demo", help="the end-to-end demonstration (`make demo`)").set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return main(settings)


class _Steps:
    def __init__(self) -> None:
        self.begin = time.monotonic()
        self.number = 0

    def __call__(self, title: str) -> None:
        self.number += 1
        print(f"\n[{self.elapsed():6.1f}s] {self.number}. {title}", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.begin


def _say(line: str) -> None:
    print(f"    {line}", flush=True)


def _document(event_id: str, doc: dict[str, Any]) -> Any:
    return document_upserted(event_id, doc["doc_id"], doc["text"], tenant=TENANT, title=doc.get("title"), source="demo")


@contextmanager
def _services(
    settings: Settings,
) -> Iterator[tuple[ServiceProcess, ServiceProcess, ServiceProcess, ServiceProcess | None]]:
    if settings.flink.python_executable is None:
        raise ConfigError(
            "flink.python_executable",
            None,
            "the demo starts the ingest job with the Flink environment's python: set "
            "STREAMTUNE__FLINK__PYTHON_EXECUTABLE=.venv/flink/bin/python (`make demo` does)",
        )
    logs = settings.cache_dir / "demo" / "logs"
    # the services log to files; -v given to the demo makes them verbose too
    env = {"STREAMTUNE__LOGGING__VERBOSE": str(settings.logging.verbose)}
    job = ingest_job(logs, env, python=str(settings.flink.python_executable))
    server = query_server(logs, env)
    gateway = ServiceProcess(["http"], b"http: listening", logs, env)
    python = settings.monitor.python_executable
    monitor = ServiceProcess(["monitor"], b"monitor: ready", logs, env, python=str(python)) if python else None
    try:
        yield job, server, gateway, monitor
    finally:
        if monitor is not None:
            monitor.stop()
        gateway.stop()
        server.stop()
        job.stop()


def main(settings: Settings) -> int:
    from inference.service import ask
    from retrieval import Retriever
    from streamtune.cli.train import index_check
    from training.data import read_examples
    from training.refresh import refresh

    # Sized for the 15-minute budget of a 2-core CPU machine; the manifest records them for replay.
    settings = settings.model_copy(
        update={
            "training": settings.training.model_copy(
                # 23 QA pairs hold out 3: the gate decides on those (its default minimum suits real volumes)
                update={"max_steps": 24, "learning_rate": 3e-4, "min_eval_examples": 3}
            )
        }
    )
    step = _Steps()
    step("local stack")
    Stack(settings, say=_say).up()
    create_topics(settings.kafka, settings.topics)

    with _services(settings) as (job, server, gateway, monitor), Retriever(settings) as retriever:
        step("start the ingest job (PyFlink, local MiniCluster)")
        job.start()
        _say(f"running; log {job.log}")
        if monitor is not None:
            monitor.start()
            _say(f"monitor (faust-streaming): http://{settings.monitor.host}:{settings.monitor.port}/status/{TENANT}")

        documents, qa = sample("demo_documents.jsonl"), sample("demo_qa.jsonl")
        step(f"publish the sample domain: {len(documents)} documents, {len(qa)} vetted QA pairs (tenant {TENANT})")
        out = producer(settings.kafka)
        events = topic_name(DOMAIN_EVENTS, settings.topics)
        for doc in documents:
            event = _document(f"demo-doc-{doc['doc_id']}", doc)
            out.produce(events, key=event.key.encode(), value=encode(event))
        out.flush(30)
        store = retriever.store
        _say(f"waiting until all {len(documents)} documents are searchable")
        wait_for(lambda: all(store.count(TENANT, d["doc_id"]) for d in documents), 300, "demo: indexing", 0.5)
        _say(f"{store.count(TENANT)} chunks indexed")
        # The QA pairs follow the documents: each example stores the context retrieved when it is recorded.
        for i, pair in enumerate(qa):
            event = qa_recorded(f"demo-qa-{i}", pair["question"], pair["answer"], tenant=TENANT)
            out.produce(events, key=event.key.encode(), value=encode(event))
        out.flush(30)

        step("wait until the examples are committed, each with the context it was recorded with")
        examples_topic = topic_name(TRAINING_EXAMPLES, settings.topics)

        def committed_examples() -> int:
            ends = committed_end_offsets(settings.kafka, examples_topic)
            return len(read_examples(settings, TENANT, {p: (0, e) for p, e in ends.items()}).examples)

        wait_for(lambda: committed_examples() >= len(qa), 120, "demo: training examples", 0.5)
        _say(f"{committed_examples()} training examples on {examples_topic}")

        step("train, evaluate and gate an adapter (QLoRA on SmolLM2-135M-Instruct)")
        outcome = refresh(settings, TENANT, missing_docs=index_check(settings), say=_say)
        _say(f"result: {outcome.status} {outcome.version or ''}: {outcome.reason}")
        if outcome.manifest:
            _say(
                f"manifest offsets: {outcome.manifest.data.ranges}; adapter sha256 "
                f"{outcome.manifest.adapter.sha256[:16]}..."
            )

        step("start the query consumer and ask through the queries topic")
        server.start()
        for question in QUESTIONS:
            _show(question, ask(settings, question, TENANT))

        step(f"ask over HTTP: the OpenAI-compatible gateway on http://{settings.http.host}:{settings.http.port}/v1")
        gateway.start()
        _say(f"POST /v1/chat/completions with model={TENANT!r} (what an `openai` client sends)")
        reply = _ask_http(settings, HTTP_QUESTION)
        _show_http(HTTP_QUESTION, reply)

        # The registry's canary: the one just made, or one an earlier demo left on trial (its rounds ended
        # undecided, or it was stopped): the trial goes on with this run's ratings, else no run on this stack
        # would train or decide again.
        trial, incumbent = _trial(settings)
        if trial:
            since = "" if trial == outcome.version else " (on trial since an earlier run)"
            step(f"the canary on live feedback: {trial}{since} against {incumbent}")
            _canary_on_feedback(settings, trial, incumbent, qa, reply)

        step(f"change a fact: {CHANGED_DOC} now says the tune-up costs 699 NOK")
        changed_at = time.monotonic()
        changed = _document(
            f"demo-doc-{CHANGED_DOC}-v2", {"doc_id": CHANGED_DOC, "title": "Repair service", "text": CHANGED_TEXT}
        )
        out.produce(events, key=changed.key.encode(), value=encode(changed))
        out.flush(30)
        vector = retriever.embed([CHANGED_QUESTION])[0]
        wait_for(
            lambda: any("699" in h.text for h in retriever.search_with(TENANT, CHANGED_QUESTION, vector, 4)),
            120,
            "demo: update",
        )
        _say(f"searchable {time.monotonic() - changed_at:.1f}s after it was published")
        _show(CHANGED_QUESTION, ask(settings, CHANGED_QUESTION, TENANT))
        _say(f"answered {time.monotonic() - changed_at:.1f}s after the change was published")

        if monitor is not None:
            step(f"what the monitor saw (its /metrics, tenant {TENANT})")
            _show_monitor(settings)

    step(f"done in {step.elapsed() / 60:.1f} minutes. The stack keeps running: `make stack-down` stops it.")
    print("    Try: .venv/ml/bin/streamtune adapters list --tenant fjordline", flush=True)
    print("         .venv/ml/bin/streamtune adapters decide --tenant fjordline", flush=True)
    print("         .venv/ml/bin/streamtune train replay v0001 --tenant fjordline   (same sha256 on CPU)", flush=True)
    return 0


_ROUNDS = 4
_ROUND = 40


def _trial(settings: Settings) -> tuple[str | None, str]:
    """The tenant's canary on trial (None: none), and what it is measured against: the tenant's current version
    (one an earlier demo on this stack promoted), else the base model."""
    from training.registry import open_registry

    registry = open_registry(settings, TENANT)
    canary, current = registry.canary(), registry.current()
    return (canary.name if canary else None), (current.name if current else "the base model")


def _canary_on_feedback(
    settings: Settings, version: str, incumbent: str, qa: list[dict[str, Any]], reply: dict[str, Any]
) -> None:
    """Rounds of the vetted questions through ``queries``, each answer rated against the vetted answer as a user
    who knows it would (token F1 >= 0.5 up, else down with the vetted answer as the correction), published as
    ``feedback.recorded``; the HTTP completion is rated over ``POST /v1/feedback``. The decision step runs
    after each round until it decides."""
    from inference.service import ask_many
    from streamtune.harness import feedback_recorded
    from training.canary import decide
    from training.registry import open_registry, state_of
    from training.trainer import token_f1

    share = settings.training.canary_percent
    _say(f"{version} answers {share}% of {TENANT}'s queries (a stable hash of query_id), {incumbent} the rest")
    _say(f"rated over HTTP: {_rate_http(settings, reply['id'])}")
    out = producer(settings.kafka)
    events = topic_name(DOMAIN_EVENTS, settings.topics)
    truth = {pair["question"]: pair["answer"] for pair in qa}
    for round_ in range(1, _ROUNDS + 1):
        questions = [qa[i % len(qa)]["question"] for i in range(_ROUND)]
        answers = ask_many(settings, questions, TENANT, timeout_s=600)
        tally: dict[str, list[int]] = {}
        for question, answer in zip(questions, answers, strict=True):
            if answer.error is not None or not answer.answer:
                continue
            good = token_f1(answer.answer, truth[question]) >= 0.5
            event = feedback_recorded(
                f"demo-rating-{answer.query_id}",
                question,
                answer.answer,
                rating=1 if good else -1,
                correction=None if good else truth[question],
                tenant=TENANT,
                query_id=answer.query_id,
            )
            out.produce(events, key=event.key.encode(), value=encode(event))
            tally.setdefault(answer.arm or "none", []).append(1 if good else -1)
        out.flush(30)
        for arm, ratings in sorted(tally.items()):
            _say(f"round {round_}: {arm:<9} {len(ratings)} answers rated, {ratings.count(-1)} down")
        decisions = decide(settings, TENANT, say=lambda _: None)  # the ratings were flushed: it reads them all
        if decisions:
            for d in decisions:
                _say(f"decision: {d.action} {d.version}: {d.reason}")
            break
        _say("the decision step waits for more rated answers")
    else:
        _say(
            f"undecided after {_ROUNDS} rounds: the next `make demo` goes on with this trial (its examples wait), "
            f"and after training.canary_max_hours ({settings.training.canary_max_hours:g} h) the decision step ends it"
        )
    registry = open_registry(settings, TENANT)
    current = registry.current()
    for version_ in registry.versions():
        _say(f"{version_.name}: {state_of(version_, current)}")


def _rate_http(settings: Settings, completion_id: str) -> str:
    import json
    import urllib.request

    body = {"id": completion_id, "rating": 1}
    request = urllib.request.Request(
        f"http://{settings.http.host}:{settings.http.port}/v1/feedback",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read()))


def _show_monitor(settings: Settings) -> None:
    """The monitor's figures for the demo tenant, once it has read the answers the demo received."""
    import urllib.request

    url = f"http://{settings.monitor.host}:{settings.monitor.port}/metrics"

    def series() -> list[str]:
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        return [line for line in text.splitlines() if f'tenant="{TENANT}"' in line and not line.startswith("#")]

    def answered() -> bool:
        return any(line.startswith("streamtune_monitor_answers_total") for line in series())

    wait_for(answered, 60, "demo: the monitor to read the answers", 0.5)
    for line in series():
        if "_bucket" not in line and "_created" not in line:
            _say(line)


def _ask_http(settings: Settings, question: str) -> dict[str, Any]:
    """One chat completion through the gateway, as any OpenAI client would send it (no API key: loopback)."""
    import json
    import urllib.request

    body = {"model": TENANT, "messages": [{"role": "user", "content": question}]}
    request = urllib.request.Request(
        f"http://{settings.http.host}:{settings.http.port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=settings.http.answer_timeout_s + 10) as response:
        reply: dict[str, Any] = json.loads(response.read())
    return reply


def _show_http(question: str, reply: dict[str, Any]) -> None:
    print(f"\n    Q: {question}", flush=True)
    print(f"    A: {reply['choices'][0]['message']['content']}", flush=True)
    cited = ", ".join(f"{c['doc_id']} (similarity {c['similarity']:.2f})" for c in reply.get("citations", []))
    print(f"       cites: {cited or 'nothing'}; grounded: {reply.get('grounded')}; model {reply['model']}", flush=True)


def _show(question: str, answer: Any) -> None:
    print(f"\n    Q: {question}", flush=True)
    if answer.error is not None:
        print(f"    error {answer.error.code}: {answer.error.message}", flush=True)
        return
    print(f"    A: {answer.answer}", flush=True)
    cited = ", ".join(f"{c.doc_id} (similarity {c.similarity or 0:.2f})" for c in answer.citations)
    print(f"       cites: {cited or 'nothing'}; grounded: {answer.grounded}", flush=True)
    print(
        f"       adapter {answer.adapter_version or 'none (base model)'}; "
        f"{answer.timings_ms.get('total', 0) / 1000:.1f}s in serve",
        flush=True,
    )
