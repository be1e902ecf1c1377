"""``/v1/models``: the tenants and adapter versions announced on ``adapter-updates``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException

from inference.http.auth import Access, authorize
from inference.http.errors import ApiError
from inference.http.protocol import parse_model
from streamtune.contracts import AdapterUpdate
from streamtune.rollout import Rollout, fold
from streamtune.settings import Settings

__all__ = ["ModelCatalog"]

log = logging.getLogger(__name__)


class ModelCatalog:
    """Tenants and adapter versions announced on ``adapter-updates`` (read from the beginning and followed).

    Like serve, it ignores announcements for another base model and folds a tenant's announcements into its
    rollout (``streamtune.rollout``): the current version is the last one announced as current. It lists
    what was announced; serve alone verifies adapters (the gateway need not see the
    adapter store), so a pinned version serve refused gets ``unknown_adapter`` (404).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._versions: dict[str, dict[str, AdapterUpdate]] = {}
        self._rollouts: dict[str, Rollout] = {}
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
                self._rollouts[update.tenant] = fold(self._rollouts.get(update.tenant, Rollout()), update)

    def knows(self, tenant: str) -> bool:
        """Whether an adapter was ever announced for ``tenant``."""
        with self._lock:
            return tenant in self._versions

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
        authorize(access, tenant)
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
        current = self._rollouts.get(tenant, Rollout()).current
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
