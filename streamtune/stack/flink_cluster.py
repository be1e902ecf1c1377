"""A standalone Flink session cluster on 127.0.0.1: real scale-out of the ingest job on one machine.

With ``flink.cluster`` on, `streamtune stack up` starts a jobmanager and ``flink.taskmanagers`` taskmanagers
from the Flink distribution that the apache-flink package ships (``pyflink/bin``, ``pyflink/lib``), each one
a stack component of its own, so `stack status` reports every process truthfully, `down` stops each one, and
a taskmanager that died is restarted by the next `up`. Each process reads its own ``config.yaml``, written
from the settings under the stack home (edits are overwritten), which binds every address Flink lets one
set to 127.0.0.1; the exception, the ports a taskmanager opens for its Python workers while a job runs, is
named by `stack status` (``FlinkTaskManager.exposed``).

The jobmanager's REST API (``jobmanager_request``) and the `flink` CLI's configuration (``client_env``) are
what ``flink_jobs``, the job client, builds on. The cluster runs only from the Flink environment: its Python
workers must find PyFlink and the job's packages there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamtune.errors import StackError
from streamtune.settings import Settings
from streamtune.stack.base import Component, port_free, require_tool

__all__ = [
    "FROM_FLINK_ENV",
    "FlinkJobManager",
    "FlinkTaskManager",
    "client_env",
    "flink_cluster",
    "flink_home",
    "jobmanager_request",
    "prometheus_reporter",
]

FROM_FLINK_ENV = "run it from the Flink environment: .venv/flink/bin/streamtune (`make env` creates it)"
"""The fix of every error that a Python without PyFlink (or without this repository's packages) meets."""


def flink_home() -> Path | None:
    """The Flink distribution inside the running interpreter's apache-flink package, if it has one."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def prometheus_reporter(port: int) -> dict[str, str]:
    """Flink configuration that serves every metric of the process on ``port`` (``/metrics``); none for 0.

    The reporter is a plugin of the distribution that apache-flink ships (``pyflink/plugins/metrics-prometheus``):
    the standalone cluster's processes load it from there (``streams.flink`` configures the local MiniCluster
    the same way, and puts the jar on its classpath). Its HTTP server binds every interface
    (``new InetSocketAddress(port)`` in ``PrometheusReporter``; no option places it). A port that is taken
    costs the reporter, not the job.
    """
    if not port:
        return {}
    return {"metrics.reporter.prom.factory.class": _PROMETHEUS_FACTORY, "metrics.reporter.prom.port": str(port)}


_PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def flink_cluster(settings: Settings) -> list[Component]:
    """The cluster's components in start order: the jobmanager, then each taskmanager."""
    return [
        FlinkJobManager(settings),
        *(FlinkTaskManager(settings, index) for index in range(1, settings.flink.taskmanagers + 1)),
    ]


class _FlinkProcess(Component):
    """A Flink process run in the foreground by the distribution's own script, with its own configuration."""

    script: str

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.flink_home = flink_home()
        self.conf_dir = self.home / "conf"

    def check_tools(self) -> None:
        require_tool(self.name, "java", "install Java 17 or newer (apt-get install openjdk-17-jre-headless)")
        if self.flink_home is None:
            raise StackError(self.name, f"PyFlink is not installed in {sys.executable}", FROM_FLINK_ENV)

    def installed(self) -> bool:
        return self.flink_home is not None and (self.flink_home / "bin" / self.script).is_file()

    def install(self) -> None:
        # Nothing to download: the distribution comes with the apache-flink package of the Flink environment.
        raise StackError(
            self.name, f"no Flink distribution (pyflink/bin/{self.script}) in {sys.executable}", FROM_FLINK_ENV
        )

    def _config(self) -> dict[str, Any]:
        """Flat config.yaml keys of this process: the shipped defaults (JVM flags Java 17 needs), then ours."""
        flink, home = self.settings.flink, self.flink_home
        assert home is not None
        python = _python(self.settings)
        return {
            **_shipped_config(home),
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.rpc.port": flink.rpc_port,
            "jobmanager.memory.process.size": flink.jobmanager_memory,
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": flink.rest_port,
            "taskmanager.host": "127.0.0.1",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.numberOfTaskSlots": flink.task_slots,
            "taskmanager.memory.process.size": flink.taskmanager_memory,
            # Ephemeral RPC and data ports (Flink's defaults, stated because they are what lets several
            # taskmanagers share one host).
            "taskmanager.rpc.port": "0",
            "taskmanager.data.port": 0,
            "io.tmp.dirs": str(self.home / "tmp"),
            "web.tmpdir": str(self.home / "tmp" / "web"),
            # Jobs that do not name one get the Flink environment's Python for their workers and client.
            "python.executable": str(python),
            "python.client.executable": str(python),
            **prometheus_reporter(self.metrics_port),
        }

    @property
    def metrics_port(self) -> int:
        """Port of this process's Prometheus reporter (0: none)."""
        return self.settings.flink.cluster_metrics_port

    def _metrics_ports(self) -> list[int]:
        return [self.metrics_port] if self.metrics_port else []

    def exposed(self) -> list[int]:
        return self._metrics_ports()  # the reporter binds every interface (see prometheus_reporter)

    def prepare(self) -> None:
        assert self.flink_home is not None
        _write_conf(self.conf_dir, self.flink_home, self._config())
        (self.home / "tmp" / "web").mkdir(parents=True, exist_ok=True)
        # The stack recognises its process by the program name in the command line; the scripts exec Java,
        # which keeps `--configDir <home>/conf` (home named after the component) among its arguments, so the
        # launcher carries the component's name.
        launcher = self.home / self.name
        launcher.write_text(
            "#!/bin/sh\n# Written by `streamtune stack up`; edits are overwritten.\n"
            f"exec {shlex.quote(str(self.flink_home / 'bin' / self.script))} start-foreground\n"
        )
        launcher.chmod(0o755)

    def command(self) -> tuple[list[str], dict[str, str]]:
        assert self.flink_home is not None
        return [str(self.home / self.name)], {
            **_flink_env(self.settings, self.flink_home, self.conf_dir, self.home / "log"),
            "FLINK_PID_DIR": str(self.home),
        }


class FlinkJobManager(_FlinkProcess):
    """The session cluster's jobmanager: REST API and web UI on ``flink.rest_port``, RPC on ``flink.rpc_port``."""

    name = "flink-jobmanager"
    script = "jobmanager.sh"

    def address(self) -> str:
        flink = self.settings.flink
        return f"http://127.0.0.1:{flink.rest_port} (RPC {flink.rpc_port}{_metrics_note(self.metrics_port)})"

    def ports(self) -> list[int]:
        return [self.settings.flink.rest_port, self.settings.flink.rpc_port, *self._metrics_ports()]

    def healthy(self) -> bool:
        overview = _get(self.settings, "/overview")
        return isinstance(overview, dict) and "flink-version" in overview


class FlinkTaskManager(_FlinkProcess):
    """One taskmanager with ``flink.task_slots`` slots; healthy once the jobmanager lists it as connected."""

    script = "taskmanager.sh"

    def __init__(self, settings: Settings, index: int) -> None:
        self.name = f"flink-taskmanager-{index}"
        self.index = index
        super().__init__(settings)

    @property
    def metrics_port(self) -> int:
        base = self.settings.flink.cluster_metrics_port
        return base + self.index if base else 0

    def ports(self) -> list[int]:
        return self._metrics_ports()

    def address(self) -> str:
        flink = self.settings.flink
        slots = f"{flink.task_slots} slot{'s' if flink.task_slots > 1 else ''}"
        return (
            f"127.0.0.1 ({slots}, {flink.taskmanager_memory}; jobmanager RPC {flink.rpc_port}"
            f"{_metrics_note(self.metrics_port)})"
        )

    def _config(self) -> dict[str, Any]:
        # A resource id of its own: the jobmanager tells the taskmanagers apart by it, and a restarted one
        # takes over its predecessor's registration.
        return {**super()._config(), "taskmanager.resource-id": self.name}

    def exposed(self) -> list[int]:
        # While a Python job runs, each taskmanager serves its Python workers the Beam Fn API (control, data,
        # state, logging, ...) on ephemeral ports that listen on every interface: flink-python's copy of Beam's
        # ServerFactory builds them with NettyServerBuilder.forPort, and no Flink setting places them. They
        # can go from here once flink-python binds them to the loopback address it already advertises.
        return sorted({*super().exposed(), *_wildcard_listeners(str(self.conf_dir))})

    def healthy(self) -> bool:
        listing = _get(self.settings, "/taskmanagers")
        managers = listing.get("taskmanagers", []) if isinstance(listing, dict) else []
        for manager in managers:
            if manager.get("id") != self.name:
                continue
            # The jobmanager forgets a killed taskmanager only after missed heartbeats; its RPC port closes
            # at once, so a listed taskmanager whose port is free is reported as down right away.
            port = re.search(r":(\d+)/", str(manager.get("path", "")))
            return port is not None and not port_free(int(port.group(1)))
        return False


def client_env(settings: Settings, home: Path) -> dict[str, str]:
    """Write the `flink` CLI's configuration under ``<stack home>/flink-client`` and return the environment the
    CLI of the distribution at ``home`` runs in. Its configuration is the jobmanager's, less its reporter: the
    jobmanager holds that port."""
    client = settings.stack_home / "flink-client"
    config = {k: v for k, v in FlinkJobManager(settings)._config().items() if not k.startswith("metrics.reporter.")}
    _write_conf(client / "conf", home, config | {"io.tmp.dirs": str(client / "tmp")})
    (client / "tmp").mkdir(parents=True, exist_ok=True)
    return _flink_env(settings, home, client / "conf", client / "log")


def _metrics_note(port: int) -> str:
    return f"; metrics :{port}/metrics" if port else ""


def _python(settings: Settings) -> Path:
    return settings.flink.python_executable or Path(sys.executable)


def _flink_env(settings: Settings, home: Path, conf_dir: Path, log_dir: Path) -> dict[str, str]:
    """Environment of a Flink script: this distribution and configuration, and the Flink environment's
    bin/ first on PATH, so that Python workers start in it (``python.executable`` alone is not enough)."""
    bin_dir = str(_python(settings).parent)
    return {
        "FLINK_HOME": str(home),
        "FLINK_CONF_DIR": str(conf_dir),
        "FLINK_LOG_DIR": str(log_dir),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def _shipped_config(home: Path) -> dict[str, Any]:
    import yaml  # a dependency of apache-beam, so always in the Flink environment

    def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            name = f"{prefix}{key}"
            flat.update(flatten(value, f"{name}.") if isinstance(value, Mapping) else {name: value})
        return flat

    return flatten(yaml.safe_load((home / "conf" / "config.yaml").read_text()) or {})


def _write_conf(conf_dir: Path, home: Path, config: Mapping[str, Any]) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    # Flat keys with JSON scalars: valid YAML that Flink 2's config.yaml parser reads as written.
    lines = [
        f"{key}: {json.dumps(value if isinstance(value, int | float | bool) else str(value))}"
        for key, value in config.items()
    ]
    (conf_dir / "config.yaml").write_text(
        "# Written by `streamtune stack up` from the settings; edits are overwritten.\n" + "\n".join(lines) + "\n"
    )
    for name in ("log4j-console.properties", "log4j-cli.properties"):
        (conf_dir / name).write_text((home / "conf" / name).read_text())


def _wildcard_listeners(marker: str) -> list[int]:
    """TCP ports listened on at every interface by the processes whose command line holds ``marker`` (Linux)."""
    sockets: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() not in (proc / "cmdline").read_bytes():
                continue
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        sockets.update(link[len("socket:[") : -1] for link in links if link.startswith("socket:["))
    ports: set[int] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, port = fields[1].rpartition(":")
            if fields[3] == "0A" and fields[9] in sockets and set(address) == {"0"}:  # 0A: LISTEN
                ports.add(int(port, 16))
    return sorted(ports)


def jobmanager_request(settings: Settings, method: str, path: str) -> Any:
    """A request to the jobmanager's REST API and its JSON answer; a ``StackError`` when it does not answer."""
    url = f"http://127.0.0.1:{settings.flink.rest_port}{path}"
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
    except (OSError, ValueError) as exc:
        raise StackError(
            "flink-jobmanager", f"{method} {url} failed: {exc}", "is the cluster up? `streamtune stack status`"
        ) from exc
    return json.loads(body) if body else None


def _get(settings: Settings, path: str) -> Any:
    """A REST GET for a health check; ``None`` when the jobmanager does not answer."""
    try:
        return jobmanager_request(settings, "GET", path)
    except StackError:
        return None
