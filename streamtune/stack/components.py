"""How each local-stack component is installed, configured, started and checked.

Installs go to ``<cache_dir>`` (reused by every checkout); data, logs and pid files to the stack home.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

from streamtune.errors import StackError
from streamtune.settings import Settings

__all__ = ["S3", "Component", "FlinkConnector", "Kafka", "Weaviate", "components", "port_free"]

_LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _require_tool(component: str, tool: str, fix: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(component, f"`{tool}` is not on PATH", fix)
    return path


def _cluster_id() -> str:
    """A random KRaft cluster id (a base64url uuid, as Kafka's own ``random-uuid``). One that starts with '-'
    (one in 64) is drawn again: the storage tool's argument parser would take it for an option ("argument
    --cluster-id/-t: expected one argument"), as Kafka's ``Uuid.randomUuid`` avoids too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _run_logged(component: str, cmd: list[str], log: Path, timeout_s: float, fix: str, **kwargs: object) -> None:
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


class Kafka(Component):
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        servers = settings.kafka.bootstrap_servers.split(",")
        host, _, port = servers[0].strip().rpartition(":")
        if len(servers) > 1 or host not in _LOCAL_HOSTS:
            raise StackError(
                self.name,
                f"kafka.bootstrap_servers={settings.kafka.bootstrap_servers!r} is not one local address",
                "the local stack runs a single broker on 127.0.0.1; unset STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS "
                "or set it to 127.0.0.1:<port> (a remote cluster needs no `stack up`)",
            )
        self.port = int(port)
        self.libs = self.cache / "kafka" / settings.stack.kafka_version / "libs"

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ports(self) -> list[int]:
        return [self.port, self.settings.stack.kafka_controller_port]

    def check_tools(self) -> None:
        _require_tool(self.name, "java", "install Java 17 or newer (apt-get install openjdk-17-jre-headless)")
        if not self.installed():
            _require_tool(self.name, "mvn", "install Maven (apt-get install maven) to fetch the Kafka jars")

    def installed(self) -> bool:
        return (self.libs / f"kafka_2.13-{self.settings.stack.kafka_version}.jar").is_file()

    def install(self) -> None:
        stack = self.settings.stack
        work = self.libs.parent
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_KAFKA_POM.format(kafka=stack.kafka_version, log4j=stack.log4j_slf4j_version))
        staging = work / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        _run_logged(
            self.name,
            [
                "mvn",
                "-q",
                "-B",
                f"-Dmaven.repo.local={self.cache / 'm2'}",
                "-f",
                str(work / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            self.install_log,
            stack.build_timeout_s,
            "check that Maven Central is reachable, then run `streamtune stack up` again",
        )
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)

    def prepare(self) -> None:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        controller = self.settings.stack.kafka_controller_port
        (self.home / "server.properties").write_text(
            _KAFKA_PROPERTIES.format(port=self.port, controller=controller, data=data)
        )
        (self.home / "log4j2.properties").write_text(_KAFKA_LOG4J)
        if (data / "meta.properties").is_file():
            return
        cluster_id = _cluster_id()
        _run_logged(
            self.name,
            [
                "java",
                "-cp",
                f"{self.libs}/*",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.home / "server.properties"),
            ],
            self.log_file,
            120,
            f"remove {data} if it holds a broken format, then run `streamtune stack up` again",
        )

    def command(self) -> tuple[list[str], dict[str, str]]:
        return (
            [
                "java",
                f"-Xmx{self.settings.stack.kafka_heap}",
                "-XX:+UseG1GC",
                "-cp",
                f"{self.libs}/*",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "kafka.Kafka",
                str(self.home / "server.properties"),
            ],
            {},
        )

    def healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient

        if port_free(self.port):
            return False
        try:
            admin = AdminClient({"bootstrap.servers": self.address(), "log_level": 0, "logger": _silent})  # type: ignore[dict-item]
            admin.list_topics(timeout=3)
        except Exception:
            return False
        return True


class Weaviate(Component):
    name = "weaviate"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if settings.weaviate.host not in _LOCAL_HOSTS:
            raise StackError(
                self.name,
                f"weaviate.host={settings.weaviate.host!r} is not a local address",
                "the local stack runs Weaviate on 127.0.0.1; unset STREAMTUNE__WEAVIATE__HOST "
                "(a remote Weaviate needs no `stack up`)",
            )
        version = settings.stack.weaviate_version
        self.gobin = self.cache / "weaviate" / version / "bin"
        self.binary = self.gobin / "weaviate-server"

    def address(self) -> str:
        w, metrics = self.settings.weaviate, self.settings.stack.weaviate_metrics_port
        return f"http://127.0.0.1:{w.http_port} (gRPC {w.grpc_port}" + (
            f"; metrics :{metrics}/metrics)" if metrics else ")"
        )

    def ports(self) -> list[int]:
        s, w = self.settings.stack, self.settings.weaviate
        return [
            w.http_port,
            w.grpc_port,
            s.weaviate_gossip_port,
            s.weaviate_gossip_port + 1,
            s.weaviate_raft_port,
            s.weaviate_raft_port + 1,
            *([s.weaviate_metrics_port] if s.weaviate_metrics_port else []),
        ]

    def exposed(self) -> list[int]:
        # Weaviate v1.39's gRPC server listens on ":<port>" (adapters/handlers/grpc/server.go), its cluster
        # data port likewise, and so does its Prometheus exporter (adapters/handlers/rest/configure_api.go);
        # no setting places them on 127.0.0.1. Said in `stack status` and the README.
        s = self.settings.stack
        metrics = [s.weaviate_metrics_port] if s.weaviate_metrics_port else []
        return [self.settings.weaviate.grpc_port, s.weaviate_gossip_port + 1, *metrics]

    def check_tools(self) -> None:
        if not self.installed():
            _require_tool(
                self.name, "go", "install Go 1.24 or newer (https://go.dev/doc/install or apt-get install golang)"
            )

    def installed(self) -> bool:
        return self.binary.is_file() and os.access(self.binary, os.X_OK)

    def install(self) -> None:
        gocache = self.cache / "go"
        env = {
            **os.environ,
            "GOBIN": str(self.gobin),
            "GOMODCACHE": str(gocache / "mod"),
            "GOCACHE": str(gocache / "build"),
            "GOFLAGS": "-mod=mod",
            "CGO_ENABLED": "0",
        }
        _run_logged(
            self.name,
            [
                "go",
                "install",
                f"github.com/weaviate/weaviate/cmd/weaviate-server@{self.settings.stack.weaviate_version}",
            ],
            self.install_log,
            self.settings.stack.build_timeout_s,
            "check that the Go module proxy is reachable and ~5 GB of disk are free, then `streamtune stack up` again",
            env=env,
        )

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)

    def command(self) -> tuple[list[str], dict[str, str]]:
        s, w = self.settings.stack, self.settings.weaviate
        env = {
            "PERSISTENCE_DATA_PATH": str(self.home / "data"),
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "",
            "API_BASED_MODULES_DISABLED": "true",
            "CLUSTER_HOSTNAME": "node1",
            "CLUSTER_IN_LOCALHOST": "true",
            "CLUSTER_BIND_ADDR": "127.0.0.1",
            "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": str(s.weaviate_gossip_port),
            # A single node elects itself only with data port = gossip port + 1 and internal RPC port =
            # Raft port + 1 (the peer addresses it joins are derived that way); so both are derived here.
            "CLUSTER_DATA_BIND_PORT": str(s.weaviate_gossip_port + 1),
            "RAFT_PORT": str(s.weaviate_raft_port),
            "RAFT_INTERNAL_RPC_PORT": str(s.weaviate_raft_port + 1),
            "RAFT_BOOTSTRAP_EXPECT": "1",
            # Without an explicit join address a single node on non-default ports never elects itself.
            "RAFT_JOIN": f"node1:{s.weaviate_raft_port}",
            "GRPC_PORT": str(w.grpc_port),
            "DISABLE_TELEMETRY": "true",
            "LOG_LEVEL": "info",
            "GOMAXPROCS": "2",
            "PROMETHEUS_MONITORING_ENABLED": "true" if s.weaviate_metrics_port else "false",
        }
        if s.weaviate_metrics_port:
            env["PROMETHEUS_MONITORING_PORT"] = str(s.weaviate_metrics_port)
        cmd = [str(self.binary), "--host", "127.0.0.1", "--port", str(w.http_port), "--scheme", "http"]
        return cmd, env

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.settings.weaviate.http_port}/v1/.well-known/ready"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return bool(response.status == 200)
        except OSError:
            return False


class S3(Component):
    """An S3-compatible object store for ``training.adapters_dir = "s3://..."``: SeaweedFS (Apache-2.0) in one
    ``weed server`` process (master, volume server, filer and S3 gateway), every port on 127.0.0.1, one identity
    with the ``[s3]`` settings' fixed local credentials, and the ``s3.bucket`` bucket created at start.

    SeaweedFS's main module has ``replace`` directives, so ``go install module@version`` refuses it (as it would
    any such module); the module is downloaded through the Go module proxy and ``./weed`` built inside it."""

    name = "s3"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        s3 = settings.s3
        if s3.port is None:
            raise StackError(
                self.name,
                f"s3.endpoint_url={s3.endpoint_url!r} is not a local address",
                "the local stack runs SeaweedFS on 127.0.0.1; unset STREAMTUNE__S3__ENDPOINT_URL "
                "(a remote S3 store needs no `stack up`)",
            )
        self.port = s3.port
        self.binary = self.cache / "seaweedfs" / s3.seaweedfs_version / "bin" / "weed"

    def address(self) -> str:
        return f"http://127.0.0.1:{self.port} (bucket {self.settings.s3.bucket})"

    def ports(self) -> list[int]:
        s3 = self.settings.s3
        http = [s3.master_port, s3.volume_port, s3.filer_port, self.port]
        return [*http, *(port + 10000 for port in http)]  # SeaweedFS's gRPC convention, made explicit below

    def check_tools(self) -> None:
        if not self.installed():
            _require_tool(
                self.name, "go", "install Go 1.24 or newer (https://go.dev/doc/install or apt-get install golang)"
            )

    def installed(self) -> bool:
        return self.binary.is_file() and os.access(self.binary, os.X_OK)

    def install(self) -> None:
        gocache = self.cache / "go"
        env = {
            **os.environ,
            "GOMODCACHE": str(gocache / "mod"),
            "GOCACHE": str(gocache / "build"),
            "GOFLAGS": "-mod=readonly",
            "CGO_ENABLED": "0",
        }
        self.cache.mkdir(parents=True, exist_ok=True)
        module = f"github.com/seaweedfs/seaweedfs@{self.settings.s3.seaweedfs_version}"
        fix = "check that the Go module proxy is reachable and ~3 GB of disk are free, then `streamtune stack up` again"
        _run_logged(
            self.name,
            ["go", "mod", "download", module],
            self.install_log,
            self.settings.stack.build_timeout_s,
            fix,
            env=env,
            cwd=self.cache,
        )
        source = gocache / "mod" / module
        partial = self.binary.with_name("weed.partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        _run_logged(
            self.name,
            ["go", "build", "-trimpath", "-o", str(partial), "./weed"],
            self.install_log,
            self.settings.stack.build_timeout_s,
            fix,
            env=env,
            cwd=source,
        )
        partial.rename(self.binary)

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        s3 = self.settings.s3
        identity = {
            "identities": [
                {
                    "name": "streamtune",
                    "credentials": [{"accessKey": s3.key_id(), "secretKey": s3.secret()}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        config = self.home / "s3.json"
        config.touch(mode=0o600)
        config.chmod(0o600)  # the secret lives only here and in the settings
        config.write_text(json.dumps(identity))

    def command(self) -> tuple[list[str], dict[str, str]]:
        s3 = self.settings.s3
        cmd = [
            str(self.binary),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.home / 'data'}",
            f"-master.port={s3.master_port}",
            f"-master.port.grpc={s3.master_port + 10000}",
            f"-volume.port={s3.volume_port}",
            f"-volume.port.grpc={s3.volume_port + 10000}",
            f"-filer.port={s3.filer_port}",
            f"-filer.port.grpc={s3.filer_port + 10000}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self.port + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            f"-s3.config={self.home / 's3.json'}",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
            # one master: after an unclean stop it waits out an election timeout (10 s by default) before it
            # leads again, and every write waits with it
            "-master.electionTimeout=1s",
        ]
        return cmd, {"GOMAXPROCS": "2"}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=3) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def after_start(self) -> None:
        s3 = self.settings.s3
        # A bucket is a folder under the filer's /buckets: asking the filer (HTTP, on 127.0.0.1) is instant,
        # where `weed shell` takes seconds to find the master after a restart.
        request = urllib.request.Request(f"http://127.0.0.1:{s3.filer_port}/buckets/{s3.bucket}", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise StackError(self.name, f"the filer answered {exc.code} for /buckets/{s3.bucket}", "") from exc
        except OSError as exc:
            raise StackError(self.name, f"the filer on port {s3.filer_port} did not answer: {exc}", "") from exc
        _run_logged(
            self.name,
            [str(self.binary), "shell", f"-master=127.0.0.1:{s3.master_port}", f"-filer=127.0.0.1:{s3.filer_port}"],
            self.log_file,
            60,
            f"create the bucket by hand: echo 's3.bucket.create -name {s3.bucket}' | {self.binary} shell",
            input=f"s3.bucket.create -name {s3.bucket}\n".encode(),
        )


class FlinkConnector(Component):
    """The Kafka connector jar that PyFlink jobs load with ``env.add_jars``; no process of its own."""

    name = "flink-connector"
    has_process = False

    @property
    def jar(self) -> Path:
        return self.settings.connector_jar

    def address(self) -> str:
        return str(self.jar)

    def check_tools(self) -> None:
        if not self.installed():
            _require_tool(self.name, "mvn", "install Maven (apt-get install maven) to fetch the connector jar")

    def installed(self) -> bool:
        return self.jar.is_file()

    def install(self) -> None:
        if self.settings.flink.connector_jar is not None:
            raise StackError(
                self.name,
                f"flink.connector_jar={self.settings.flink.connector_jar} does not exist",
                "point STREAMTUNE__FLINK__CONNECTOR_JAR at an existing jar, or unset it to download one",
            )
        version = self.settings.flink.connector_version
        _run_logged(
            self.name,
            [
                "mvn",
                "-q",
                "-B",
                f"-Dmaven.repo.local={self.cache / 'm2'}",
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                f"-Dartifact=org.apache.flink:flink-sql-connector-kafka:{version}",
                f"-DoutputDirectory={self.jar.parent}",
            ],
            self.install_log,
            self.settings.stack.build_timeout_s,
            "check that Maven Central is reachable and flink.connector_version names a released version",
        )


def components(settings: Settings) -> list[Component]:
    listed: list[Component] = [Kafka(settings), Weaviate(settings), S3(settings), FlinkConnector(settings)]
    if settings.flink.cluster:
        from streamtune.stack.flink_cluster import flink_cluster  # that module builds on this one

        listed += flink_cluster(settings)
    return listed


def _silent(*_: object) -> None:
    return None


_KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamtune</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_KAFKA_PROPERTIES = """# Written by `streamtune stack up` from the settings; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""

_KAFKA_LOG4J = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
"""
