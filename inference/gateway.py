"""`streamtune http`: an OpenAI-compatible HTTP gateway in front of ``queries`` → ``serve`` → ``answers``.

The promise: a chat completion is one ``Query`` produced to ``queries`` and answered by whichever ``serve``
process owns its partition, so every guarantee of the Kafka path holds (a killed ``serve`` loses no query,
adapters are checked at serve's trust boundary), and gateways and servers scale independently. Each gateway
process holds one idempotent producer and ONE consumer of ``answers``: it is assigned every partition at
its end offsets at start-up (no consumer group, nothing committed), so it is positioned before any query
is sent and cannot miss an answer; a background thread hands each answer to the request awaiting its
``query_id`` and drops the rest (other gateways' answers, duplicates, answers that came too late).
No request waits longer than ``http.answer_timeout_s``: then it gets a 503 saying so.

Who may ask what: an ``Authorization: Bearer <key>`` whose sha256 is in ``http.api_keys`` may use the
tenants listed for it; the tenant is taken from the ``model`` field (``<tenant>`` or
``<tenant>/<version>``) and checked against the key, never trusted from the body alone. With no keys
configured every tenant is open, so the gateway then binds loopback only and refuses any other
``http.host`` at start-up.

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` gives OpenAI's server-sent chunks),
``GET /v1/models`` (tenants and adapter versions announced on ``adapter-updates``, only those the key may
use), ``POST /v1/retrieve`` (the tenant's top chunks, without generation), ``GET /healthz``; Prometheus
metrics on ``127.0.0.1:http.metrics_port``. Errors are OpenAI error objects with the status codes of
``ANSWER_ERRORS`` for serve's error answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import math
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamtune import logs
from streamtune.contracts import (
    MAX_ID_CHARS,
    MAX_QA_CHARS,
    TENANT_PATTERN,
    AdapterUpdate,
    Answer,
    AnswerError,
    FeedbackRecorded,
    FeedbackRecordedData,
    Query,
)
from streamtune.errors import ConfigError, KafkaUnavailableError, UnavailableError
from streamtune.kafka import consumer, producer
from streamtune.settings import HttpSettings, Settings
from streamtune.topics import ANSWERS, DOMAIN_EVENTS, QUERIES, topic_name

__all__ = [
    "ANSWER_ERRORS",
    "Access",
    "ApiError",
    "Gateway",
    "GatewayMetrics",
    "KeyRing",
    "ModelCatalog",
    "answer_error",
    "check_exposure",
    "completion",
    "completion_chunks",
    "create_app",
    "hash_key",
    "is_loopback",
    "main",
    "parse_model",
]

log = logging.getLogger(__name__)

# How often the background threads look at Kafka's and Weaviate's health (for /healthz and the log).
_PROBE_INTERVAL_S = 5.0
# A chat body carries the whole conversation although only its last user message is asked; this bounds what
# one request can make the gateway read (the question itself is bounded by inference.max_query_bytes).
_MAX_BODY_BYTES = 4 * 1024 * 1024
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
# serve reports no token counts (the Answer has none), so usage is honest zeros rather than a guess.
_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

ErrorType = Literal["invalid_request_error", "authentication_error", "permission_error", "server_error"]


# -- errors ---------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An OpenAI error object with its HTTP status; ``retry`` sets ``x-should-retry`` for OpenAI's clients."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: ErrorType = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param, self.retry = code, param, retry

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {} if self.retry is None else {"x-should-retry": "true" if self.retry else "false"}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


ANSWER_ERRORS: dict[str, tuple[int, ErrorType, str | None]] = {
    "unknown_adapter": (404, "invalid_request_error", "model"),
    "question_too_long": (400, "invalid_request_error", "messages"),
    "invalid_query": (400, "invalid_request_error", None),
    "retrieval_unavailable": (503, "server_error", None),
    "internal_error": (500, "server_error", None),
}
"""serve's error codes (docs/contract.md) → HTTP status, OpenAI error type and the request field at fault.
A code not listed is treated like ``internal_error``, as the contract asks."""


def answer_error(error: AnswerError) -> ApiError:
    status, kind, param = ANSWER_ERRORS.get(error.code, ANSWER_ERRORS["internal_error"])
    # A deterministic refusal is not worth a retry; Weaviate may be back by the next attempt.
    return ApiError(status, error.message, kind=kind, code=error.code, param=param, retry=status == 503)


# -- keys, tenants and exposure (pure) ------------------------------------------------------------------------
def hash_key(key: str) -> str:
    """The digest that ``http.api_keys`` stores for ``key`` (keys are never stored in clear)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(http: HttpSettings) -> None:
    """Without keys every tenant is open to any client, so only loopback may be bound; anything else fails."""
    if not http.api_keys and not is_loopback(http.host):
        raise ConfigError(
            "http.host",
            http.host,
            "with no http.api_keys the gateway serves every tenant to anyone who reaches it, so it binds loopback "
            'only: set http.host = "127.0.0.1", or add keys to http.api_keys (the digest of a key: '
            "`streamtune http hash-key KEY`)",
        )


@dataclasses.dataclass(frozen=True)
class Access:
    """The tenants one request may use; ``tenants`` None: every tenant."""

    tenants: frozenset[str] | None

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def only_tenant(self) -> str | None:
        return next(iter(self.tenants)) if self.tenants is not None and len(self.tenants) == 1 else None


class KeyRing:
    """``http.api_keys`` (sha256 hex → tenants or ``'*'``) turned into each bearer key's ``Access``."""

    def __init__(self, api_keys: Mapping[str, Sequence[str]]) -> None:
        self._keys: dict[str, Access] = {}
        for digest, tenants in api_keys.items():
            bad = [t for t in tenants if t != "*" and not re.fullmatch(TENANT_PATTERN, t)]
            if bad or not tenants:
                raise ConfigError(
                    f"http.api_keys[{digest[:8]}...]",
                    list(tenants),
                    "list the tenants the key may use (letters, digits, '_' and '-', at most 64 characters) "
                    "or '*' for every tenant",
                )
            self._keys[digest] = Access(None if "*" in tenants else frozenset(tenants))

    @property
    def open(self) -> bool:
        return not self._keys

    def access(self, authorization: str | None) -> Access:
        """The tenants of the key in an ``Authorization`` header; ApiError 401 for a missing or unknown key."""
        if self.open:
            return Access(None)
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "missing API key: send `Authorization: Bearer <key>`",
                kind="authentication_error",
                code="invalid_api_key",
            )
        # A lookup by digest: an attacker cannot steer the digest, so its timing tells nothing about a key.
        access = self._keys.get(hash_key(key.strip()))
        if access is None:
            raise ApiError(401, "invalid API key", kind="authentication_error", code="invalid_api_key")
        return access


def parse_model(model: str) -> tuple[str, str | None]:
    """``<tenant>`` → (tenant, None): the tenant's current adapter; ``<tenant>/<version>`` pins a version."""
    tenant, slash, version = model.partition("/")
    if not re.fullmatch(TENANT_PATTERN, tenant) or (
        slash and (not version or version != version.strip() or len(version) > 512)
    ):
        raise ApiError(
            404,
            f"the model {model!r} does not exist: use '<tenant>' or '<tenant>/<version>' (a tenant is letters, "
            "digits, '_' and '-', at most 64 characters; GET /v1/models lists yours)",
            code="model_not_found",
            param="model",
        )
    return tenant, version if slash else None


def _authorize(access: Access, tenant: str, param: str = "model") -> None:
    if not access.allows(tenant):
        raise ApiError(
            403,
            f"this API key may not use tenant {tenant!r}",
            kind="permission_error",
            code="model_not_permitted",
            param=param,
        )


# -- request bodies -------------------------------------------------------------------------------------------
class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI's clients send many (temperature, max_tokens, ...): serve decides
    # how answers are generated (greedy, inference.max_new_tokens).
    model_config = ConfigDict(frozen=True, extra="ignore")


class _ContentPart(_Body):
    type: str
    text: str | None = None


class _MessageIn(_Body):
    role: str
    content: str | list[_ContentPart] | None = None


class _StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str = Field(min_length=1, description="'<tenant>' (current adapter) or '<tenant>/<version>' (pinned).")
    messages: list[_MessageIn] = Field(min_length=1, description="The last user message is the question.")
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One answer per question.")
    top_k: int | None = Field(None, ge=1, le=100, description="streamtune extension: chunks to retrieve.")

    def question(self) -> str:
        for index in range(len(self.messages) - 1, -1, -1):
            message = self.messages[index]
            if message.role != "user":
                continue
            where = f"messages[{index}].content"
            if isinstance(message.content, list):
                if any(part.type != "text" for part in message.content):
                    raise ApiError(400, "only text content parts are supported", code="invalid_value", param=where)
                text = "\n".join(part.text or "" for part in message.content)
            else:
                text = message.content or ""
            if not text.strip():
                raise ApiError(400, "the last user message is empty", code="invalid_value", param=where)
            return text
        raise ApiError(400, "messages holds no user message (the last one is the question)", param="messages")


class FeedbackRequest(_Body):
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The completion's id (chatcmpl-...).")
    rating: Literal[1, -1] = Field(description="1: a good answer, -1: a bad one.")
    correction: str | None = Field(
        None, min_length=1, max_length=MAX_QA_CHARS, description="The answer it should have been (for -1)."
    )


class RetrieveRequest(_Body):
    query: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=100, description="Chunks to return (default retrieval.top_k).")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="0 = BM25 only, 1 = vector only.")
    tenant: str | None = Field(None, description="Needed only when the key may use several tenants.")


def _param(loc: Sequence[int | str]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


async def _parse(request: Request, model: type[_Body]) -> Any:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {_MAX_BODY_BYTES} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {first['msg']}", code="invalid_json") from exc
        where = _param(first["loc"])
        raise ApiError(
            400, f"{where or 'body'}: {first['msg']}", code="invalid_value" if where else "invalid_body", param=where
        ) from exc


# -- responses (pure) -----------------------------------------------------------------------------------------
def _served_model(answer: Answer) -> str:
    return f"{answer.tenant}/{answer.adapter_version}" if answer.adapter_version else answer.tenant


def _extras(answer: Answer) -> dict[str, Any]:
    return {
        "query_id": answer.query_id,
        "citations": [c.model_dump() for c in answer.citations],
        "adapter_version": answer.adapter_version,
        "base_model": answer.model,
        "timings_ms": answer.timings_ms,
    }


def completion(answer: Answer, created: int) -> dict[str, Any]:
    """A ``chat.completion`` of one answer; ``model`` names what answered (``<tenant>/<version>`` or the tenant)."""
    return {
        "id": answer.query_id,
        "object": "chat.completion",
        "created": created,
        "model": _served_model(answer),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.answer},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": dict(_USAGE),
        **_extras(answer),
    }


def completion_chunks(answer: Answer, created: int, *, include_usage: bool = False) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of one whole answer: the role, the content, then the finish with the
    citations (serve answers whole answers, so there is no token stream to relay)."""
    usage: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "id": answer.query_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": _served_model(answer),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **usage,
            **extra,
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    if answer.answer:
        chunks.append(chunk({"content": answer.answer}))
    chunks.append(chunk({}, "stop", **_extras(answer)))
    if include_usage:
        chunks.append({**chunk({}), "choices": [], "usage": dict(_USAGE)})
    return chunks


async def _events(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for item in chunks:
        yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"


# -- metrics --------------------------------------------------------------------------------------------------
class GatewayMetrics:
    """The gateway's Prometheus series, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "streamtune_http_requests", "HTTP requests answered, by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "streamtune_http_request_seconds",
            "Time to answer an HTTP request (to its first byte for a stream), by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("streamtune_http_in_flight", "HTTP requests being answered now.", registry=r)
        self.timeouts = Counter(
            "streamtune_http_answer_timeouts", "Queries with no answer within http.answer_timeout_s.", registry=r
        )
        self.answers = Counter(
            "streamtune_http_answers",
            "Answers handed to requests, by code (ok or serve's error).",
            ["code"],
            registry=r,
        )
        self.feedback = Counter(
            "streamtune_http_feedback",
            "Ratings received on POST /v1/feedback, by outcome (published, unknown, duplicate, forbidden).",
            ["outcome"],
            registry=r,
        )


# -- feedback on completions ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Completion:
    tenant: str
    question: str
    answer: str
    rated: bool = False


class CompletionMemory:
    """The last ``http.feedback_memory`` completions this gateway returned, by id, so that a rating can be
    published with the question and the answer it rates (``feedback.recorded`` carries both). Bounded: the
    oldest are forgotten first; a completion forgotten, or returned by another gateway replica, cannot be
    rated here (404 says so), and its rating can still be published as an event by whoever holds it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: dict[str, _Completion] = {}  # insertion order: the oldest first
        self._lock = threading.Lock()

    def remember(self, query_id: str, tenant: str, question: str, answer: str) -> None:
        with self._lock:
            self._items[query_id] = _Completion(tenant, question, answer)
            while len(self._items) > self.capacity:
                del self._items[next(iter(self._items))]

    def get(self, query_id: str) -> _Completion | None:
        with self._lock:
            return self._items.get(query_id)

    def claim(self, query_id: str) -> bool:
        """Mark it rated; False when it already was (one rating per completion)."""
        with self._lock:
            item = self._items.get(query_id)
            if item is None or item.rated:
                return False
            item.rated = True
            return True

    def release(self, query_id: str) -> None:
        """Its rating could not be published: it may be rated again."""
        with self._lock:
            if query_id in self._items:
                self._items[query_id].rated = False


# -- Kafka: queries out, answers in ---------------------------------------------------------------------------
def _settle(future: asyncio.Future[Answer], outcome: Answer | BaseException) -> None:
    if future.done():  # timed out, or a duplicate answer
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _settle_any(future: asyncio.Future[Any], outcome: Any) -> None:
    if not future.done():
        future.set_result(outcome)


def _kafka_status(exc: Exception) -> str:
    return str(exc) if isinstance(exc, KafkaUnavailableError) else f"unreachable: {exc}"


class AnswerRouter:
    """One idempotent producer of queries and one consumer of ``answers`` for the whole process.

    The consumer is assigned every partition at its end offset once (explicit offsets, not ``OFFSET_END``,
    which would resolve lazily and could let an answer slip past), so any answer produced afterwards is seen.
    Its thread resolves the future awaiting each ``query_id`` and serves the producer's delivery reports.
    """

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.queries = topic_name(QUERIES, settings.topics)
        self.topic = topic_name(ANSWERS, settings.topics)
        timeout_ms = max(int(settings.http.answer_timeout_s * 1000), 1000)
        # A query still undelivered when its request gives up would be answered for nobody: it expires then.
        self._producer = producer(settings.kafka, idempotent=True, **{"linger.ms": 1, "message.timeout.ms": timeout_ms})
        self._consumer = consumer(settings.kafka, committed_only=False, from_beginning=False)
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Answer]]] = {}
        self._lock = threading.Lock()
        self._assigned: dict[int, int] = {}
        self.ready = threading.Event()
        self.status = "connecting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def ask(self, query: Query) -> Answer:
        """Produce ``query`` and await its answer; ApiError 503 when Kafka or serve does not answer in time."""
        timeout_s = self.settings.http.answer_timeout_s
        if not self.ready.is_set():
            raise ApiError(
                503,
                f"not reading {self.topic} yet (Kafka at {self.settings.kafka.bootstrap_servers}: {self.status})",
                kind="server_error",
                code="kafka_unavailable",
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        with self._lock:
            self._waiting[query.query_id] = (loop, future)
        try:
            self._produce(query, loop, future)
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self.metrics.timeouts.inc()
            # The client is told not to retry: a retry is a new query for a serve that is down or saturated.
            raise ApiError(
                503,
                f"no answer within {timeout_s:g}s; is `streamtune serve` running?",
                kind="server_error",
                code="answer_timeout",
                retry=False,
            ) from None
        finally:
            with self._lock:
                self._waiting.pop(query.query_id, None)

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce one record with this process's producer and wait for its delivery (ApiError 503 if Kafka
        does not take it within ``http.answer_timeout_s``)."""
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[Any] = loop.create_future()

        def report(error: Any, message: Any) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_any, delivered, error)

        try:
            self._producer.produce(topic, key=key, value=value, on_delivery=report)
        except BufferError as exc:
            raise ApiError(
                503, "too many records in flight; try again shortly", kind="server_error", code="overloaded"
            ) from exc
        try:
            error = await asyncio.wait_for(delivered, self.settings.http.answer_timeout_s)
        except TimeoutError:
            error = "no delivery report in time"
        if error is not None:
            raise ApiError(
                503, f"could not publish to {topic}: {error}", kind="server_error", code="kafka_unavailable", retry=True
            )

    def _produce(self, query: Query, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Answer]) -> None:
        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failure = ApiError(
                    503,
                    f"could not deliver the query to {self.queries}: {error}",
                    kind="server_error",
                    code="kafka_unavailable",
                )
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_settle, future, failure)

        try:
            self._producer.produce(
                self.queries, key=query.query_id.encode(), value=QUERIES.encode(query), on_delivery=delivered
            )
        except BufferError as exc:
            raise ApiError(
                503, "too many queries in flight; try again shortly", kind="server_error", code="overloaded"
            ) from exc

    # -- the thread
    def _run(self) -> None:
        backoff = self.settings.kafka.backoff()
        attempt, reported, probed = 0, float("-inf"), time.monotonic()
        while not self._stop.is_set():
            if not self.ready.is_set():
                try:
                    self._assign()
                except (KafkaException, KafkaUnavailableError) as exc:
                    self.status = _kafka_status(exc)
                    attempt += 1
                    if time.monotonic() - reported >= self.settings.kafka.status_interval_s:
                        log.warning("http: cannot read %s yet (%s); retrying", self.topic, exc)
                        reported = time.monotonic()
                    self._stop.wait(backoff.delay(attempt))
                    continue
                attempt, probed = 0, time.monotonic()
            try:
                message = self._consumer.poll(0.2)
                self._producer.poll(0)
                if message is not None:
                    self._take(message)
                if time.monotonic() - probed >= _PROBE_INTERVAL_S:
                    probed = time.monotonic()
                    self._probe()
            except Exception:  # this thread answers every request of the process: it must not die
                log.exception("http: reading %s failed; going on", self.topic)
                self._stop.wait(1.0)

    def _partitions(self, timeout: float | None = None) -> list[int]:
        timeout = self.settings.kafka.request_timeout_s if timeout is None else timeout
        metadata = self._consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise KafkaUnavailableError(
                f"topic {self.topic} does not exist on {self.settings.kafka.bootstrap_servers}; "
                "create it with `streamtune topics create`"
            )
        return sorted(metadata.partitions)

    def _assign(self) -> None:
        timeout = self.settings.kafka.request_timeout_s
        for partition in self._partitions():
            high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=timeout)[1]
            self._assigned[partition] = int(high)
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in self._assigned.items()])
        self.status = "ok"
        self.ready.set()
        log.info("http: reading %s (%d partitions) from their ends", self.topic, len(self._assigned))

    def _probe(self) -> None:
        """Kafka's health for /healthz; partitions added to ``answers`` since start-up are read too."""
        try:  # a short look: answers are not read while it waits
            partitions = self._partitions(min(self.settings.kafka.request_timeout_s, _PROBE_INTERVAL_S))
        except (KafkaException, KafkaUnavailableError) as exc:
            if self.status == "ok":
                log.warning("http: Kafka unreachable (%s); answers wait until it is back", exc)
            self.status = _kafka_status(exc)
            return
        if self.status != "ok":
            log.warning("http: Kafka reachable again")
        self.status = "ok"
        new = [p for p in partitions if p not in self._assigned]
        if new:
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in self._assigned])
            keep = {tp.partition: tp.offset if tp.offset >= 0 else self._assigned[tp.partition] for tp in positions}
            self._assigned = {**keep, **dict.fromkeys(new, OFFSET_BEGINNING)}
            self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in self._assigned.items()])
            log.info("http: %s grew to %d partitions; reading the new ones too", self.topic, len(self._assigned))

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.debug("http: %s: %s", self.topic, error)
            return
        query_id = (message.key() or b"").decode("utf-8", "replace")
        with self._lock:
            waiting = self._waiting.get(query_id)
        if waiting is None:  # another gateway's, a duplicate, or one whose request gave up
            return
        try:
            answer = ANSWERS.decode(message.value())
        except Exception as exc:  # a foreign, invalid answer is not ours to crash on
            log.warning(
                "http: %s[%s]@%s: ignored an invalid answer: %s",
                self.topic,
                message.partition(),
                message.offset(),
                exc,
                extra={"query_id": query_id, "source": logs.source(self.topic, message.partition(), message.offset())},
            )
            return
        loop, future = waiting
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, answer)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._producer.flush(1)
        with contextlib.suppress(RuntimeError):
            self._consumer.close()


# -- adapter-updates: the models ------------------------------------------------------------------------------
class ModelCatalog:
    """Tenants and adapter versions announced on ``adapter-updates`` (read from the beginning and followed).

    Like serve, it ignores announcements for another base model and takes the last one of a tenant as its
    current version. It lists what was announced; serve alone verifies adapters (the gateway need not see the
    adapter store), so a pinned version serve refused gets ``unknown_adapter`` (404).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._versions: dict[str, dict[str, AdapterUpdate]] = {}
        self._current: dict[str, str] = {}
        self.loaded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-adapter-updates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self, updates: Sequence[AdapterUpdate]) -> None:
        with self._lock:
            for update in updates:
                if update.base_model != self.settings.models.base_model:
                    continue
                self._versions.setdefault(update.tenant, {})[update.version] = update
                self._current[update.tenant] = update.version

    def entries(self, access: Access) -> list[dict[str, Any]]:
        """``/v1/models``: each tenant the key may use (announced ones for an all-tenants key), then its versions."""
        with self._lock:
            tenants = sorted(self._versions) if access.tenants is None else sorted(access.tenants)
            out = []
            for tenant in tenants:
                out.append(self._tenant_entry(tenant))
                out += [self._version_entry(u) for u in self._versions.get(tenant, {}).values()]
            return out

    def entry(self, model: str, access: Access) -> dict[str, Any]:
        tenant, version = parse_model(model)
        _authorize(access, tenant)
        with self._lock:
            if version is None:
                return self._tenant_entry(tenant)
            update = self._versions.get(tenant, {}).get(version)
            if update is None:
                raise ApiError(
                    404, f"tenant {tenant} has no announced version {version!r}", code="model_not_found", param="model"
                )
            return self._version_entry(update)

    def _tenant_entry(self, tenant: str) -> dict[str, Any]:
        current = self._current.get(tenant)
        update = self._versions[tenant][current] if current else None
        return {
            "id": tenant,
            "object": "model",
            "created": int(update.manifest.created_at.timestamp()) if update else 0,
            "owned_by": "streamtune",
            "parent": None,
            "base_model": self.settings.models.base_model,
            "adapter_version": current,
        }

    @staticmethod
    def _version_entry(update: AdapterUpdate) -> dict[str, Any]:
        parent = update.manifest.parent
        return {
            "id": f"{update.tenant}/{update.version}",
            "object": "model",
            "created": int(update.manifest.created_at.timestamp()),
            "owned_by": "streamtune",
            "parent": f"{update.tenant}/{parent.version}" if parent else None,
            "base_model": update.base_model,
            "adapter_version": update.version,
        }

    def _run(self) -> None:
        from inference.adapters import UpdateReader

        backoff = self.settings.kafka.backoff()
        attempt = 0
        reader: UpdateReader | None = None
        while not self._stop.is_set():
            try:
                if reader is None:
                    reader = UpdateReader(self.settings)
                    attempt = 0
                self.take(reader.poll(1.0))
                self.loaded.set()
            except (KafkaException, KeyError) as exc:
                attempt += 1
                if attempt == 1:
                    log.warning("http: cannot read adapter-updates yet (%s); retrying", exc)
                self._stop.wait(backoff.delay(attempt))
        if reader is not None:
            reader.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


# -- retrieval ------------------------------------------------------------------------------------------------
class _Retrieval:
    """The embedding model, loaded once, and a Weaviate connection made (and watched) in the background, so that
    chat completions, which do not need it, never wait for Weaviate."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = "connecting"
        self._retriever: Any = None
        self._embedder: Any = None
        # Encoding is CPU-bound and already uses embedding.torch_threads; concurrent encodes would only fight.
        self._encode_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-weaviate", daemon=True)

    def start(self) -> None:
        from streamtune.models import load_embedder, prepare_torch

        prepare_torch(self.settings.embedding.torch_threads, self.settings.memory)
        self._embedder = load_embedder(self.settings)
        self._thread.start()

    def search(self, tenant: str, text: str, k: int | None, alpha: float | None) -> list[dict[str, Any]]:
        retriever = self._retriever
        if retriever is None:
            raise ApiError(
                503, f"Weaviate is not reachable ({self.status})", kind="server_error", code="retrieval_unavailable"
            )
        try:
            with self._encode_lock:
                vector = retriever.embed([text])[0]
            hits = retriever.search_with(tenant, text, vector, k, alpha)
        except UnavailableError as exc:
            raise ApiError(503, str(exc), kind="server_error", code="retrieval_unavailable") from exc
        return [dataclasses.asdict(hit) for hit in hits]

    def _run(self) -> None:
        from retrieval import RetrievalError, Retriever, connect

        while True:
            if self._retriever is None:
                try:
                    client = connect(self.settings.weaviate)
                    self._retriever = Retriever(self.settings, embedder=self._embedder, client=client)
                    self.status = "ok"
                except RetrievalError as exc:
                    self.status = f"unreachable: {exc}"
            else:
                try:
                    ready = bool(self._retriever.client.is_ready())
                except Exception as exc:  # the client raises several unrelated types for "cannot connect"
                    ready, self.status = False, f"unreachable: {type(exc).__name__}: {exc}"
                if ready:
                    self.status = "ok"
                elif self.status == "ok":
                    self.status = "unreachable: not ready"
            if self._stop.wait(_PROBE_INTERVAL_S):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._retriever is not None:
            with contextlib.suppress(Exception):
                self._retriever.client.close()


# -- the gateway ----------------------------------------------------------------------------------------------
class Gateway:
    """Everything long-lived a gateway process holds: the Kafka clients, the model catalog, the embedder,
    the Weaviate connection and the metrics endpoint."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.answers = AnswerRouter(settings, self.metrics)
        self.completions = CompletionMemory(settings.http.feedback_memory)
        self.catalog = ModelCatalog(settings)
        self.retrieval = _Retrieval(settings)
        self._metrics_server: Any = None
        self._closed = False

    def start(self) -> None:
        """Load the embedder, start the background readers and wait (bounded) until Kafka is read."""
        port = self.settings.http.metrics_port
        if port:
            try:
                self._metrics_server, _ = start_http_server(
                    port, addr=self.settings.http.metrics_host, registry=self.metrics.registry
                )
            except OSError as exc:
                raise ConfigError(
                    "http.metrics_port", port, f"cannot listen there ({exc}); choose another, or 0"
                ) from exc
        self.answers.start()
        self.catalog.start()
        self.retrieval.start()  # the slow part: the embedding model loads while Kafka is being reached
        wait_s = self.settings.kafka.request_timeout_s
        if not self.answers.ready.wait(wait_s):
            log.warning("http: Kafka not reachable yet (%s); /healthz says 503 until it is", self.answers.status)
        self.catalog.loaded.wait(wait_s)

    def health(self) -> tuple[bool, dict[str, str]]:
        ok = self.answers.ready.is_set() and self.answers.status == "ok"
        return ok, {
            "status": "ok" if ok else "unavailable",
            "kafka": self.answers.status,
            "weaviate": self.retrieval.status,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.answers.close()
        self.catalog.close()
        self.retrieval.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("http: stopped")


def _new_query_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def create_app(
    settings: Settings, *, gateway: Gateway | None = None, on_ready: Callable[[], None] | None = None
) -> FastAPI:
    """The gateway's FastAPI app. Without ``gateway`` it builds one, started and closed with the app's lifespan."""
    check_exposure(settings.http)
    keys = KeyRing(settings.http.api_keys)
    owned = gateway is None
    gw = gateway if gateway is not None else Gateway(settings)
    metrics = gw.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await asyncio.to_thread(gw.start)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            if owned:
                await asyncio.to_thread(gw.close)

    # No /docs or /openapi.json: the API is OpenAI's, documented there; one surface less on an exposed port.
    app = FastAPI(title="streamtune", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Any]) -> Response:
        metrics.in_flight.inc()
        begin, status = time.perf_counter(), 500
        try:
            response: Response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - begin)
            metrics.in_flight.dec()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        access = keys.access(request.headers.get("authorization"))
        body: ChatCompletionRequest = await _parse(request, ChatCompletionRequest)
        tenant, version = parse_model(body.model)
        _authorize(access, tenant)
        query = Query(
            query_id=_new_query_id(), tenant=tenant, question=body.question(), top_k=body.top_k, adapter=version
        )
        size = len(QUERIES.encode(query))
        if size > settings.inference.max_query_bytes:
            raise ApiError(
                400,
                f"the question makes a query of {size} bytes, over inference.max_query_bytes "
                f"({settings.inference.max_query_bytes})",
                code="invalid_query",
                param="messages",
            )
        answer = await gw.answers.ask(query)
        metrics.answers.labels(answer.error.code if answer.error else "ok").inc()
        if answer.error is not None:
            raise answer_error(answer.error)
        gw.completions.remember(query.query_id, tenant, query.question, answer.answer)
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            chunks = completion_chunks(answer, created, include_usage=include_usage)
            return StreamingResponse(
                _events(chunks),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return JSONResponse(completion(answer, created))

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        """A rating of a completion this gateway returned, published as ``feedback.recorded`` with its question
        and answer (the ingest job and the live-quality join take it from there)."""
        access = keys.access(request.headers.get("authorization"))
        body: FeedbackRequest = await _parse(request, FeedbackRequest)
        served = gw.completions.get(body.id)
        if served is None:
            metrics.feedback.labels("unknown").inc()
            raise ApiError(
                404,
                f"no completion {body.id!r} among the last {settings.http.feedback_memory} this gateway returned "
                "(http.feedback_memory); rate it where it was answered, or publish feedback.recorded yourself",
                code="completion_not_found",
                param="id",
            )
        if not access.allows(served.tenant):
            metrics.feedback.labels("forbidden").inc()
            _authorize(access, served.tenant, "id")
        try:
            event = FeedbackRecorded(
                event_id=f"feedback-{body.id}",  # one rating per completion: a retry is the same event
                type="feedback.recorded",
                tenant=served.tenant,
                occurred_at=datetime.now(UTC),
                source="http",
                data=FeedbackRecordedData(
                    query_id=body.id,
                    rating=body.rating,
                    question=served.question,
                    answer=served.answer or "(empty answer)",
                    correction=body.correction,
                ),
            )
        except ValidationError as exc:
            raise ApiError(400, f"this completion cannot be rated: {exc.errors()[0]['msg']}", param="id") from exc
        if not gw.completions.claim(body.id):
            metrics.feedback.labels("duplicate").inc()
            raise ApiError(409, f"completion {body.id!r} is rated already", code="already_rated", param="id")
        try:
            await gw.answers.publish(
                topic_name(DOMAIN_EVENTS, settings.topics), event.key.encode(), event.model_dump_json().encode()
            )
        except ApiError:
            gw.completions.release(body.id)
            raise
        metrics.feedback.labels("published").inc()
        return {"object": "feedback", "id": body.id, "rating": body.rating, "event_id": event.event_id}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        access = keys.access(request.headers.get("authorization"))
        return {"object": "list", "data": gw.catalog.entries(access)}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        access = keys.access(request.headers.get("authorization"))
        return gw.catalog.entry(model, access)

    @app.post("/v1/retrieve")
    async def retrieve(request: Request) -> dict[str, Any]:
        access = keys.access(request.headers.get("authorization"))
        body: RetrieveRequest = await _parse(request, RetrieveRequest)
        tenant = body.tenant or access.only_tenant()
        if tenant is None:
            raise ApiError(400, "name the tenant: this key may use several", code="missing_tenant", param="tenant")
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise ApiError(400, f"{tenant!r} is not a tenant name", code="invalid_value", param="tenant")
        _authorize(access, tenant, "tenant")
        if len(body.query.encode()) > settings.inference.max_query_bytes:
            raise ApiError(
                400,
                f"the query is over inference.max_query_bytes ({settings.inference.max_query_bytes})",
                code="invalid_value",
                param="query",
            )
        hits = await asyncio.to_thread(gw.retrieval.search, tenant, body.query, body.k, body.alpha)
        return {"object": "list", "tenant": tenant, "hits": hits}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok, report = gw.health()
        return JSONResponse(report, status_code=200 if ok else 503)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code).response()

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return ApiError(400, str(first["msg"]), code="invalid_value", param=_param(first["loc"][1:])).response()

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("http: %s %s failed", request.method, request.url.path, exc_info=exc)
        return ApiError(
            500, f"internal error: {type(exc).__name__}", kind="server_error", code="internal_error"
        ).response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
    return app


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before start-up: the ready line is true the moment it is logged."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError("http.port", port, f"cannot listen on {host}:{port} ({exc}); choose another port") from exc


def main(settings: Settings) -> int:
    """Serve the gateway on ``http.host``:``http.port`` until SIGTERM / Ctrl-C."""
    import uvicorn

    http = settings.http
    check_exposure(http)
    if not http.api_keys:
        log.warning(
            "http: no http.api_keys configured: every tenant is open to any client of %s:%d, so only loopback is bound",
            http.host,
            http.port,
        )
    listener = _listen(http.host, http.port)
    gateway = Gateway(settings)
    address = f"http://{'[' + http.host + ']' if ':' in http.host else http.host}:{http.port}"

    def ready() -> None:
        log.info("http: listening on %s (OpenAI base URL %s/v1)", address, address)

    # uvicorn re-raises a captured SIGTERM once it has shut down gracefully (uvicorn/server.py capture_signals);
    # with the default handler that would kill the process before the gateway closes its clients.
    app = create_app(settings, gateway=gateway, on_ready=ready)  # a bad http.api_keys fails before anything starts
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        gateway.start()
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=math.ceil(http.answer_timeout_s),
        )
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        gateway.close()
        listener.close()
        signal.signal(signal.SIGTERM, previous)
    return 0
