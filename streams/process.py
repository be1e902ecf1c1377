"""Running the ingest job as its own process (`streamtune streams run`), for the demo, benchmarks and tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from streamtune.errors import StreamtuneError

__all__ = ["JobProcess"]


class JobProcess:
    """One `streamtune streams run` process; each start logs to its own file under ``log_dir``."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None, python: str = sys.executable) -> None:
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.python = python
        self.starts = 0
        self.log = log_dir / "streams-0.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 300.0, **env: str) -> None:
        """Start the job and wait until Flink reports it running."""
        self.env.update(env)
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.log_dir / f"streams-{self.starts}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "streamtune", "streams", "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **self.env},
            )
        deadline = time.monotonic() + timeout_s
        while b"streams: job " not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
                raise StreamtuneError("the ingest job did not start:\n  " + "\n  ".join(tail))
            time.sleep(0.5)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to clean up."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM: the job is cancelled cleanly and keeps its checkpoint for the next start."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
