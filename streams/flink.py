"""A Flink table environment wired to the settings, and Kafka tables through the SQL connector.

Topics are read and written as raw bytes (``key BYTES, value BYTES``) with their Kafka metadata
(partition, offset, headers), so that the job itself decides what is valid and dead-letters the rest
with the contract's headers; a deserializer in the connector would fail the job on bad input instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from streamtune.errors import ConfigError
from streamtune.kafka import client_config
from streamtune.settings import Settings
from streamtune.stack.components import FlinkConnector

__all__ = ["connector_jar", "kafka_sink_ddl", "kafka_source_ddl", "table_environment"]


def connector_jar(settings: Settings) -> Path:
    jar = FlinkConnector(settings).jar
    if not jar.is_file():
        raise ConfigError(
            "flink.connector_jar", str(jar), "run `streamtune stack up` to download it, or point the setting at a jar"
        )
    return jar


def table_environment(settings: Settings, *, checkpointing: bool = True, config: dict[str, str] | None = None) -> Any:
    """A streaming TableEnvironment (local MiniCluster unless submitted with `flink run`)."""
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    python = str(settings.flink.python_executable or sys.executable)
    # Python workers are started from this environment: put its bin/ first so that they find the
    # same interpreter and packages (python.executable alone is not enough in thread mode).
    bin_dir = str(Path(python).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    configuration = Configuration()
    for key, value in (config or {}).items():
        configuration.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(configuration)
    env.add_jars(connector_jar(settings).resolve().as_uri())
    env.set_parallelism(settings.flink.parallelism)
    if checkpointing:
        env.enable_checkpointing(settings.flink.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    t_env = StreamTableEnvironment.create(env)
    table_config = t_env.get_config()
    table_config.set("python.executable", python)
    table_config.set("python.client.executable", python)
    table_config.set("pipeline.name", "streamtune")
    return env, t_env


def _properties(settings: Settings, **extra: str) -> str:
    props = {f"properties.{k}": str(v) for k, v in client_config(settings.kafka, **extra).items()}
    return ",\n".join(f"  '{k}' = '{v}'" for k, v in props.items())


def kafka_source_ddl(table: str, topic: str, settings: Settings, *, group_id: str, bounded: bool = False) -> str:
    """A table over ``topic``: key, value, partition, offset. Resumes from the group's committed offsets."""
    bounded_opt = "  'scan.bounded.mode' = 'latest-offset',\n" if bounded else ""
    return f"""
CREATE TEMPORARY TABLE `{table}` (
  `key` BYTES,
  `value` BYTES,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'key.format' = 'raw',
  'key.fields' = 'key',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY',
  'scan.startup.mode' = 'group-offsets',
{bounded_opt}{_properties(settings, **{"group.id": group_id, "auto.offset.reset": "earliest"})}
)"""


def kafka_sink_ddl(
    table: str, topic: str, settings: Settings, *, with_headers: bool = False, transactional_id: str | None = None
) -> str:
    """A table that writes ``key``, ``value`` (and ``headers``) to ``topic``.

    With ``transactional_id`` the sink is exactly-once: records become visible to read_committed
    consumers when the checkpoint that covers them completes, and a restart never duplicates them.
    """
    headers = ",\n  `headers` MAP<STRING, BYTES> METADATA" if with_headers else ""
    if transactional_id is None:
        guarantee = "  'sink.delivery-guarantee' = 'at-least-once',\n"
    else:
        guarantee = (
            "  'sink.delivery-guarantee' = 'exactly-once',\n"
            f"  'sink.transactional-id-prefix' = '{transactional_id}',\n"
            # the broker caps transactions at transaction.max.timeout.ms (15 minutes by default)
            "  'properties.transaction.timeout.ms' = '900000',\n"
        )
    return f"""
CREATE TEMPORARY TABLE `{table}` (
  `key` BYTES,
  `value` BYTES{headers}
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'key.format' = 'raw',
  'key.fields' = 'key',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY',
{guarantee}{_properties(settings)}
)"""
