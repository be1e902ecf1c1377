"""Kafka as a single-node KRaft broker and controller on 127.0.0.1, from the jars on Maven Central.

``stack up`` formats the storage once, with a fresh cluster id, and runs ``kafka.Kafka`` on a
``server.properties`` written from the settings (replication 1, no topic auto-creation).
"""

from __future__ import annotations

import base64
import shutil
import uuid

from streamtune.errors import StackError
from streamtune.settings import Settings
from streamtune.stack.base import LOCAL_HOSTS, Component, port_free, require_tool, run_logged, run_maven

__all__ = ["Kafka"]


class Kafka(Component):
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        servers = settings.kafka.bootstrap_servers.split(",")
        host, _, port = servers[0].strip().rpartition(":")
        if len(servers) > 1 or host not in LOCAL_HOSTS:
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
        require_tool(self.name, "java", "install Java 17 or newer (apt-get install openjdk-17-jre-headless)")
        if not self.installed():
            require_tool(self.name, "mvn", "install Maven (apt-get install maven) to fetch the Kafka jars")

    def installed(self) -> bool:
        return (self.libs / f"kafka_2.13-{self.settings.stack.kafka_version}.jar").is_file()

    def install(self) -> None:
        stack = self.settings.stack
        work = self.libs.parent
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_KAFKA_POM.format(kafka=stack.kafka_version, log4j=stack.log4j_slf4j_version))
        staging = work / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        run_maven(
            self,
            [
                "-f",
                str(work / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
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
        run_logged(
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


def _cluster_id() -> str:
    """A random KRaft cluster id (a base64url uuid, as Kafka's own ``random-uuid``). One that starts with '-'
    (one in 64) is drawn again: the storage tool's argument parser would take it for an option ("argument
    --cluster-id/-t: expected one argument"), as Kafka's ``Uuid.randomUuid`` avoids too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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
