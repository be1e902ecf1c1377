"""Connecting to Weaviate from the settings, with its errors wrapped at the boundary and classified.

``is_transient`` tells an outage (connection refused, time-outs, 5xx, read-only storage), which is worth
waiting out, from a refusal of this particular request, which is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from streamtune.errors import UnavailableError
from streamtune.retry import retrying
from streamtune.settings import WeaviateSettings

__all__ = ["RetrievalError", "address", "connect", "connect_when_ready", "is_transient"]

log = logging.getLogger(__name__)

_TRANSIENT_WORDS = (
    "unavailable",
    "deadline_exceeded",
    "deadline exceeded",
    "connection refused",
    "connection reset",
    "failed to connect",
    "connect error",
    "timed out",
    "timeout",
    "read-only",
    "readonly",
    "read only",
    "503",
    "502",
    "504",
    "service unavailable",
    "socket closed",
    "broken pipe",
    # a node that restarted answers before its cluster is ready
    "resolve node name",
    "not ready",
    "no leader",
    "leader not found",
    "shutting down",
    # a restarted node's shards are still loading: "object search at index ...: no read replica found"
    "no read replica",
    # ... and a write to one of them, just after a restart: "could not find index for class X. It might have been
    # deleted in the meantime" (the ingest job's own collection, which it created and never deletes)
    "could not find index for class",
)


class RetrievalError(UnavailableError):
    """Weaviate could not be reached or refused an operation."""

    component = "weaviate"


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) looks like Weaviate being down, slow or read-only."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_one(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient_one(exc: BaseException) -> bool:
    from weaviate import exceptions as w

    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    transient_types: tuple[type[BaseException], ...] = (
        w.WeaviateConnectionError,
        w.WeaviateTimeoutError,
        w.WeaviateGRPCUnavailableError,
        w.WeaviateStartUpError,
        w.WeaviateRetryError,
    )
    if isinstance(exc, transient_types):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    try:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
    except ImportError:  # pragma: no cover - grpc ships with weaviate-client
        pass
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover - httpx ships with weaviate-client
        pass
    if isinstance(exc, w.WeaviateBaseError | RetrievalError):
        text = str(exc).lower()
        return any(word in text for word in _TRANSIENT_WORDS)
    return False


def connect(settings: WeaviateSettings) -> Any:
    """An open ``weaviate.WeaviateClient``; the caller closes it (it is a context manager)."""
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout

    auth = Auth.api_key(settings.api_key.get_secret_value()) if settings.api_key else None
    try:
        return weaviate.connect_to_custom(
            http_host=settings.host,
            http_port=settings.http_port,
            http_secure=settings.secure,
            grpc_host=settings.host,
            grpc_port=settings.grpc_port,
            grpc_secure=settings.secure,
            auth_credentials=auth,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=settings.timeout_s, query=settings.timeout_s, insert=settings.timeout_s)
            ),
            skip_init_checks=False,
        )
    except Exception as exc:  # the client raises several unrelated types for "cannot connect"
        cause = _without_secrets(exc, settings)
        raise RetrievalError(
            f"cannot reach Weaviate at {address(settings)} (gRPC {settings.grpc_port}): {cause}. "
            "Start it with `streamtune stack up` or fix the [weaviate] settings."
        ) from exc


def address(settings: WeaviateSettings) -> str:
    return f"{'https' if settings.secure else 'http'}://{settings.host}:{settings.http_port}"


def _without_secrets(exc: BaseException, settings: WeaviateSettings) -> str:
    text = str(exc)
    if settings.api_key is not None:
        text = text.replace(settings.api_key.get_secret_value(), "**********")
    return text


def connect_when_ready(
    settings: WeaviateSettings, *, give_up: bool = True, on_wait: Callable[[bool], None] | None = None
) -> Any:
    """``connect``, waiting out an outage with the Weaviate backoff (services start before their dependencies);
    ``on_wait`` hears when the wait begins and ends (``streamtune.retry``)."""
    return retrying(
        lambda: connect(settings),
        transient=lambda exc: isinstance(exc, RetrievalError),
        backoff=settings.backoff(give_up=give_up),
        what=f"Weaviate at {address(settings)}",
        fix="Start Weaviate (`streamtune stack up`) or fix the [weaviate] settings.",
        log=log,
        on_wait=on_wait,
    )
