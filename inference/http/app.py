"""The gateway process: its long-lived parts (``Gateway``), the FastAPI app and its routes, and ``main``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import start_http_server
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from inference.http.auth import KeyRing, authorize, check_exposure
from inference.http.catalog import ModelCatalog
from inference.http.errors import ApiError, answer_error
from inference.http.feedback import CompletionMemory
from inference.http.metrics import GatewayMetrics
from inference.http.protocol import (
    ChatCompletionRequest,
    FeedbackRequest,
    RetrieveRequest,
    chunk,
    completion,
    final_chunks,
    param_of,
    parse_body,
    parse_model,
    sse,
)
from inference.http.search import Retrieval
from inference.routing import QueryRouter, unsent
from streamtune.contracts import TENANT_PATTERN, Answer, AnswerDelta, FeedbackRecorded, FeedbackRecordedData, Query
from streamtune.errors import ConfigError
from streamtune.settings import Settings
from streamtune.topics import DOMAIN_EVENTS, QUERIES, topic_name

__all__ = ["Gateway", "create_app", "main"]

log = logging.getLogger(__name__)


class Gateway:
    """Everything long-lived a gateway process holds: the Kafka clients, the model catalog, the embedder,
    the Weaviate connection and the metrics endpoint."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.answers = QueryRouter(settings, name="http", message_timeout_s=settings.http.answer_timeout_s)
        self.completions = CompletionMemory(settings.http.feedback_memory)
        self.catalog = ModelCatalog(settings)
        self.retrieval = Retrieval(settings)
        self.open_completions = 0
        """Chat completions being answered now (a stream until its last chunk): ``http.max_in_flight`` bounds it."""
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

    async def ask(self, query: Query) -> AsyncGenerator[AnswerDelta | Answer, None]:
        """Send ``query`` and yield its pieces (a streamed query) and then its answer; ApiError 503 when Kafka
        is not read yet, the query cannot be delivered, or nothing comes within ``http.answer_timeout_s``."""
        timeout_s = self.settings.http.answer_timeout_s
        if not self.answers.ready.is_set():
            raise ApiError(
                503,
                f"not reading the answers yet (Kafka at {self.settings.kafka.bootstrap_servers}: "
                f"{self.answers.status})",
                kind="server_error",
                code="kafka_unavailable",
                retry=True,  # the gateway waits for the broker with backoff: try again then, never hang meanwhile
                headers={"Retry-After": str(math.ceil(self.settings.kafka.retry_max_s))},
            )
        waiter = _AsyncWaiter(asyncio.get_running_loop())
        try:
            self.answers.send(query, waiter)
        except BufferError as exc:
            raise ApiError(
                503, "too many queries in flight; try again shortly", kind="server_error", code="overloaded"
            ) from exc
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    event = await asyncio.wait_for(waiter.events.get(), max(deadline - time.monotonic(), 0.0))
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
                if isinstance(event, Exception):
                    raise ApiError(503, str(event), kind="server_error", code="kafka_unavailable") from event
                yield event
                if isinstance(event, Answer):
                    return
        finally:
            self.answers.forget(query.query_id)

    async def answer(self, query: Query) -> Answer:
        async for event in self.ask(query):
            if isinstance(event, Answer):
                return event
        raise AssertionError("ask ends with the answer")

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Produce one record with the router's producer and wait for its delivery (ApiError 503 otherwise)."""
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[Any] = loop.create_future()

        def report(error: Any, message: Any) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, delivered, error)

        try:
            self.answers.publish(topic, key, value, report)
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


class _Relay(StreamingResponse):
    """A streamed completion whose slot is released however the stream ends. When the client goes away,
    Starlette cancels the task iterating the stream and leaves the generator unclosed (its ``finally`` runs
    only when it is garbage-collected), so the response closes it itself, shielded from that cancellation."""

    def __init__(self, content: AsyncGenerator[bytes, None], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._content = content
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._content.aclose()


class _AsyncWaiter:
    """Hands the router thread's events to the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[AnswerDelta | Answer | Exception] = asyncio.Queue()

    def _put(self, event: AnswerDelta | Answer | Exception) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def delta(self, delta: AnswerDelta) -> None:
        self._put(delta)

    def answer(self, answer: Answer) -> None:
        self._put(answer)

    def failed(self, error: Exception) -> None:
        self._put(error)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if not future.done():
        future.set_result(outcome)


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
        body: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        tenant, version = parse_model(body.model)
        authorize(access, tenant)
        await _exists(tenant)
        limit = settings.http.max_in_flight
        if gw.open_completions >= limit:
            metrics.rejected.inc()
            raise ApiError(
                429,
                f"{limit} completions are being answered (http.max_in_flight); retry after a second",
                kind="rate_limit_error",
                code="too_many_requests",
                retry=True,
                headers={"Retry-After": "1"},
            )
        query = Query(
            query_id=_new_query_id(),
            tenant=tenant,
            question=body.question(),
            top_k=body.top_k,
            adapter=version,
            # serve does not start generating what nobody will wait for any more
            deadline=datetime.now(UTC) + timedelta(seconds=settings.http.answer_timeout_s),
            stream=body.stream,
            **body.controls(),  # max_tokens, stop, temperature, top_p, seed (checked by the request model)
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
        gw.open_completions += 1
        metrics.open_completions.set(gw.open_completions)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                gw.open_completions -= 1
                metrics.open_completions.set(gw.open_completions)

        events = gw.ask(query)
        try:
            first = await anext(events)  # an error answer still gets its HTTP status, before any chunk
        except BaseException:
            release()
            raise
        if isinstance(first, Answer):
            release()
            return _whole(first, body, query)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return _Relay(
            _stream(first, events, body.model, query, include_usage, release),
            release,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _whole(answer: Answer, body: ChatCompletionRequest, query: Query) -> Response:
        """The answer in one response (or, for a stream, all its chunks at once: no piece came before it)."""
        metrics.answers.labels(answer.error.code if answer.error else "ok").inc()
        if answer.error is not None:
            raise answer_error(answer.error)
        gw.completions.remember(query.query_id, query.tenant, query.question, answer.answer)
        created = int(time.time())
        if not body.stream:
            return JSONResponse(completion(answer, created))
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        content = [chunk(answer.query_id, body.model, created, {"role": "assistant", "content": ""})]
        if answer.answer:
            content.append(chunk(answer.query_id, body.model, created, {"content": answer.answer}))
        items = [*content, *final_chunks(answer, created, include_usage=include_usage)]
        return Response(b"".join([*map(sse, items), sse("[DONE]")]), media_type="text/event-stream")

    async def _stream(
        first: AnswerDelta,
        events: AsyncGenerator[AnswerDelta | Answer, None],
        model: str,
        query: Query,
        include_usage: bool,
        release: Callable[[], None],
    ) -> AsyncGenerator[bytes, None]:
        """Relay each piece as a chunk the moment it arrives, then the finish (citations, usage) and [DONE]; an
        error after the first chunk ends the stream with an error chunk. A client that goes away ends it too
        (Starlette stops iterating): the query is forgotten and its slot released."""
        created = int(time.time())
        sent = ""
        try:
            yield sse(chunk(query.query_id, model, created, {"role": "assistant", "content": ""}))
            event: AnswerDelta | Answer = first
            while True:
                if isinstance(event, AnswerDelta):
                    sent += event.text
                    yield sse(chunk(query.query_id, model, created, {"content": event.text}))
                else:
                    metrics.answers.labels(event.error.code if event.error else "ok").inc()
                    if event.error is not None:
                        yield sse(answer_error(event.error).body())
                    else:
                        if rest := unsent(event, sent):
                            yield sse(chunk(query.query_id, model, created, {"content": rest}))
                        gw.completions.remember(query.query_id, query.tenant, query.question, event.answer)
                        for item in final_chunks(event, created, include_usage=include_usage):
                            yield sse(item)
                    break
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
        except ApiError as exc:
            yield sse(exc.body())
        finally:
            release()  # before any await: a cancelled task is cancelled again at its next one
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await events.aclose()
        yield sse("[DONE]")

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        """A rating of a completion this gateway returned, published as ``feedback.recorded`` with its question
        and answer (the ingest job and the live-quality join take it from there)."""
        access = keys.access(request.headers.get("authorization"))
        body: FeedbackRequest = await parse_body(request, FeedbackRequest)
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
            authorize(access, served.tenant, "id")
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
            await gw.publish(
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
        entry = gw.catalog.entry(model, access)
        await _exists(parse_model(model)[0])
        return entry

    async def _exists(tenant: str) -> None:
        """404 ``model_not_found`` for a tenant with neither documents nor adapters, when no API keys are configured
        (with keys, the keys name the tenants). While Weaviate cannot say, the query goes on: serve decides
        (``unknown_tenant``)."""
        if settings.http.api_keys or gw.catalog.knows(tenant):
            return
        if await asyncio.to_thread(gw.retrieval.knows, tenant) is False:
            raise ApiError(
                404,
                f"The model {tenant!r} does not exist: tenant {tenant} has neither documents nor adapters",
                code="model_not_found",
                param="model",
            )

    @app.post("/v1/retrieve")
    async def retrieve(request: Request) -> dict[str, Any]:
        access = keys.access(request.headers.get("authorization"))
        body: RetrieveRequest = await parse_body(request, RetrieveRequest)
        tenant = body.tenant or access.only_tenant()
        if tenant is None:
            raise ApiError(400, "name the tenant: this key may use several", code="missing_tenant", param="tenant")
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise ApiError(400, f"{tenant!r} is not a tenant name", code="invalid_value", param="tenant")
        authorize(access, tenant, "tenant")
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
        return ApiError(400, str(first["msg"]), code="invalid_value", param=param_of(first["loc"][1:])).response()

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
