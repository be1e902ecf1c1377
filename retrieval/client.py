"""Connecting to Weaviate from the settings, with its errors wrapped at the boundary."""

from __future__ import annotations

from typing import Any

from streamtune.errors import StreamtuneError
from streamtune.settings import WeaviateSettings

__all__ = ["RetrievalError", "connect"]


class RetrievalError(StreamtuneError):
    """Weaviate could not be reached or refused an operation."""


def connect(settings: WeaviateSettings) -> Any:
    """An open ``weaviate.WeaviateClient``; the caller closes it (it is a context manager)."""
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout

    auth = Auth.api_key(settings.api_key.get_secret_value()) if settings.api_key else None
    try:
        return weaviate.connect_to_local(
            host=settings.host,
            port=settings.http_port,
            grpc_port=settings.grpc_port,
            auth_credentials=auth,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=settings.timeout_s, query=settings.timeout_s, insert=settings.timeout_s)
            ),
            skip_init_checks=False,
        )
    except Exception as exc:  # the client raises several unrelated types for "cannot connect"
        raise RetrievalError(
            f"cannot reach Weaviate at http://{settings.host}:{settings.http_port} (gRPC {settings.grpc_port}): {exc}. "
            "Start it with `streamtune stack up` or fix the [weaviate] settings."
        ) from exc
