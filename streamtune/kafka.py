"""Kafka clients made from the settings (the one place a librdkafka configuration is built; their librdkafka
messages go to the ``librdkafka`` logger), topic creation and deletion, committed end offsets, and exact range
reads."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamtune import logs
from streamtune.errors import KafkaUnavailableError, RetryExhausted
from streamtune.retry import Backoff, retrying
from streamtune.settings import KafkaSettings, TopicSettings
from streamtune.topics import ALL_TOPICS, TopicSpec, topic_name

log = logging.getLogger(__name__)

__all__ = [
    "TopicResult",
    "admin_client",
    "client_config",
    "committed_end_offsets",
    "consumer",
    "create_topics",
    "delete_topics",
    "java_client_config",
    "producer",
    "read_range",
]


T = TypeVar("T")

KAFKA_FIX = "Start Kafka (`streamtune stack up`) or fix the [kafka] settings."


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaUnavailableError)


def while_unreachable(
    settings: KafkaSettings,
    who: str,
    operation: Callable[[], T],
    *,
    log: logging.Logger,
    transient: Callable[[BaseException], bool] = _unavailable,
    stop: threading.Event | None = None,
    on_wait: Callable[[bool], None] | None = None,
    fix: str = KAFKA_FIX,
) -> T:
    """``operation()``, retried for as long as Kafka is unreachable: how every service waits for the broker, at
    start-up as later. The ``[kafka]`` backoff without giving up, one line per ``kafka.status_interval_s``
    naming ``who`` and the broker, ``on_wait`` told when the wait begins and ends; a set ``stop`` (SIGTERM)
    cuts a wait short (``operation`` checks it)."""

    def sleep(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        else:
            stop.wait(seconds)

    return retrying(
        operation,
        transient=transient,
        backoff=settings.backoff(),
        what=f"{who}: Kafka at {settings.bootstrap_servers}",
        fix=fix,
        log=log,
        sleep=sleep,
        on_wait=on_wait,
    )


def client_config(settings: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration for any Python client: bootstrap servers, security, user properties, ``extra``."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        **_librdkafka_security(settings),
        **settings.client_config,
        **extra,
    }


def java_client_config(settings: KafkaSettings, **extra: Any) -> dict[str, str]:
    """The same connection as Java Kafka client properties, for the Flink connector.

    The mapping (librdkafka → Java): ``security.protocol`` → same; ``sasl.mechanism`` → same;
    ``sasl.username`` / ``sasl.password`` → ``sasl.jaas.config`` (PlainLoginModule or ScramLoginModule);
    ``ssl.ca.location`` → ``ssl.truststore.type=PEM`` + ``ssl.truststore.location``; ``ssl.certificate.location``
    + ``ssl.key.location`` → ``ssl.keystore.type=PEM`` with the PEM text in ``ssl.keystore.certificate.chain`` /
    ``ssl.keystore.key`` (Java reads a PEM keystore from one file or from values); ``ssl.key.password`` → same;
    ``ssl.endpoint.identification.algorithm`` → ``https`` or empty.
    """
    props: dict[str, str] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL_"):
        module = "plain.PlainLoginModule" if settings.sasl_mechanism == "PLAIN" else "scram.ScramLoginModule"
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        props["sasl.mechanism"] = str(settings.sasl_mechanism)
        props["sasl.jaas.config"] = (
            f"org.apache.kafka.common.security.{module} required "
            f'username="{_jaas_quote(settings.sasl_username or "")}" password="{_jaas_quote(password)}";'
        )
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        if settings.ssl_ca_location is not None:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(settings.ssl_ca_location)
        if settings.ssl_certificate_location is not None and settings.ssl_key_location is not None:
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.certificate.chain"] = settings.ssl_certificate_location.read_text()
            props["ssl.keystore.key"] = settings.ssl_key_location.read_text()
        if settings.ssl_key_password is not None:
            props["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
        props["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_verify_hostname else ""
    return {**props, **settings.flink_client_config, **{k: str(v) for k, v in extra.items()}}


def _librdkafka_security(settings: KafkaSettings) -> dict[str, str]:
    props: dict[str, str] = {"security.protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL_"):
        props["sasl.mechanism"] = str(settings.sasl_mechanism)
        props["sasl.username"] = settings.sasl_username or ""
        props["sasl.password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        if settings.ssl_ca_location is not None:
            props["ssl.ca.location"] = str(settings.ssl_ca_location)
        if settings.ssl_certificate_location is not None and settings.ssl_key_location is not None:
            props["ssl.certificate.location"] = str(settings.ssl_certificate_location)
            props["ssl.key.location"] = str(settings.ssl_key_location)
        if settings.ssl_key_password is not None:
            props["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
        props["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_verify_hostname else "none"
    return props


def _jaas_quote(value: str) -> str:
    """A value inside double quotes of a JAAS configuration (Kafka parses backslash escapes there)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _logged(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with librdkafka's own messages sent to our ``librdkafka`` logger (JSON in services) instead of
    straight to stderr. confluent-kafka queues them and serves them on ``poll()`` / ``flush()`` (a consumer's
    ``consume()``), so a client nobody polls logs nothing."""
    return {"logger": logs.kafka_logger(), **config}


def admin_client(settings: KafkaSettings) -> AdminClient:
    """An admin client; its librdkafka messages are served by ``poll()`` (``_served`` does it for ours)."""
    return AdminClient(_logged(client_config(settings)))


@contextlib.contextmanager
def _served(admin: AdminClient) -> Iterator[AdminClient]:
    """``admin``, whose queued librdkafka messages (a refused connection, say) are logged when the block ends:
    an admin client's results come through futures, so nothing else would ever poll it."""
    try:
        yield admin
    finally:
        admin.poll(0)


def producer(settings: KafkaSettings, *, idempotent: bool = False, **extra: Any) -> Producer:
    """A producer; ``idempotent`` for records that must not be duplicated by the client's own retries."""
    if idempotent:
        extra = {"enable.idempotence": True, **extra}
    return Producer(_logged(client_config(settings, **extra)))


def consumer(
    settings: KafkaSettings,
    group_id: str | None = None,
    *,
    committed_only: bool = True,
    from_beginning: bool = True,
    **extra: Any,
) -> Consumer:
    """A consumer that commits only when told to (never automatically).

    ``group_id`` None gives a throwaway group (readers that ``assign`` partitions and never commit).
    ``committed_only`` reads with ``read_committed``: transactional producers' aborted records are skipped.
    """
    config = {
        "group.id": group_id or f"streamtune-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        **extra,
    }
    return Consumer(_logged(client_config(settings, **config)))


@dataclass(frozen=True)
class TopicResult:
    name: str
    created: bool
    partitions: int


def create_topics(
    kafka: KafkaSettings, topics: TopicSettings, specs: Iterable[TopicSpec] = ALL_TOPICS
) -> list[TopicResult]:
    """Create each declared topic with its settings; topics that already exist are left as they are."""
    with _served(admin_client(kafka)) as admin:
        wanted = {
            topic_name(spec, topics): NewTopic(
                topic_name(spec, topics),
                num_partitions=spec.partitions(topics),
                replication_factor=topics.replication_factor,
                config=dict(spec.config),
            )
            for spec in specs
        }
        results = []
        futures = admin.create_topics(list(wanted.values()), request_timeout=kafka.request_timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=kafka.request_timeout_s)
                results.append(TopicResult(name, True, wanted[name].num_partitions))
            except KafkaException as exc:
                error = exc.args[0]
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    results.append(TopicResult(name, False, _partition_count(admin, name, kafka)))
                    continue
                raise KafkaUnavailableError(
                    f"could not create topic {name} on {kafka.bootstrap_servers}: {exc}"
                ) from exc
            except TimeoutError as exc:
                raise KafkaUnavailableError(
                    f"Kafka at {kafka.bootstrap_servers} did not answer within {kafka.request_timeout_s}s; "
                    "is it running (`streamtune stack status`)?"
                ) from exc
        return sorted(results, key=lambda r: r.name)


def delete_topics(kafka: KafkaSettings, topics: TopicSettings, specs: Iterable[TopicSpec] = ALL_TOPICS) -> None:
    """Delete the declared topics under this prefix (tests, benchmarks); missing ones are ignored."""
    with _served(admin_client(kafka)) as admin:
        for future in admin.delete_topics([topic_name(spec, topics) for spec in specs]).values():
            try:
                future.result(timeout=kafka.request_timeout_s)
            except KafkaException as exc:
                error = exc.args[0]
                if not (isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                    raise KafkaUnavailableError(f"could not delete topics on {kafka.bootstrap_servers}: {exc}") from exc


def committed_end_offsets(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    """Per partition, the offset after the last committed record (the last stable offset)."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    with _served(admin_client(kafka)) as admin:

        def ends() -> dict[int, int]:
            metadata = admin.list_topics(topic=topic, timeout=kafka.request_timeout_s)
            partitions = sorted(metadata.topics[topic].partitions)
            futures = admin.list_offsets(
                {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=kafka.request_timeout_s,
            )
            return {tp.partition: int(f.result().offset) for tp, f in futures.items()}

        # a partition whose leader is not elected yet (right after its topic was created) or is moving
        patience = Backoff(initial_s=0.05, max_s=1.0, give_up_s=kafka.request_timeout_s)
        fix = "is the broker healthy (`streamtune stack status`)?"
        try:
            return retrying(ends, transient=_leadership, backoff=patience, what=topic, fix=fix, log=log)
        except (KafkaException, RetryExhausted) as exc:
            raise KafkaUnavailableError(f"could not read the end offsets of {topic}: {exc}") from exc


_LEADERSHIP = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})


def _leadership(exc: BaseException) -> bool:
    """Whether ``exc`` passes once a partition's leader is elected: retriable, or one of the leadership errors
    the client reports without its retriable flag."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _LEADERSHIP)


def read_range(
    kafka: KafkaSettings, topic: str, ranges: Mapping[int, tuple[int, int]], timeout_s: float = 30.0
) -> Iterator[Message]:
    """Every committed record in ``[start, end)`` of each partition, in partition-offset order.

    Reads with ``read_committed`` and without a group commit, so it never moves anyone's offsets.
    Transaction markers take offsets too, so a partition is done once its position reaches ``end``.
    """
    from confluent_kafka import TopicPartition

    wanted = {p: r for p, r in ranges.items() if r[1] > r[0]}
    if not wanted:
        return
    reader = consumer(kafka)
    try:
        try:  # a broker that is down is reported within kafka.request_timeout_s, not after timeout_s of no progress
            reader.list_topics(topic, timeout=kafka.request_timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailableError(f"cannot read {topic} from {kafka.bootstrap_servers}: {exc}") from exc
        reader.assign([TopicPartition(topic, p, start) for p, (start, _) in wanted.items()])
        deadline = time.monotonic() + timeout_s
        while wanted:
            message = reader.poll(0.5)
            if message is not None and message.error() is None:
                deadline = time.monotonic() + timeout_s
                _, end = wanted.get(message.partition() or 0, (0, 0))
                if (message.offset() or 0) < end:
                    yield message
            positions = reader.position([TopicPartition(topic, p) for p in wanted])
            for tp in positions:
                if tp.offset >= wanted[tp.partition][1]:
                    del wanted[tp.partition]
            if wanted and time.monotonic() > deadline:
                raise KafkaUnavailableError(f"{topic}: no progress for {timeout_s:.0f}s reading {wanted}")
    finally:
        reader.close()


def _partition_count(admin: AdminClient, name: str, kafka: KafkaSettings) -> int:
    metadata = admin.list_topics(topic=name, timeout=kafka.request_timeout_s)
    return len(metadata.topics[name].partitions)
