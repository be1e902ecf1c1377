"""`streamtune monitor`: a faust-streaming application that reads ``queries``, ``answers``,
``adapter-updates``, ``domain-events`` (documents for freshness, ratings for live quality),
``domain-events.dlq`` and ``training-examples`` (examples waiting for a refresh) and serves ``/metrics`` and a
status page per tenant, with the signals over their thresholds (``monitor/signals.py``); question drift is read
from `serve`'s own /metrics (``monitor.serve_metrics_urls``). It writes nothing, so a stall of its own can
never touch data:

- no faust tables (they would create and write changelog topics): the state is ``monitor.state`` in memory,
  rebuilt from the topics at every start;
- ``topic_allow_declare=False`` and ``topic_disable_leader=True``: no topic is created, not even faust's
  leader topic; the broker's ``auto.create.topics.enable`` is off in the local stack as well;
- a consumer group of its own per start (``monitor.group_id`` plus a random suffix): the offsets faust commits
  there are read by nobody, and a restart never resumes halfway (it re-reads from the beginning);
- nothing is sent: the monitor never calls a producer, and its HTTP views answer GET only;
- Weaviate is read (one object by id per waiting document, at most ``monitor.freshness_lookups_per_s``), never
  written; the loss curves are read from the adapter store, only files inside it.

Records that cannot be used are counted (``streamtune_monitor_skipped_total``) and logged with
``topic[partition]@offset``: the monitor cannot dead-letter them, that would be a write.
"""

from __future__ import annotations

import asyncio
import html
import logging
import ssl
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.metrics import MonitorMetrics
from monitor.page import index_page, loss_curve_file, status_page, stored_versions
from monitor.state import MonitorState, PendingDocument
from streamtune.contracts import DocumentDeleted, DocumentUpserted, FeedbackRecorded, decode_event
from streamtune.dlq import DeadLetter
from streamtune.errors import ConfigError, ContractError, KafkaUnavailableError
from streamtune.exposition import read_drift
from streamtune.kafka import admin_client, client_config, while_unreachable
from streamtune.settings import Settings
from streamtune.topics import (
    ADAPTER_UPDATES,
    ANSWERS,
    DOMAIN_EVENTS,
    DOMAIN_EVENTS_DLQ,
    QUERIES,
    TRAINING_EXAMPLES,
    TopicSpec,
    topic_name,
)

__all__ = ["READY", "Monitor", "broker_options", "main", "read_drift"]

log = logging.getLogger(__name__)

READY = "monitor: ready"
"""Logged once the consumer has its partitions and the web server listens (harness ``ServiceProcess``)."""
# aiohttp takes the charset apart from the content type (prometheus_client's text is UTF-8, aiohttp's default)
_METRICS_TYPE = CONTENT_TYPE_LATEST.split("; charset")[0]


def broker_options(settings: Settings) -> dict[str, Any]:
    """faust's ``broker`` and ``broker_credentials`` from the one librdkafka configuration
    (``streamtune.kafka.client_config``), so the monitor connects as every other client does."""
    config = client_config(settings.kafka)
    servers = [f"kafka://{server.strip()}" for server in str(config["bootstrap.servers"]).split(",")]
    protocol = str(config.get("security.protocol", "PLAINTEXT")).upper()
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
        if config.get("ssl.certificate.location"):
            context.load_cert_chain(
                config["ssl.certificate.location"], config.get("ssl.key.location"), config.get("ssl.key.password")
            )
        if config.get("ssl.endpoint.identification.algorithm") == "none":
            context.check_hostname = False
    credentials: Any = None
    if protocol.startswith("SASL_"):
        credentials = faust.SASLCredentials(
            username=config.get("sasl.username"),
            password=config.get("sasl.password"),
            mechanism=str(config.get("sasl.mechanism", "PLAIN")),
            ssl_context=context,
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    return {"broker": servers, "broker_credentials": credentials}


def _skipped(metrics: MonitorMetrics, topic: str, message: Any, exc: Exception) -> None:
    """A record the monitor cannot use: it may not dead-letter it (that would be a write), so it counts it and
    logs ``topic[partition]@offset``; a contract violation is expected data, anything else a bug of ours."""
    where = f"{topic}[{message.partition}]@{message.offset}"
    if isinstance(exc, ContractError):
        metrics.skipped.labels(topic, exc.error_class).inc()
        log.warning("%s: skipped, not decoded: %s", where, exc)
    else:
        metrics.skipped.labels(topic, type(exc).__name__).inc()
        log.exception("%s: skipped, the monitor failed on it", where)


class Monitor:
    """The app, its state and its views; ``run`` blocks until the process is stopped."""

    def __init__(self, settings: Settings, datadir: Path) -> None:
        self.settings = settings
        conf = settings.monitor
        self.group = f"{conf.group_id}-{uuid.uuid4().hex[:8]}"
        self.metrics = MonitorMetrics()
        self.state = MonitorState(conf, self.metrics)
        # An object store (s3://) is not read from here (this environment has no s3fs): the page shows the
        # versions `serve` copied to this machine, if any.
        remote = "://" in settings.adapter_store
        self.adapters_dir = (settings.cache_dir / "adapters-cache" if remote else settings.adapters_dir).resolve()
        self._weaviate: Any = None
        self._weaviate_failed_at = 0.0
        self.app = faust.App(
            self.group,
            **broker_options(settings),
            store="memory://",
            datadir=str(datadir),
            autodiscover=False,
            topic_allow_declare=False,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest" if conf.from_beginning else "latest",
            web_enabled=True,
            web_host=conf.host,
            web_bind=conf.host,
            web_port=conf.port,
            web_router_enabled=False,
            web_tables_enabled=False,
            web_stats_enabled=False,
            web_graph_enabled=False,
            web_metrics_enabled=False,
        )
        self._wire()

    # -- the app --------------------------------------------------------------------------------
    def _topic(self, spec: Any) -> Any:
        return self.app.topic(topic_name(spec, self.settings.topics), key_serializer="raw", value_serializer="raw")

    def _wire(self) -> None:
        app, state = self.app, self.state
        handlers: list[tuple[Any, Any]] = [
            (QUERIES, lambda event, at: state.on_query(QUERIES.decode(event.message.value), at)),
            (ANSWERS, lambda event, at: state.on_answer(ANSWERS.decode(event.message.value), at)),
            (ADAPTER_UPDATES, lambda e, at: state.on_adapter_update(ADAPTER_UPDATES.decode(e.message.value), at)),
            (DOMAIN_EVENTS_DLQ, self._on_dead_letter),
            (DOMAIN_EVENTS, self._on_domain_event),  # ratings always, documents for freshness
            (TRAINING_EXAMPLES, self._on_training_example),
        ]
        for spec, handle in handlers:
            app.agent(self._topic(spec), name=f"read-{spec.name}")(self._reader(spec, handle))
        if self.settings.monitor.freshness:
            app.timer(1.0)(self._look_up_freshness)
        if self.settings.monitor.serve_metrics_urls:
            app.timer(self.settings.monitor.serve_metrics_interval_s)(self._read_drift)
        # evaluated between page views too, so that a since-when not told by the records is this precise
        app.timer(self.settings.monitor.signals_interval_s)(self._evaluate_signals)
        app.task(self._announce_ready)
        self._pages()

    def _reader(self, spec: Any, handle: Any) -> Any:
        name = topic_name(spec, self.settings.topics)
        metrics = self.metrics

        async def read(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                at = message.timestamp
                metrics.records.labels(name).inc()
                metrics.last_record.labels(name).set(at)
                try:
                    handle(event, at)
                except Exception as exc:  # the one policy: a record that cannot be used is counted, logged, skipped
                    _skipped(metrics, name, message, exc)

        read.__name__ = read.__qualname__ = f"read_{spec.name.replace('-', '_').replace('.', '_')}"
        return read

    def _on_dead_letter(self, event: Any, at: float) -> None:
        message = event.message
        headers = dict(message.headers or [])
        letter = DeadLetter.from_record(message.key, message.value, headers, message.offset)
        self.state.on_dead_letter(letter, at)

    def _on_domain_event(self, event: Any, at: float) -> None:
        message = event.message
        value = message.value or b""
        freshness = self.settings.monitor.freshness
        if not freshness and b"feedback.recorded" not in value:
            return  # documents can be large: without freshness only ratings are decoded
        try:
            parsed = decode_event(value, max_bytes=self.settings.streams.max_event_bytes)
        except ContractError:
            return  # the ingest job dead-letters it; it is counted when its dead letter is read
        if isinstance(parsed, FeedbackRecorded):
            self.state.on_feedback(parsed)
        elif freshness and isinstance(parsed, DocumentUpserted):
            self.state.on_document(parsed, at, message.partition, message.offset)
        elif freshness and isinstance(parsed, DocumentDeleted):
            self.state.on_document_deleted(parsed.tenant, parsed.data.doc_id)

    def _on_training_example(self, event: Any, at: float) -> None:
        message = event.message
        example = TRAINING_EXAMPLES.decode(message.value)
        self.state.on_training_example(example, at, message.partition, message.offset)

    async def _evaluate_signals(self) -> None:
        self.state.alerts()

    # -- question drift, from serve ------------------------------------------------------------------
    async def _read_drift(self) -> None:
        conf = self.settings.monitor
        for url in conf.serve_metrics_urls:
            source = await asyncio.to_thread(read_drift, url, conf.serve_metrics_timeout_s)
            if source.error is not None and self.state.drift.get(url, source).error is None:
                log.warning("drift: %s unreachable (%s); shown as such on the status pages", url, source.error)
            self.state.on_drift(source)

    async def _announce_ready(self) -> None:
        while not self.app.consumer.assignment():
            await asyncio.sleep(0.2)
        conf = self.settings.monitor
        log.info("%s: http://%s:%d/ (consumer group %s)", READY, conf.host, conf.port, self.group)

    # -- freshness ------------------------------------------------------------------------------
    async def _look_up_freshness(self) -> None:
        due = self.state.due_documents(max(int(self.settings.monitor.freshness_lookups_per_s), 1))
        if not due:
            return
        found = await asyncio.to_thread(self._written_at, due)
        for pending, written_at in found:
            self.state.on_indexed(pending, written_at)

    def _written_at(self, due: list[PendingDocument]) -> list[tuple[PendingDocument, float]]:
        """For each document whose first chunk carries its event id: when Weaviate last wrote that chunk."""
        from retrieval.store import chunk_uuid

        if self._weaviate is None:
            if time.monotonic() - self._weaviate_failed_at < self.settings.weaviate.status_interval_s:
                return []
            from retrieval.client import connect

            try:
                self._weaviate = connect(self.settings.weaviate)
            except Exception as exc:
                self._weaviate_failed_at = time.monotonic()
                log.warning("freshness: Weaviate not reachable (%s); trying again later", exc)
                return []
        collection = self._weaviate.collections.get(self.settings.weaviate.collection)
        found = []
        for pending in due:
            try:
                obj = collection.with_tenant(pending.tenant).query.fetch_object_by_id(
                    chunk_uuid(pending.tenant, pending.doc_id, 0), return_properties=["event_id"]
                )
            except Exception as exc:  # unknown tenant or collection (nothing indexed yet), or an outage
                log.debug("freshness: %s/%s not readable yet: %s", pending.tenant, pending.doc_id, exc)
                continue
            if obj is not None and obj.properties.get("event_id") == pending.event_id:
                written = obj.metadata.last_update_time or obj.metadata.creation_time
                if written is not None:
                    found.append((pending, written.timestamp()))
        return found

    # -- web ------------------------------------------------------------------------------------
    def _pages(self) -> None:
        app, monitor = self.app, self

        @app.page("/metrics")
        async def metrics(self: View, request: Request) -> Response:
            monitor.state.refresh()
            return self.bytes(generate_latest(monitor.metrics.registry), content_type=_METRICS_TYPE)

        @app.page("/")
        async def root(self: View, request: Request) -> Response:
            return self.html(index_page(monitor.state))

        @app.page("/status/")
        async def index(self: View, request: Request) -> Response:
            return self.html(index_page(monitor.state))

        @app.page("/status/{tenant}")
        async def tenant(self: View, request: Request, tenant: str) -> Response:
            readable = monitor.adapters_dir.is_dir()
            stored = await asyncio.to_thread(stored_versions, monitor.adapters_dir, tenant) if readable else []
            page = status_page(monitor.state, tenant, with_curves=readable, stored=stored)
            if page is None:
                return self.html(f"no records of tenant {html.escape(tenant)} read yet", status=404)
            return self.html(page)

        @app.page("/status/{tenant}/loss/{version}.png")
        async def loss_curve(self: View, request: Request, tenant: str, version: str) -> Response:
            path = loss_curve_file(monitor.adapters_dir, tenant, version)
            if path is None:
                return self.notfound("no such loss curve")
            return self.bytes(path.read_bytes(), content_type="image/png")

    def run(self) -> int:
        # The CLI has configured logging; faust's worker would replace it (and draw a spinner on stdout).
        worker = faust.Worker(self.app, quiet=True, override_logging=False, redirect_stdouts=False)
        worker.spinner = None
        try:
            worker.execute_from_commandline()
        finally:
            if self._weaviate is not None:
                self._weaviate.close()
        return 0


def _check(settings: Settings) -> None:
    conf = settings.monitor
    if conf.port == settings.http.port or conf.port in (
        settings.inference.metrics_port,
        settings.training.metrics_port,
        settings.http.metrics_port,
    ):
        raise ConfigError("monitor.port", conf.port, "choose a port no other streamtune service uses")


def _check_topics(settings: Settings) -> None:
    """The topics must exist: the monitor creates none, and faust would wait for them without a word."""
    specs: list[TopicSpec[Any]] = [
        QUERIES, ANSWERS, ADAPTER_UPDATES, DOMAIN_EVENTS, DOMAIN_EVENTS_DLQ, TRAINING_EXAMPLES,
    ]  # fmt: skip
    try:
        existing = admin_client(settings.kafka).list_topics(timeout=settings.kafka.request_timeout_s).topics
    except KafkaException as exc:
        raise KafkaUnavailableError(f"Kafka at {settings.kafka.bootstrap_servers} did not answer: {exc}") from exc
    missing = [name for name in (topic_name(spec, settings.topics) for spec in specs) if name not in existing]
    if missing:
        raise ConfigError(
            "topics.prefix",
            settings.topics.prefix,
            f"{', '.join(missing)} not found on {settings.kafka.bootstrap_servers}; the monitor creates no topic: "
            "create them first (`streamtune topics create`) or set the deployment's prefix",
        )


def main(settings: Settings) -> int:
    """Run the monitor until stopped (SIGTERM / Ctrl-C)."""
    _check(settings)
    # A broker down at start-up is waited out as one that goes down later (faust reconnects by itself then)
    while_unreachable(settings.kafka, "monitor", lambda: _check_topics(settings), log=log)
    # The CLI gives our packages' loggers their level; this package is new to its list, so it follows theirs.
    logging.getLogger("monitor").setLevel(logging.getLogger("streamtune").getEffectiveLevel())
    with tempfile.TemporaryDirectory(prefix="streamtune-monitor-") as datadir:
        return Monitor(settings, Path(datadir)).run()
