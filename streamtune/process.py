"""Running a streamtune service (`streams run`, `serve`) as its own process: for the demo, benchmarks and tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from streamtune.errors import StreamtuneError

__all__ = ["ServiceProcess", "ingest_job", "query_server"]


class ServiceProcess:
    """One `python -m streamtune <command>` process; each start logs to its own file under ``log_dir``.

    ``start`` returns once the process has printed ``ready`` (the line each service prints when it is up).
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
        self.log = self.log_dir / f"{self.name}-{self.starts}.log"
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
            time.sleep(0.5)

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


def ingest_job(log_dir: Path, env: Mapping[str, str] | None = None, python: str = sys.executable) -> ServiceProcess:
    """`streamtune streams run`; ``python`` must be the Flink environment's interpreter."""
    return ServiceProcess(["streams", "run"], b"streams: job ", log_dir, env, python)


def query_server(log_dir: Path, env: Mapping[str, str] | None = None, python: str = sys.executable) -> ServiceProcess:
    """`streamtune serve`."""
    return ServiceProcess(["serve"], b"serve: consuming", log_dir, env, python)
