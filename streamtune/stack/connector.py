"""The Flink Kafka connector jar, fetched from Maven Central into the cache for the jobs' ``env.add_jars``."""

from __future__ import annotations

from pathlib import Path

from streamtune.errors import StackError
from streamtune.stack.base import Component, require_tool, run_maven

__all__ = ["FlinkConnector"]


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
            require_tool(self.name, "mvn", "install Maven (apt-get install maven) to fetch the connector jar")

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
        run_maven(
            self,
            [
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                f"-Dartifact=org.apache.flink:flink-sql-connector-kafka:{version}",
                f"-DoutputDirectory={self.jar.parent}",
            ],
            "check that Maven Central is reachable and flink.connector_version names a released version",
        )
