"""The one harness that tests, benchmarks and the demo share: service processes, isolated deployments,
sample data, domain events built from the contract models, and an adapter manifest with made-up figures.

An isolated deployment is a set of ``STREAMTUNE__`` environment variables (uuid-named topic prefix,
collection, consumer groups, checkpoint and adapter directories) that a child process loads as its
settings, so that several deployments share one local stack without seeing each other.
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
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from streamtune.contracts import (
    DocumentDeleted,
    DocumentDeletedData,
    DocumentUpserted,
    DocumentUpsertedData,
    FeedbackRecorded,
    FeedbackRecordedData,
    QaRecorded,
    QaRecordedData,
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

__all__ = [
    "ServiceProcess",
    "document_deleted",
    "document_upserted",
    "feedback_recorded",
    "free_port",
    "ingest_job",
    "isolated_env",
    "qa_recorded",
    "query_server",
    "sample",
    "sample_manifest",
    "tiny_serving",
    "trainer_worker",
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


def trainer_worker(log_dir: Path, env: Mapping[str, str] | None = None) -> ServiceProcess:
    """`streamtune train worker` (ready once it has subscribed; its partitions come with the group's assignment)."""
    return ServiceProcess(["train", "worker"], b"worker: consuming", log_dir, env)


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
    ``tests/inference/conftest.py`` seeds them)."""
    return {
        "STREAMTUNE__INFERENCE__NO_CONTEXT": "answer",
        "STREAMTUNE__INFERENCE__MAX_NEW_TOKENS": "8",
        "STREAMTUNE__INFERENCE__TORCH_THREADS": "1",
        "STREAMTUNE__INFERENCE__CONTEXT_TOKENS": "128",
        "STREAMTUNE__INFERENCE__MAX_QUESTION_TOKENS": "64",
        "STREAMTUNE__MODELS__BASE_MODEL": str(model),
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
