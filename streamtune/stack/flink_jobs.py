"""The Flink job client: submit the ingest job to the standalone session cluster (``flink_cluster``), read a
job's state and cancel it.

``submit_job`` sends the ingest job (``streams/job.py``) to the cluster with `flink run -d`; ``job_status``
and ``cancel_job`` use the jobmanager's REST API. It runs only from the Flink environment, whose
distribution holds the `flink` CLI.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streamtune.errors import StackError
from streamtune.settings import Settings
from streamtune.stack.flink_cluster import FROM_FLINK_ENV, client_env, flink_home, jobmanager_request

__all__ = ["JobStatus", "cancel_job", "job_status", "submit_job"]

_JOB_ID = re.compile(rb"Job has been submitted with JobID ([0-9a-f]{32})")
_TERMINAL = {"CANCELED", "FAILED", "FINISHED"}


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    name: str
    state: str
    """CREATED | RUNNING | RESTARTING | FAILING | CANCELLING | CANCELED | FAILED | FINISHED | ..."""
    failures: int
    """Failures the job restarted from (or died of): the jobmanager's exception history, newest 16 kept."""
    parallelism: int
    """The largest parallelism of the job's vertices."""
    vertex_states: dict[str, int]
    """How many of the job's vertices are in each state (RUNNING, SCHEDULED, DEPLOYING, ...)."""

    @property
    def running(self) -> bool:
        """The job runs and every vertex has its tasks deployed and running."""
        total = sum(self.vertex_states.values())
        return self.state == "RUNNING" and total > 0 and self.vertex_states.get("RUNNING", 0) == total


def submit_job(
    settings: Settings,
    *,
    parallelism: int,
    env: Mapping[str, str] | None = None,
    script: Path | None = None,
) -> str:
    """Submit the ingest job (or another PyFlink ``script``) to the cluster with `flink run -d`; its job id.

    The job loads its own settings from the environment (``STREAMTUNE__...``): pass the deployment's
    variables in ``env``. ``parallelism`` is passed both as ``-p`` and as ``flink.parallelism``, which the
    job sets on its environment (and which would otherwise override ``-p``). The CLI's output goes to
    ``<stack home>/logs/flink-submit.log``.
    """
    home = flink_home()
    if home is None:
        raise StackError("flink-submit", f"PyFlink is not installed in {sys.executable}", FROM_FLINK_ENV)
    jar = settings.connector_jar
    if not jar.is_file():
        raise StackError("flink-submit", f"no Kafka connector jar at {jar}", "run `streamtune stack up` to download it")
    job_file = script or _ingest_job_file()
    flink_env = client_env(settings, home)
    rest = f"127.0.0.1:{settings.flink.rest_port}"
    cmd = [str(home / "bin" / "flink"), "run", "-m", rest, "-d", "-p", str(parallelism)]
    cmd += ["--python", str(job_file), "--jarfile", str(jar)]
    child_env = {
        **os.environ,
        **(env or {}),
        **flink_env,
        "STREAMTUNE__FLINK__PARALLELISM": str(parallelism),
    }
    log = settings.stack_home / "logs" / "flink-submit.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = settings.stack.startup_timeout_s
    with log.open("ab") as out:
        start = out.tell()
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env, start_new_session=True
        )
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the CLI and its Python driver; a submitted job keeps running
            process.wait()
            raise StackError(
                "flink-submit",
                f"`flink run -d` did not return within {timeout_s:.0f}s (log: {log})",
                f"the job file must return once submitted in detached mode ({job_file}); "
                "raise STREAMTUNE__STACK__STARTUP_TIMEOUT_S on a slow machine",
            ) from None
    output = log.read_bytes()[start:]
    found = _JOB_ID.search(output)
    if code != 0 or found is None:
        # The job file's own error comes before the CLI's Java stack trace, which only says that it failed.
        text = output.decode(errors="replace").split("org.apache.flink.client.program.ProgramAbortException")[0]
        tail = text.strip().splitlines()[-12:]
        raise StackError(
            "flink-submit",
            f"`flink run` exited with code {code} without a job id (log: {log}):\n  " + "\n  ".join(tail),
            f"is the cluster up (`streamtune stack status` with flink.cluster on, REST {rest})?",
        )
    return found.group(1).decode()


def job_status(settings: Settings, job_id: str) -> JobStatus:
    """The job's state, failures and vertex states, from the jobmanager's REST API."""
    details = jobmanager_request(settings, "GET", f"/jobs/{job_id}")
    # The exception history rather than the numRestarts metric, which the REST API serves from a cache
    # refreshed every 10 s (metrics.fetcher.update-interval) and so lags a restart.
    history = jobmanager_request(settings, "GET", f"/jobs/{job_id}/exceptions").get("exceptionHistory", {})
    return JobStatus(
        job_id=job_id,
        name=str(details["name"]),
        state=str(details["state"]),
        failures=len(history.get("entries", [])),
        parallelism=max((int(v["parallelism"]) for v in details.get("vertices", [])), default=0),
        vertex_states={state: n for state, n in details.get("status-counts", {}).items() if n},
    )


def cancel_job(settings: Settings, job_id: str, *, wait: bool = True) -> JobStatus:
    """Cancel the job (its retained checkpoint stays for a later start); with ``wait``, until it has stopped."""
    jobmanager_request(settings, "PATCH", f"/jobs/{job_id}?mode=cancel")
    deadline = time.monotonic() + settings.stack.startup_timeout_s
    while True:
        status = job_status(settings, job_id)
        if not wait or status.state in _TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise StackError(
                "flink-jobmanager",
                f"job {job_id} still {status.state} {settings.stack.startup_timeout_s:.0f}s after cancel",
                "see the taskmanagers' logs (`streamtune stack logs flink-taskmanager-1`)",
            )
        time.sleep(0.5)


def _ingest_job_file() -> Path:
    spec = importlib.util.find_spec("streams.job")
    if spec is None or spec.origin is None:
        raise StackError("flink-submit", "the streams package is not installed", FROM_FLINK_ENV)
    return Path(spec.origin)
