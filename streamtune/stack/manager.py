"""The local stack: which components it has, in start order, and how they are started, stopped and reported.
Only processes this stack started are ever stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from streamtune.errors import StackError
from streamtune.settings import Settings
from streamtune.stack.base import Component, port_free
from streamtune.stack.connector import FlinkConnector
from streamtune.stack.flink_cluster import flink_cluster
from streamtune.stack.kafka import Kafka
from streamtune.stack.s3 import S3
from streamtune.stack.weaviate import Weaviate

__all__ = ["ComponentStatus", "Stack", "components"]


def components(settings: Settings) -> list[Component]:
    """Every component of the stack in start order (`down` stops them in reverse); the Flink cluster's only
    with ``flink.cluster`` on."""
    listed: list[Component] = [Kafka(settings), Weaviate(settings), S3(settings), FlinkConnector(settings)]
    if settings.flink.cluster:
        listed += flink_cluster(settings)
    return listed


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    state: str
    """healthy | stopped | exited | unhealthy | not installed | installed"""
    pid: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("healthy", "installed")


class Stack:
    """The local stack, or the part of it named in ``only`` (a test's private Weaviate, say)."""

    def __init__(
        self, settings: Settings, say: Callable[[str], None] = print, only: Sequence[str] | None = None
    ) -> None:
        self.settings = settings
        self.components = [c for c in components(settings) if only is None or c.name in only]
        self.run_dir = settings.stack_home / "run"
        self.say = say

    # -- pid files ----------------------------------------------------------------------------
    def _pid_file(self, component: Component) -> Path:
        return self.run_dir / f"{component.name}.pid"

    def _own_pid(self, component: Component) -> int | None:
        """The pid this stack recorded for the component, if that process still runs the same program."""
        try:
            record = json.loads(self._pid_file(component).read_text())
            pid, program = int(record["pid"]), str(record["program"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError):
            return None
        return pid if any(program.encode() in part for part in cmdline) else None

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> list[ComponentStatus]:
        return [self._status(c) for c in self.components]

    def _status(self, component: Component) -> ComponentStatus:
        address = component.address()
        if not component.installed():
            return ComponentStatus(component.name, address, "not installed")
        if not component.has_process:
            return ComponentStatus(component.name, address, "installed")
        pid = self._own_pid(component)
        if component.healthy():
            notes = [] if pid else ["not started by this stack"]
            if component.exposed():
                ports = ", ".join(map(str, component.exposed()))
                notes.append(f"ports {ports} listen on all interfaces (no setting can bind them): firewall them")
            return ComponentStatus(component.name, address, "healthy", pid, "; ".join(notes))
        if pid is not None:
            return ComponentStatus(component.name, address, "unhealthy", pid, f"see {component.log_file}")
        if self._pid_file(component).exists():
            return ComponentStatus(component.name, address, "exited", None, f"process died; see {component.log_file}")
        return ComponentStatus(component.name, address, "stopped")

    # -- up -------------------------------------------------------------------------------------
    def up(self) -> list[ComponentStatus]:
        """Install what is missing, start what is not running, wait until healthy. Idempotent."""
        for component in self.components:
            component.check_tools()
        missing = [c for c in self.components if not c.installed()]
        if missing:
            self._install(missing)
        started: list[Component] = []
        try:
            for component in self.components:
                if not component.has_process:
                    self.say(f"{component.name}: ready at {component.address()}")
                    continue
                if component.healthy():
                    self.say(f"{component.name}: already running at {component.address()}")
                    component.after_start()
                    continue
                self._start(component)
                started.append(component)
                component.after_start()
        except BaseException:
            for component in reversed(started):
                self._stop(component)
            raise
        if not started and not missing:
            self.say("stack: everything was already up; nothing to do")
        return self.status()

    def _install(self, missing: list[Component]) -> None:
        for component in missing:
            self.say(f"{component.name}: installing into {self.settings.cache_dir} (log: {component.install_log}) ...")
        begin = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(missing)) as pool:
            futures = {c.name: pool.submit(c.install) for c in missing}
            errors = []
            for name, future in futures.items():
                try:
                    future.result()
                    self.say(f"{name}: installed ({time.monotonic() - begin:.0f}s)")
                except StackError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _start(self, component: Component) -> None:
        pid = self._own_pid(component)
        if pid is not None:  # ours, but not healthy: restart it rather than start a second copy
            self.say(f"{component.name}: running but unhealthy; restarting")
            self._stop(component)
        for port in component.ports():
            if not port_free(port):
                raise StackError(
                    component.name,
                    f"port {port} on 127.0.0.1 is taken by another process",
                    f"stop that process (`ss -ltnp 'sport = :{port}'` shows it) or configure {component.name} "
                    "on free ports (`streamtune config show` lists the port settings)",
                )
        component.prepare()
        cmd, env = component.command()
        component.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"{component.name}: starting (log: {component.log_file})")
        with component.log_file.open("ab") as log:
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,  # survives the CLI, and `down` can signal its whole group
            )
        self._pid_file(component).write_text(json.dumps({"pid": process.pid, "program": Path(cmd[0]).name}))
        deadline = time.monotonic() + self.settings.stack.startup_timeout_s
        begin = time.monotonic()
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._pid_file(component).unlink(missing_ok=True)
                tail = component.log_file.read_text(errors="replace").strip().splitlines()[-6:]
                raise StackError(
                    component.name,
                    f"exited with code {process.returncode} during start-up:\n  " + "\n  ".join(tail),
                    f"read {component.log_file}",
                )
            if component.healthy():
                self.say(f"{component.name}: healthy at {component.address()} ({time.monotonic() - begin:.1f}s)")
                return
            time.sleep(0.5)
        self._stop(component)
        raise StackError(
            component.name,
            f"not healthy within {self.settings.stack.startup_timeout_s:.0f}s",
            f"read {component.log_file}; raise STREAMTUNE__STACK__STARTUP_TIMEOUT_S on a slow machine",
        )

    # -- down -----------------------------------------------------------------------------------
    def down(self) -> None:
        for component in reversed(self.components):
            if component.has_process:
                self._stop(component)

    def _stop(self, component: Component, grace_s: float = 30.0) -> None:
        pid = self._own_pid(component)
        self._pid_file(component).unlink(missing_ok=True)
        if pid is None:
            self.say(f"{component.name}: not running (nothing of ours to stop)")
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            self.say(f"{component.name}: killed (pid {pid}) after {grace_s:.0f}s")
        else:
            self.say(f"{component.name}: stopped (pid {pid})")

    def log_file(self, name: str) -> Path:
        for component in self.components:
            if component.name == name:
                return component.log_file
        raise StackError(name, "no such component", f"use one of {', '.join(c.name for c in self.components)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours (we are not its parent once the CLI exits, but tests may be) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
