"""The one harness that tests, benchmarks and the demo share: service processes, isolated deployments and
the tiny-model presets they run with, sample data, and builders of what goes on the topics: domain events
(from the contract models, or raw where a producer's mistakes are the subject), training examples, adapter
announcements and a manifest with made-up figures.

An isolated deployment is a set of ``STREAMTUNE__`` environment variables (uuid-named topic prefix,
collection, consumer groups, checkpoint and adapter directories) that a child process loads as its
settings, so that several deployments share one local stack without seeing each other; ``Deployment``
creates its topics, starts its services and removes it all again. It starts every service, so it sits above
the packages it starts, as the CLI does (``tests/streamtune/test_imports.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel

from streamtune.contracts import (
    SCHEMA_VERSION,
    AdapterUpdate,
    Answer,
    AnswerError,
    ChatMessage,
    ContextPassage,
    DocumentDeleted,
    DocumentDeletedData,
    DocumentUpserted,
    DocumentUpsertedData,
    FeedbackRecorded,
    FeedbackRecordedData,
    QaRecorded,
    QaRecordedData,
    Query,
    TrainingExample,
)
from streamtune.errors import StreamtuneError
from streamtune.manifest import (
    AdapterDigest,
    BaseModelIdentity,
    CodeVersion,
    DataWindow,
    EvalScores,
    Manifest,
    Metrics,
    SideScores,
    Split,
    TrainFigures,
    Verdict,
)

if TYPE_CHECKING:
    from streamtune.settings import Settings
    from streamtune.topics import TopicSpec

__all__ = [
    "SEED_TEXT",
    "Deployment",
    "ServiceProcess",
    "adapter_update",
    "answer",
    "document_deleted",
    "document_upserted",
    "feedback_recorded",
    "free_port",
    "http_gateway",
    "ingest_job",
    "isolated_env",
    "metrics_has",
    "publish_examples",
    "qa_recorded",
    "query",
    "query_server",
    "rating",
    "raw_document",
    "raw_event",
    "sample",
    "sample_manifest",
    "settings_for_env",
    "tiny_gateway",
    "tiny_serving",
    "tiny_training",
    "train_watch",
    "trainer_worker",
    "training_example",
    "unique_name",
    "wait_for",
]

Event = DocumentUpserted | DocumentDeleted | QaRecorded | FeedbackRecorded


class ServiceProcess:
    """One `python -m streamtune <command>` process; each start logs to its own file under ``log_dir``.

    ``start`` returns once the log holds ``ready`` (the line each service logs when it is up).
    """

    def __init__(
        self,
        command: Sequence[str],
        ready: bytes,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.command = list(command)
        self.ready = ready
        self.name = "-".join(command)
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.python = python
        self.starts = 0
        self.log = log_dir / f"{self.name}-0.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 300.0, **env: str) -> None:
        self.env.update(env)
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        number = self.starts
        while (self.log_dir / f"{self.name}-{number}.log").exists():  # another process of the same command
            number += 1
        self.log = self.log_dir / f"{self.name}-{number}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "streamtune", *self.command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + timeout_s
        while self.ready not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
                raise StreamtuneError(f"`streamtune {' '.join(self.command)}` did not start:\n  " + "\n  ".join(tail))
            time.sleep(0.2)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to clean up."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM: the service shuts down cleanly (the ingest job keeps its checkpoint)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def ingest_job(log_dir: Path, env: Mapping[str, str] | None = None, python: str = sys.executable) -> ServiceProcess:
    """`streamtune streams run`; ``python`` must be the Flink environment's interpreter."""
    return ServiceProcess(["streams", "run"], b"streams: job ", log_dir, env, python)


def query_server(log_dir: Path, env: Mapping[str, str] | None = None, python: str = sys.executable) -> ServiceProcess:
    """`streamtune serve`."""
    return ServiceProcess(["serve"], b"serve: consuming", log_dir, env, python)


def http_gateway(log_dir: Path, env: Mapping[str, str] | None = None) -> ServiceProcess:
    """`streamtune http`, the OpenAI-compatible gateway."""
    return ServiceProcess(["http"], b"http: listening", log_dir, env)


def train_watch(log_dir: Path, env: Mapping[str, str] | None = None) -> ServiceProcess:
    """`streamtune train watch` (ready once it has said when it refreshes)."""
    return ServiceProcess(["train", "watch"], b"watch: refresh at", log_dir, env)


def trainer_worker(log_dir: Path, env: Mapping[str, str] | None = None) -> ServiceProcess:
    """`streamtune train worker` (ready once it has subscribed; its partitions come with the group's assignment)."""
    return ServiceProcess(["train", "worker"], b"worker: consuming", log_dir, env)


def unique_name(prefix: str) -> str:
    """``<prefix>-`` and 12 hex digits of a uuid4: a topic, group or collection name no other test run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def isolated_env(work: Path, name: str = "it", **overrides: str) -> dict[str, str]:
    """``STREAMTUNE__`` variables of a deployment of its own: topics, collection, groups and directories."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "STREAMTUNE__TOPICS__PREFIX": f"{name}-{tag}.",
        "STREAMTUNE__WEAVIATE__COLLECTION": f"{name.capitalize()}{tag}",
        "STREAMTUNE__STREAMS__GROUP_ID": f"streams-{tag}",
        "STREAMTUNE__STREAMS__CHECKPOINT_DIR": str(work / "checkpoints"),
        "STREAMTUNE__INFERENCE__GROUP_ID": f"serve-{tag}",
        "STREAMTUNE__TRAINING__WORKER_GROUP_ID": f"trainers-{tag}",
        "STREAMTUNE__TRAINING__ADAPTERS_DIR": str(work / "adapters"),
        "STREAMTUNE__DRIFT__KEPT_DIR": str(work / "drift"),
        "STREAMTUNE__INFERENCE__METRICS_PORT": "0",
        "STREAMTUNE__TRAINING__METRICS_PORT": "0",
        "STREAMTUNE__TRAINING__WORKER_METRICS_PORT": "0",
        "STREAMTUNE__HTTP__METRICS_PORT": "0",
        "STREAMTUNE__FLINK__METRICS_PORT": "0",
        "STREAMTUNE__FLINK__LOG_DIR": str(work / "flink-logs"),
        # A gate-passed version is promoted directly unless a test asks for a canary: most tests are about
        # what happens once a version is current.
        "STREAMTUNE__TRAINING__CANARY_PERCENT": "0",
    }
    env.update(overrides)
    return env


def tiny_serving(model: Path) -> dict[str, str]:
    """``STREAMTUNE__`` variables that make `serve` quick on the tiny test model: short answers and prompts, one
    thread, and a generated answer even where no document is relevant (``inference.no_context = answer``). For
    tests where answer quality and grounding are not the subject (tenants still need a document or an adapter:
    ``Deployment.seed`` gives them one)."""
    return {
        "STREAMTUNE__INFERENCE__NO_CONTEXT": "answer",
        "STREAMTUNE__INFERENCE__MAX_NEW_TOKENS": "8",
        "STREAMTUNE__INFERENCE__TORCH_THREADS": "1",
        "STREAMTUNE__INFERENCE__CONTEXT_TOKENS": "128",
        "STREAMTUNE__INFERENCE__MAX_QUESTION_TOKENS": "64",
        "STREAMTUNE__MODELS__BASE_MODEL": str(model),
    }


def tiny_training(model: Path) -> dict[str, str]:
    """``STREAMTUNE__`` variables that make a refresh of the tiny test model take seconds: a few steps of plain
    LoRA on one thread, short evaluation answers, and a gate that decides on any held-out slice
    (``training.min_eval_examples`` 1). For tests that count versions and announcements, not learning: at these
    settings the first version of the refund examples (``training_example``) is promoted over the base model
    (``tests/training/test_faults.py`` asserts it)."""
    return {
        "STREAMTUNE__MODELS__BASE_MODEL": str(model),
        "STREAMTUNE__TRAINING__MIN_EVAL_EXAMPLES": "1",
        "STREAMTUNE__TRAINING__MAX_STEPS": "4",
        "STREAMTUNE__TRAINING__LEARNING_RATE": "5e-3",
        "STREAMTUNE__TRAINING__BATCH_SIZE": "4",
        "STREAMTUNE__TRAINING__EVAL_MAX_NEW_TOKENS": "4",
        "STREAMTUNE__TRAINING__TORCH_THREADS": "1",
        "STREAMTUNE__TRAINING__REPLAY_SAMPLE": "4",
        "STREAMTUNE__TRAINING__QUANTIZE_4BIT": "false",
    }


def tiny_gateway() -> dict[str, str]:
    """``STREAMTUNE__`` variables for `streamtune http` beside a tiny `serve`: its API and its metrics on free ports
    of 127.0.0.1 (``settings.http.port`` and ``settings.http.metrics_port`` say which), one embedding thread."""
    return {
        "STREAMTUNE__HTTP__PORT": str(free_port()),
        "STREAMTUNE__HTTP__METRICS_PORT": str(free_port()),
        "STREAMTUNE__EMBEDDING__TORCH_THREADS": "1",
    }


def free_port(pair: bool = False) -> int:
    """A free TCP port on 127.0.0.1 (with ``pair``, one whose successor is free too)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not pair:
            return port
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (returned), or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f}s")
        time.sleep(interval_s)


def metrics_has(port: int, line: str) -> bool:
    """Whether the /metrics of the process on ``port`` (127.0.0.1) holds ``line``; False while it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return line in response.read().decode()
    except OSError:
        return False


SEED_TEXT = "Refunds are accepted within thirty days of purchase with the receipt."
"""The one document ``Deployment.seed`` indexes for each tenant."""

_MADE_UP_TIME = "2026-11-21T10:00:00Z"  # when made-up records (raw events, indexed chunks) say they happened


def settings_for_env(env: Mapping[str, str]) -> Settings:
    """The settings a child process started with these extra ``STREAMTUNE__`` variables would load: the built-in
    defaults and the environment, never the developer's ``config/*.toml``.

    pydantic-settings reads the process environment only, so the variables are set for the load and restored
    after it (load on one thread at a time)."""
    from streamtune.settings import load_settings

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return load_settings(config_files=[])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Deployment:
    """One isolated deployment on the local stack (or on a test's private part of it): the ``isolated_env``
    variables, the settings its services load from them, its topics (created here), a producer, and the services
    it starts. ``close()``, or the end of its ``with`` block, stops those services and removes the topics and the
    Weaviate collection.

    ``presets`` (``tiny_serving(model)``, ``tiny_training(model)``, ``tiny_gateway()``) are merged in order, then
    ``overrides``: ``Deployment(tmp, "inf", tiny_serving(model), STREAMTUNE__INFERENCE__MAX_BATCH="8")``.
    """

    def __init__(self, work: Path, name: str = "it", *presets: Mapping[str, str], **overrides: str) -> None:
        from streamtune.kafka import create_topics, producer

        merged: dict[str, str] = {}
        for preset in presets:
            merged.update(preset)
        self.work = work
        self.env = isolated_env(work, name, **{**merged, **overrides})
        self.settings = settings_for_env(self.env)
        self.services: list[ServiceProcess] = []
        create_topics(self.settings.kafka, self.settings.topics)
        self.producer = producer(self.settings.kafka)

    # -- services, not started yet; each logs under <work>/logs and is stopped by close() ----------------------
    def service(
        self, command: Sequence[str], ready: bytes, *, python: str = sys.executable, **env: str
    ) -> ServiceProcess:
        """`streamtune <command>` with the deployment's variables and ``env``, ready once its log holds ``ready``."""
        return self._kept(ServiceProcess(command, ready, self.work / "logs", {**self.env, **env}, python))

    def query_server(self, **env: str) -> ServiceProcess:
        return self._kept(query_server(self.work / "logs", {**self.env, **env}))

    def http_gateway(self, **env: str) -> ServiceProcess:
        return self._kept(http_gateway(self.work / "logs", {**self.env, **env}))

    def ingest_job(self, python: str = sys.executable, **env: str) -> ServiceProcess:
        """`streamtune streams run`; ``python`` must be the Flink environment's interpreter."""
        return self._kept(ingest_job(self.work / "logs", {**self.env, **env}, python))

    def train_watch(self, **env: str) -> ServiceProcess:
        return self._kept(train_watch(self.work / "logs", {**self.env, **env}))

    def _kept(self, service: ServiceProcess) -> ServiceProcess:
        self.services.append(service)
        return service

    def start_while_indexing(
        self, services: Sequence[ServiceProcess], documents: Mapping[str, str], tenants: Sequence[str]
    ) -> None:
        """Start ``services`` together, indexing ``documents`` for ``tenants`` meanwhile (the services load their
        models while the documents are embedded)."""
        with ThreadPoolExecutor(len(services)) as starting:
            started = [starting.submit(service.start) for service in services]
            self.index(documents, tenants)
            for future in started:
                future.result()

    # -- Weaviate --------------------------------------------------------------------------------------------
    def index(
        self, documents: Mapping[str, str], tenants: Sequence[str], titles: Mapping[str, str] | None = None
    ) -> None:
        """Index ``documents`` (doc id -> text, one chunk each) for each of ``tenants`` in the deployment's
        collection, created if need be, as the ingest job would; ``titles``: doc id -> title (default: the id,
        title-cased)."""
        from retrieval import Retriever
        from retrieval.store import DocumentChunks

        titles = titles or {}
        with Retriever(self.settings) as retriever:
            vectors = retriever.embed(list(documents.values()))
            retriever.store.ensure_collection(len(vectors[0]))
            retriever.store.upsert(
                [
                    DocumentChunks(
                        tenant, doc, titles.get(doc, doc.title()), [text], [vector], f"e-{doc}", _MADE_UP_TIME
                    )
                    for (doc, text), vector in zip(documents.items(), vectors, strict=True)
                    for tenant in tenants
                ]
            )

    def seed(self, tenants: Sequence[str]) -> None:
        """One document (``seed``, ``SEED_TEXT``) for each of ``tenants``, so that serve knows them: it answers a
        tenant with neither documents nor adapters ``unknown_tenant``."""
        self.index({"seed": SEED_TEXT}, tenants, titles={"seed": "Refund policy"})

    # -- Kafka -----------------------------------------------------------------------------------------------
    def produce(self, spec: TopicSpec[Any], key: str | None, value: bytes) -> None:
        """Queue ``value`` for the deployment's topic of ``spec`` (``flush`` delivers it)."""
        from streamtune.topics import topic_name

        encoded = key.encode() if key is not None else None
        self.producer.produce(topic_name(spec, self.settings.topics), key=encoded, value=value)

    def flush(self, timeout_s: float = 15.0) -> None:
        """Deliver what ``produce`` queued, or raise saying how many records are left."""
        left = self.producer.flush(timeout_s)
        if left:
            raise StreamtuneError(f"{left} records not delivered within {timeout_s:g}s")

    def records(self, spec: TopicSpec[Any]) -> list[bytes]:
        """The value of every committed record on the deployment's topic of ``spec``, partition by partition,
        oldest first."""
        from streamtune.kafka import committed_end_offsets, read_range
        from streamtune.topics import topic_name

        topic = topic_name(spec, self.settings.topics)
        ends = committed_end_offsets(self.settings.kafka, topic)
        ranges = {partition: (0, end) for partition, end in ends.items()}
        return [message.value() or b"" for message in read_range(self.settings.kafka, topic, ranges)]

    def answers(
        self, wanted: Iterable[str], timeout_s: float = 120, *, at_least: int = 1, linger_s: float = 0.0
    ) -> dict[str, list[dict[str, Any]]]:
        """Every answer on ``answers`` (as JSON objects) by query id, read until each of ``wanted`` has
        ``at_least`` (or ``timeout_s`` passes), then ``linger_s`` longer, to see repeats that come late."""
        from streamtune.kafka import consumer
        from streamtune.topics import ANSWERS, topic_name

        wanted = set(wanted)
        found: dict[str, list[dict[str, Any]]] = {}
        reader = consumer(self.settings.kafka, uuid.uuid4().hex)
        reader.subscribe([topic_name(ANSWERS, self.settings.topics)])

        def read(until: Callable[[], bool], seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while not until() and time.monotonic() < deadline:
                message = reader.poll(0.5)
                if message is not None and message.error() is None:
                    answer = json.loads(message.value() or b"")
                    found.setdefault(answer["query_id"], []).append(answer)

        try:
            read(lambda: all(len(found.get(q, [])) >= at_least for q in wanted), timeout_s)
            read(lambda: False, linger_s)
        finally:
            reader.close()
        return found

    def close(self) -> None:
        """Stop the services started here, then remove the collection and the topics. A test's private Weaviate
        may be down by now: its collection goes with its data directory."""
        from retrieval import RetrievalError, connect
        from retrieval.store import ChunkStore
        from streamtune.kafka import delete_topics

        for service in reversed(self.services):
            service.stop()
        try:
            with connect(self.settings.weaviate) as client:
                ChunkStore(client, self.settings).drop()
        except RetrievalError:
            pass
        delete_topics(self.settings.kafka, self.settings.topics)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def sample(name: str) -> list[dict[str, Any]]:
    """A bundled sample file (``streamtune/data/<name>``), one JSON object per line."""
    text = files("streamtune").joinpath("data", name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sample_manifest(tenant: str, version: str, **overrides: Any) -> Manifest:
    """A valid adapter manifest with made-up figures, for what needs one without training a version: a first
    version (no parent) of a tiny base model, trained on offsets [0, 10) of ``training-examples`` partition 0
    with the default training settings, and promoted over the base model. The same arguments give an equal
    manifest (fixed time, sha256 of ``tenant`` and ``version`` as the weights').

    ``overrides`` replace fields of the manifest by name; a dict given for a field that is itself a model
    (``data``, ``gate``, ``metrics``, ...) changes only the keys it names: ``gate={"promoted": False}``.
    """
    # pydantic-settings and the Kafka client behind the topics: imported when a manifest is asked for
    from streamtune.settings import TrainingSettings
    from streamtune.topics import TRAINING_EXAMPLES

    training = TrainingSettings()
    anchor = EvalScores(loss=2.0, exact_match=0.0, token_f1=0.2, examples=8)
    candidate = SideScores(held_out=EvalScores(loss=0.8, exact_match=0.5, token_f1=0.7, examples=2), anchor=anchor)
    current = SideScores(held_out=EvalScores(loss=1.1, exact_match=0.25, token_f1=0.5, examples=2), anchor=anchor)
    fields: dict[str, Any] = {
        "tenant": tenant,
        "version": version,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "base_model": BaseModelIdentity(setting="tiny", source="/models/tiny", sha256={"model.safetensors": "ab" * 32}),
        "parent": None,
        "data": DataWindow(
            topic=TRAINING_EXAMPLES.name,
            ranges={0: (0, 10)},
            replay_ranges={0: (0, 0)},
            new_examples=10,
            train=8,
            held_out=2,
            replay=0,
        ),
        "split": Split(seed=training.seed, held_out_percent=training.held_out_percent),
        "training": training.model_dump(mode="json"),
        "quantization": "none (disabled by setting)",
        "libraries": {"python": "3.11"},
        "code": CodeVersion(streamtune="0.1.0", training_sha256="c0ffee"),
        "metrics": Metrics(
            train=TrainFigures(steps=4, tokens=100, seconds=1.0, tokens_per_second=100.0, final_loss=0.9),
            candidate=candidate,
            current=current,
        ),
        "gate": Verdict(
            promoted=True,
            reason="held-out loss 0.8000 < 1.1000, and anchor within tolerance",
            anchor_tolerance=training.anchor_tolerance,
            quality_tolerance=training.quality_tolerance,
        ),
        "adapter": AdapterDigest(sha256=hashlib.sha256(f"{tenant}/{version}".encode()).hexdigest()),
    }
    for name, value in overrides.items():
        if name not in Manifest.model_fields:
            raise TypeError(
                f"sample_manifest: {name!r} is not a manifest field; valid: {', '.join(Manifest.model_fields)}"
            )
        part = fields.get(name)
        if isinstance(part, BaseModel) and isinstance(value, Mapping):
            unknown = sorted(set(value) - set(type(part).model_fields))
            if unknown:  # the model would ignore them (extra="ignore"): a typo would change nothing, silently
                raise TypeError(
                    f"sample_manifest: {name}: {', '.join(unknown)} not among {', '.join(type(part).model_fields)}"
                )
            value = type(part).model_validate({**part.model_dump(), **value})
        fields[name] = value
    return Manifest.model_validate(fields)


def adapter_update(
    tenant: str,
    version: str,
    *,
    uri: str | None = None,
    base_model: str = "tiny",
    manifest: Manifest | None = None,
    state: Literal["current", "canary", "rolled_back"] | None = None,
    canary_percent: int | None = None,
    **manifest_fields: Any,
) -> AdapterUpdate:
    """An announcement on ``adapter-updates`` as ``training.publish.announce`` makes one: of ``manifest``
    (default: ``sample_manifest(tenant, version, **manifest_fields)``), at ``uri`` (default:
    ``file:///adapters/<tenant>/<version>``, where there are no weights: serve refuses it, the gateway and the
    monitor only read it), for ``base_model``; ``state`` None: as announced before canaries (current)."""
    if manifest is not None and manifest_fields:
        raise TypeError(f"adapter_update: {', '.join(manifest_fields)} given beside a manifest; give either")
    return AdapterUpdate(
        tenant=tenant,
        version=version,
        uri=uri or f"file:///adapters/{tenant}/{version}",
        base_model=base_model,
        manifest=manifest or sample_manifest(tenant, version, **manifest_fields),
        state=state,
        canary_percent=canary_percent,
    )


def training_example(
    tenant: str, i: int, relies_on: list[str] | None = None, *, context: list[ContextPassage] | None = None
) -> TrainingExample:
    """Example number ``i`` of ``tenant`` (``<tenant>-ex-<i>``): the refund question, answered "30 days.";
    ``relies_on``: the doc ids it relies on; ``context``: what it is meant to be answered with."""
    return TrainingExample(
        example_id=f"{tenant}-ex-{i}",
        tenant=tenant,
        messages=[
            ChatMessage(role="user", content=f"What is the refund window? ({i})"),
            ChatMessage(role="assistant", content="30 days."),
        ],
        source_event_id=f"e-{i}",
        context_doc_ids=relies_on,
        context=context,
    )


def publish_examples(
    settings: Settings,
    tenant: str,
    start: int,
    count: int,
    relies_on: dict[int, list[str]] | None = None,
    context: list[ContextPassage] | None = None,
) -> None:
    """Examples ``start`` .. ``start + count - 1`` of ``tenant`` (``training_example``) onto ``training-examples``,
    delivered before it returns; ``relies_on``: example number -> doc ids."""
    from streamtune.kafka import producer
    from streamtune.topics import TRAINING_EXAMPLES, topic_name

    client = producer(settings.kafka)
    for i in range(start, start + count):
        example = training_example(tenant, i, (relies_on or {}).get(i), context=context)
        client.produce(
            topic_name(TRAINING_EXAMPLES, settings.topics),
            key=example.example_id.encode(),
            value=TRAINING_EXAMPLES.encode(example),
        )
    left = client.flush(15)
    if left:
        raise StreamtuneError(f"{left} of {count} examples of {tenant} not delivered within 15s")


def _now() -> datetime:
    return datetime.now(UTC)


def document_upserted(
    event_id: str,
    doc_id: str,
    text: str,
    *,
    tenant: str = "default",
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
    source: str | None = "test",
    occurred_at: datetime | None = None,
) -> DocumentUpserted:
    return DocumentUpserted(
        event_id=event_id,
        type="document.upserted",
        tenant=tenant,
        occurred_at=occurred_at or _now(),
        source=source,
        data=DocumentUpsertedData(doc_id=doc_id, text=text, title=title, metadata=metadata or {}),
    )


def document_deleted(event_id: str, doc_id: str, *, tenant: str = "default") -> DocumentDeleted:
    return DocumentDeleted(
        event_id=event_id,
        type="document.deleted",
        tenant=tenant,
        occurred_at=_now(),
        data=DocumentDeletedData(doc_id=doc_id),
    )


def qa_recorded(
    event_id: str,
    question: str,
    answer: str,
    *,
    tenant: str = "default",
    context_doc_ids: list[str] | None = None,
) -> QaRecorded:
    return QaRecorded(
        event_id=event_id,
        type="qa.recorded",
        tenant=tenant,
        occurred_at=_now(),
        data=QaRecordedData(question=question, answer=answer, context_doc_ids=context_doc_ids),
    )


def feedback_recorded(
    event_id: str,
    question: str,
    answer: str,
    *,
    rating: int = 1,
    correction: str | None = None,
    tenant: str = "default",
    query_id: str = "q",
) -> FeedbackRecorded:
    return FeedbackRecorded(
        event_id=event_id,
        type="feedback.recorded",
        tenant=tenant,
        occurred_at=_now(),
        data=FeedbackRecordedData(
            query_id=query_id,
            rating=1 if rating == 1 else -1,
            question=question,
            answer=answer,
            correction=correction,
        ),
    )


def rating(tenant: str, query_id: str, rating: int = 1, correction: str | None = None) -> FeedbackRecorded:
    """A rating of the refund answer to ``query_id``, as the gateway's POST /v1/feedback publishes it, with its
    event id ``feedback-<query_id>``: a second rating of the same query has the same key, so the same partition
    of ``domain-events``, and which of the two counts first is the same at every re-read (across partitions there
    is no order to rely on)."""
    return feedback_recorded(
        f"feedback-{query_id}",
        "What is the refund window?",
        "30 days",
        rating=rating,
        correction=correction,
        tenant=tenant,
        query_id=query_id,
    )


def query(tenant: str, query_id: str, question: str = "What is the refund window?") -> Query:
    """A question on ``queries``."""
    return Query(query_id=query_id, tenant=tenant, question=question)


def answer(
    tenant: str,
    query_id: str,
    *,
    version: str | None = None,
    error: str | None = None,
    arm: Literal["canary", "incumbent"] | None = None,
    grounded: bool | None = None,
) -> Answer:
    """The answer on ``answers`` to ``query_id``: "30 days" from adapter ``version`` (None: the base model) in
    12 ms, or, with ``error``, the error of that code and no answer."""
    return Answer(
        query_id=query_id,
        tenant=tenant,
        answer="" if error else "30 days",
        adapter_version=version,
        error=AnswerError(code=error, message="made up") if error else None,
        timings_ms={"total": 12.0},
        arm=arm,
        grounded=grounded,
    )


def raw_event(
    event_id: str, type_: str, data: dict[str, Any], *, tenant: str = "default", source: str | None = None
) -> dict[str, Any]:
    """A domain event as the JSON object a producer sends, not validated: for what a producer gets wrong (an
    unknown type, a missing or mistyped field, an oversized text), which the contract models refuse to build.
    Valid events come from ``document_upserted`` and its siblings."""
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "type": type_,
        "tenant": tenant,
        "occurred_at": _MADE_UP_TIME,
        "data": data,
    }
    if source is not None:
        event["source"] = source
    return event


def raw_document(
    event_id: str, doc_id: str, text: str, *, tenant: str = "default", title: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A ``document.upserted`` event as ``raw_event`` builds it (titled after its id unless ``title`` is given),
    and the key the contract gives it, ``<tenant>:<doc_id>``."""
    data = {"doc_id": doc_id, "title": title or doc_id, "text": text}
    return f"{tenant}:{doc_id}", raw_event(event_id, "document.upserted", data, tenant=tenant, source="test")
