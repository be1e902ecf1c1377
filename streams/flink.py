"""A Flink table environment wired to the settings, and Kafka tables through the SQL connector.

Topics are read and written as raw bytes (``key BYTES, value BYTES``) with their Kafka metadata
(partition, offset, headers), so that the job itself decides what is valid and dead-letters the rest
with the contract's headers; a deserializer in the connector would fail the job on bad input instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from streamtune.errors import ConfigError
from streamtune.kafka import java_client_config
from streamtune.settings import Settings

__all__ = ["connector_jar", "current_metrics_scope", "kafka_sink", "kafka_source", "table_environment"]


def connector_jar(settings: Settings) -> Path:
    jar = settings.connector_jar
    if not jar.is_file():
        raise ConfigError(
            "flink.connector_jar", str(jar), "run `streamtune stack up` to download it, or point the setting at a jar"
        )
    return jar


def table_environment(settings: Settings, *, checkpointing: bool = True, config: dict[str, str] | None = None) -> Any:
    """A streaming TableEnvironment (local MiniCluster unless submitted with `flink run`).

    The MiniCluster serves Flink's metrics, the job's counters among them, on ``flink.metrics_port``.
    """
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
    if settings.flink.metrics_port:
        _reporter_on_classpath(settings.flink.metrics_port)
    configuration = Configuration()  # starts PyFlink's gateway JVM, with the environment as set above
    for key, value in {**_prometheus_reporter(settings.flink.metrics_port), **(config or {})}.items():
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


def current_metrics_scope() -> Any:
    """The metrics scope of the Python operator now running, for a later ``with`` (``on_timer``).

    PyFlink runs a function's timers outside its operator's metrics scope when the function has side
    outputs (``process_timer`` in ``pyflink/fn_execution/beam/beam_operations_*``, 2.2.1, enters no
    ``scoped_process_state``), so what a timer counts is dropped. Captured in ``process_element`` (always
    inside that scope) and entered around the timer's work, it counts. Can go once PyFlink's
    ``process_timer`` enters the scope itself (tests/streams/test_metrics.py fails without this).
    """
    from apache_beam.runners.worker import statesampler

    tracker = statesampler.get_current_tracker()
    return tracker.current_state() if tracker is not None else contextlib.nullcontext()


def _prometheus_reporter(port: int) -> dict[str, str]:
    """Flink's Prometheus reporter on ``port`` (every interface: no option binds it); none for 0. The same
    options as the standalone cluster's (``streamtune.stack.flink_cluster.prometheus_reporter``, which this
    package may not import; a test holds the two equal). A taken port costs the reporter, not the job."""
    if not port:
        return {}
    return {
        "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": str(port),
    }


def _reporter_jar() -> Path | None:
    """The Prometheus reporter plugin of the Flink distribution inside the apache-flink package."""
    import pyflink

    plugins = Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus"
    jars = sorted(plugins.glob("flink-metrics-prometheus-*.jar"))
    return jars[-1] if jars else None


def _reporter_on_classpath(port: int) -> None:
    """Put the Prometheus reporter on the classpath of the JVM that PyFlink's gateway is about to start.

    A local MiniCluster loads reporters without a plugin manager (the local executor gives its
    ``MiniClusterConfiguration`` none), so ``FLINK_PLUGINS_DIR`` is not read, and ``pipeline.jars`` reach only
    the job's class loader: the gateway's classpath is the place. Its launcher (``pyflink_gateway_server.py``)
    builds that classpath from the distribution's ``lib/`` and ``HADOOP_CLASSPATH``, the one variable it
    appends; the jar is added to it, whatever else it holds kept.
    """
    jar = _reporter_jar()
    if jar is None:
        raise ConfigError(
            "flink.metrics_port",
            port,
            "the apache-flink package has no plugins/metrics-prometheus jar: reinstall it (`make env`), "
            "or set STREAMTUNE__FLINK__METRICS_PORT=0",
        )
    entries = [e for e in os.environ.get("HADOOP_CLASSPATH", "").split(os.pathsep) if e]
    if str(jar) not in entries:
        os.environ["HADOOP_CLASSPATH"] = os.pathsep.join([*entries, str(jar)])


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
