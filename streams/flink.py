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
from streamtune.kafka import java_client_config
from streamtune.settings import Settings

__all__ = ["connector_jar", "kafka_sink", "kafka_source", "table_environment"]


def connector_jar(settings: Settings) -> Path:
    jar = settings.connector_jar
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
    # The Flink launcher (and so the operators' Python logging) writes its log where this says.
    settings.flink_log_dir.mkdir(parents=True, exist_ok=True)
    os.environ["FLINK_LOG_DIR"] = str(settings.flink_log_dir)
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


# Key and value as raw bytes: the job, not the connector, decides what is valid (and dead-letters the rest).
_RAW_KEY_VALUE = {"key.format": "raw", "key.fields": "key", "value.format": "raw", "value.fields-include": "EXCEPT_KEY"}


def _properties(settings: Settings, **extra: Any) -> dict[str, str]:
    """The connector's Kafka client properties: the Java form of the same settings the Python clients use."""
    return {f"properties.{k}": v for k, v in java_client_config(settings.kafka, **extra).items()}


def kafka_source(topic: str, settings: Settings, *, group_id: str, bounded: bool = False) -> Any:
    """A table over ``topic``: key, value, partition, offset. Resumes from the group's committed offsets.

    Built as a ``TableDescriptor``, not SQL text: option values (a SASL password with a quote in it) are
    passed as they are, with no quoting to get wrong.
    """
    from pyflink.table import DataTypes, Schema, TableDescriptor

    schema = (
        Schema.new_builder()
        .column("key", DataTypes.BYTES())
        .column("value", DataTypes.BYTES())
        .column_by_metadata("partition", DataTypes.INT(), "partition", True)
        .column_by_metadata("offset", DataTypes.BIGINT(), "offset", True)
        .build()
    )
    options = {
        "topic": topic,
        **_RAW_KEY_VALUE,
        "scan.startup.mode": "group-offsets",
        **({"scan.bounded.mode": "latest-offset"} if bounded else {}),
        **_properties(settings, **{"group.id": group_id, "auto.offset.reset": "earliest"}),
    }
    return _descriptor(TableDescriptor, schema, options)


def kafka_sink(
    topic: str,
    settings: Settings,
    *,
    with_headers: bool = False,
    transactional_id: str | None = None,
    max_request_bytes: int | None = None,
) -> Any:
    """A table that writes ``key``, ``value`` (and ``headers``) to ``topic``.

    With ``transactional_id`` the sink is exactly-once: records become visible to read_committed
    consumers when the checkpoint that covers them completes, and a restart never duplicates them.
    """
    from pyflink.table import DataTypes, Schema, TableDescriptor

    builder = Schema.new_builder().column("key", DataTypes.BYTES()).column("value", DataTypes.BYTES())
    if with_headers:
        builder = builder.column_by_metadata("headers", DataTypes.MAP(DataTypes.STRING(), DataTypes.BYTES()), "headers")
    options = {
        "topic": topic,
        **_RAW_KEY_VALUE,
        **_properties(settings),
    }
    if max_request_bytes is not None:
        options["properties.max.request.size"] = str(max_request_bytes)
    if transactional_id is None:
        options["sink.delivery-guarantee"] = "at-least-once"
    else:
        options["sink.delivery-guarantee"] = "exactly-once"
        options["sink.transactional-id-prefix"] = transactional_id
        # the broker caps transactions at transaction.max.timeout.ms (15 minutes by default)
        options["properties.transaction.timeout.ms"] = "900000"
    return _descriptor(TableDescriptor, builder.build(), options)


def _descriptor(table_descriptor: Any, schema: Any, options: dict[str, str]) -> Any:
    builder = table_descriptor.for_connector("kafka").schema(schema)
    for key, value in options.items():
        builder = builder.option(key, value)
    return builder.build()
