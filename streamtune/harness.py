"""The one harness that tests, benchmarks and the demo share: service processes, isolated deployments,
sample data, and domain events built from the contract models.

An isolated deployment is a set of ``STREAMTUNE__`` environment variables (uuid-named topic prefix,
collection, consumer groups, checkpoint and adapter directories) that a child process loads as its
settings, so that several deployments share one local stack without seeing each other.
"""

from __future__ import annotations

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


def isolated_env(work: Path, name: str = "it", **overrides: str) -> dict[str, str]:
    """``STREAMTUNE__`` variables of a deployment of its own: topics, collection, groups and directories."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "STREAMTUNE__TOPICS__PREFIX": f"{name}-{tag}.",
        "STREAMTUNE__WEAVIATE__COLLECTION": f"{name.capitalize()}{tag}",
        "STREAMTUNE__STREAMS__GROUP_ID": f"streams-{tag}",
        "STREAMTUNE__STREAMS__CHECKPOINT_DIR": str(work / "checkpoints"),
        "STREAMTUNE__INFERENCE__GROUP_ID": f"serve-{tag}",
        "STREAMTUNE__TRAINING__ADAPTERS_DIR": str(work / "adapters"),
        "STREAMTUNE__INFERENCE__METRICS_PORT": "0",
        "STREAMTUNE__TRAINING__METRICS_PORT": "0",
        "STREAMTUNE__HTTP__METRICS_PORT": "0",
        "STREAMTUNE__FLINK__METRICS_PORT": "0",
        "STREAMTUNE__FLINK__LOG_DIR": str(work / "flink-logs"),
    }
    env.update(overrides)
    return env


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
