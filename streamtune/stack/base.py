"""What every local-stack component is: how it is installed, configured, started and checked, and the few
helpers the components share. Each system has a module of its own built on this one; ``manager`` lists them.

Installs go to ``<cache_dir>`` (reused by every checkout); data, logs and pid files to the stack home.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from streamtune.errors import StackError
from streamtune.settings import Settings

__all__ = ["LOCAL_HOSTS", "Component", "GoBuilt", "port_free", "require_tool", "run_logged", "run_maven"]

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
"""The host names a local server of the stack may be configured with; any other is a remote one."""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_tool(component: str, tool: str, fix: str) -> str:
    """The path of ``tool`` on PATH; a ``StackError`` naming the component and the fix if it is missing."""
    path = shutil.which(tool)
    if path is None:
        raise StackError(component, f"`{tool}` is not on PATH", fix)
    return path


def run_logged(component: str, cmd: list[str], log: Path, timeout_s: float, fix: str, **kwargs: object) -> None:
    """Run an install or set-up command to completion, its output appended to ``log``; its failure names the
    command, the log's last lines and the fix."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        try:
            result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False, **kwargs)  # type: ignore[call-overload]
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                component, f"`{' '.join(cmd[:3])} ...` ran past {timeout_s:.0f}s (log: {log})", fix
            ) from exc
    if result.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise StackError(
            component,
            f"`{' '.join(cmd[:3])} ...` failed with exit code {result.returncode} (log: {log}):\n  "
            + "\n  ".join(tail),
            fix,
        )


class Component(ABC):
    """One piece of the stack. A component without a process (the connector jar) only installs."""

    name: str
    has_process = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.stack_home / self.name
        self.cache = settings.cache_dir

    @property
    def log_file(self) -> Path:
        return self.settings.stack_home / "logs" / f"{self.name}.log"

    @property
    def install_log(self) -> Path:
        return self.settings.stack_home / "logs" / f"{self.name}-install.log"

    @abstractmethod
    def installed(self) -> bool: ...

    @abstractmethod
    def install(self) -> None: ...

    @abstractmethod
    def address(self) -> str: ...

    def ports(self) -> list[int]:
        return []

    def check_tools(self) -> None:
        """Fail before installing anything if a needed tool is missing."""

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration and format storage before a start."""

    def healthy(self) -> bool:
        return self.installed()

    def exposed(self) -> list[int]:
        """Ports this component's server opens on every interface, with no setting to place them."""
        return []

    def after_start(self) -> None:
        """Once healthy (started now or found running): create what its clients expect to find."""


def run_maven(component: Component, args: Sequence[str], fix: str) -> None:
    """Maven, quiet and in batch mode, on the local repository every component shares (``<cache_dir>/m2``), run as
    ``run_logged`` runs a command: into the component's install log, within ``stack.build_timeout_s``."""
    run_logged(
        component.name,
        ["mvn", "-q", "-B", f"-Dmaven.repo.local={component.cache / 'm2'}", *args],
        component.install_log,
        component.settings.stack.build_timeout_s,
        fix,
    )


class GoBuilt(Component):
    """A component whose server is one Go binary, ``binary``, built from source into the cache: `go` is needed
    until it is built, and every build shares the module and build caches under ``<cache_dir>/go``."""

    binary: Path

    @property
    def go_cache(self) -> Path:
        return self.cache / "go"

    def check_tools(self) -> None:
        if not self.installed():
            require_tool(
                self.name, "go", "install Go 1.24 or newer (https://go.dev/doc/install or apt-get install golang)"
            )

    def installed(self) -> bool:
        return self.binary.is_file() and os.access(self.binary, os.X_OK)

    def go_env(self, goflags: str, **extra: str) -> dict[str, str]:
        """The environment of a `go` command of the build: this process's, the shared caches, ``GOFLAGS``, no cgo
        (a static binary), and ``extra`` (``GOBIN=...``)."""
        return {
            **os.environ,
            **extra,
            "GOMODCACHE": str(self.go_cache / "mod"),
            "GOCACHE": str(self.go_cache / "build"),
            "GOFLAGS": goflags,
            "CGO_ENABLED": "0",
        }
