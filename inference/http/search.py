"""``/v1/retrieve``: the tenant's top chunks without generation, with the embedding model loaded once and a
Weaviate connection made (and watched) in the background."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

from inference.http.errors import ApiError
from streamtune.errors import UnavailableError
from streamtune.settings import Settings

__all__ = ["Retrieval"]

# How often the background thread looks at Weaviate's health (for /healthz and the log).
_PROBE_INTERVAL_S = 5.0


class Retrieval:
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

    def knows(self, tenant: str) -> bool | None:
        """Whether anything was ever indexed for ``tenant``; None while Weaviate cannot say."""
        retriever = self._retriever
        if retriever is None:
            return None
        try:
            return bool(retriever.store.has_tenant(tenant))
        except Exception:  # unreachable or failing: serve decides instead (unknown_tenant)
            return None

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
