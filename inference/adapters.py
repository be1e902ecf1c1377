"""Which adapter serves which tenant: announcements checked at a trust boundary, and a bounded cache of loaded ones.

``AdapterBook`` takes announcements from ``adapter-updates`` and keeps only those that pass every check:
the base model is the one being served; the URI lies inside the configured adapter store, exactly at
``<store>/<tenant>/<version>`` of the announced tenant and version (tenants compare case-sensitively, as
everywhere); the manifest names the same tenant and version; the weights are a safetensors file (never a
pickle) whose sha256 is the manifest's. Anything else is refused, logged and counted, so that no writer of
``adapter-updates`` can make a tenant serve another tenant's adapter or load code. The weights are hashed
again right before they are loaded, so a file changed after its announcement is refused too.

On an object store (``training.adapters_dir = "s3://..."``) the URI must be exactly ``<store URL>/<tenant>/
<version>``; the version is copied into ``<cache_dir>/adapters-cache/<tenant>/<version>`` (safetensors only,
sha256 checked) and loaded from there (``streamtune.adapter_store``; processes sharing the cache copy a version
once). A store that stays unreachable refuses the announcement (``unavailable``), and so does a copy that fails
(``copy``: a read the store refused, a full disk); what is loaded keeps serving.

``AdapterCache`` keeps at most ``inference.max_loaded_adapters`` adapters on the PEFT model, least
recently used out (``delete_adapter``); ``UpdateReader`` follows the topic between batches.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from streamtune.adapter_store import AdapterStore, CopyFailed
from streamtune.contracts import AdapterUpdate
from streamtune.errors import ContractError, UnavailableError
from streamtune.kafka import consumer
from streamtune.models import sha256_file
from streamtune.rollout import Rollout, canary_arm, fold
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, topic_name

__all__ = ["ADAPTER_WEIGHTS", "AdapterBook", "AdapterCache", "Announced", "UpdateReader", "verify"]

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PICKLES = ("adapter_model.bin", "pytorch_model.bin")


@dataclass(frozen=True)
class Announced:
    tenant: str
    version: str
    path: Path
    sha256: str


def verify(update: AdapterUpdate, store: Path | AdapterStore, base_model: str) -> Announced:
    """The announcement as a loadable adapter, or ValueError saying which check it failed (``UnavailableError``
    when an object store stayed unreachable, ``CopyFailed`` when its copy could not be made)."""
    if update.base_model != base_model:
        raise ValueError(f"base model {update.base_model!r} is not the served {base_model!r}")
    manifest = update.manifest
    if (manifest.tenant, manifest.version) != (update.tenant, update.version):
        raise ValueError(f"its manifest is for {manifest.tenant} {manifest.version}")
    if isinstance(store, AdapterStore):
        if not store.local:
            expected_uri = store.uri(update.tenant, update.version)
            if update.uri != expected_uri:
                raise ValueError(
                    f"URI {update.uri!r} is not {expected_uri} (the store's place for this tenant and version)"
                )
            path = store.fetch(update.tenant, update.version, manifest.adapter.sha256)
            return Announced(update.tenant, update.version, path, manifest.adapter.sha256)
        store = Path(store.location)
    parsed = urlparse(update.uri)
    if parsed.scheme not in ("file", "") or parsed.netloc not in ("", "localhost"):
        raise ValueError(f"URI {update.uri!r} is not a local file URI")
    path = Path(unquote(parsed.path)).resolve()
    expected = (store / update.tenant / update.version).resolve()
    if path != expected:
        raise ValueError(f"URI {update.uri!r} is not {expected} (the store's place for this tenant and version)")
    weights = path / ADAPTER_WEIGHTS
    if any((path / name).exists() for name in _PICKLES):
        raise ValueError(f"{path} holds pickled weights; only safetensors are loaded")
    if not weights.is_file():
        raise ValueError(f"{weights} is missing")
    digest = sha256_file(weights)
    if digest != manifest.adapter.sha256:
        raise ValueError(
            f"the weights' sha256 {digest[:16]}... is not the manifest's {manifest.adapter.sha256[:16]}..."
        )
    return Announced(update.tenant, update.version, path, digest)


@dataclass
class AdapterBook:
    """Every verified announcement, and each tenant's rollout (``streamtune.rollout``: its current version and a
    canary on trial); refusals are kept for the log and the metrics."""

    store: Path | AdapterStore
    base_model: str
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    versions: dict[tuple[str, str], Announced] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    on_refusal: Callable[[str], None] = lambda reason: None

    @property
    def latest(self) -> dict[str, str]:
        """Each tenant's current version."""
        return {tenant: r.current for tenant, r in self.rollouts.items() if r.current is not None}

    def record(self, update: AdapterUpdate) -> bool:
        """Take an announcement; False (logged, counted) when it fails a check. The end of a rollout
        (``rolled_back``) loads nothing, so it is not checked: it can only take a version out of service."""
        if update.state == "rolled_back":
            self.rollouts[update.tenant] = fold(self.rollouts.get(update.tenant, Rollout()), update)
            return True
        try:
            announced = verify(update, self.store, self.base_model)
        except (UnavailableError, CopyFailed) as exc:  # the store or the local disk, not the announcement
            check = "unavailable" if isinstance(exc, UnavailableError) else "copy"
            reason = f"{update.tenant} {update.version}: {check}: {exc}"
            self.refused.append(reason)
            log.error("serve: could not fetch %s; the tenant keeps what it had", reason)
            self.on_refusal(check)
            return False
        except ValueError as exc:
            reason = f"{update.tenant} {update.version}: {exc}"
            self.refused.append(reason)
            log.warning("serve: refused the announcement of %s", reason)
            self.on_refusal(str(exc).split(" ", 1)[0])
            return False
        self.versions[(update.tenant, update.version)] = announced
        self.rollouts[update.tenant] = fold(self.rollouts.get(update.tenant, Rollout()), update)
        return True

    def route(self, tenant: str, pinned: str | None, query_id: str) -> tuple[Announced | None, str | None]:
        """The adapter a query is answered with and its canary arm (None: no canary, or a pinned version);
        KeyError for an unknown pin. A pin wins over the split."""
        rollout = self.rollouts.get(tenant, Rollout())
        if pinned is not None or rollout.canary is None:
            return self.resolve(tenant, pinned), None
        if canary_arm(query_id, rollout.canary_percent):
            return self.versions[(tenant, rollout.canary)], "canary"
        return self.resolve(tenant, None), "incumbent"

    def resolve(self, tenant: str, pinned: str | None) -> Announced | None:
        """The adapter a query of ``tenant`` is answered with (None: the base model); KeyError for an unknown pin."""
        version = pinned or self.rollouts.get(tenant, Rollout()).current
        if version is None:
            return None
        return self.versions[(tenant, version)]


class AdapterCache:
    """At most ``capacity`` adapters loaded on one PEFT model; the least recently used is deleted first.

    The base model is wrapped in a ``PeftModel`` at the first load, so that one batch can mix adapters
    (``generate(adapter_names=[...])``, ``"__base__"`` for rows without one).
    """

    BASE = "__base__"

    def __init__(self, model: Any, capacity: int, *, on_load: Callable[[str, float], None] | None = None) -> None:
        self.model = model
        self.capacity = capacity
        self.loaded: OrderedDict[str, Announced] = OrderedDict()
        self.loads = 0
        self.evictions = 0
        self.on_load = on_load or (lambda tenant, seconds: None)
        self.on_evict: Callable[[str], None] = lambda tenant: None

    @staticmethod
    def name(adapter: Announced | None) -> str:
        return AdapterCache.BASE if adapter is None else f"{adapter.tenant}__{adapter.version}"

    def ensure(self, adapters: list[Announced]) -> None:
        """Make every one of ``adapters`` (at most ``capacity`` of them) loaded, evicting others.

        A new adapter is loaded before the least recently used one is deleted (PEFT cannot drop the last
        adapter of a model), so for a moment the model may hold one more than ``capacity``.
        """
        from peft import PeftModel

        keep = {self.name(a) for a in adapters}
        if len(keep) > self.capacity:
            raise ValueError(f"{len(keep)} adapters asked for at once; the cache holds {self.capacity}")
        for adapter in adapters:
            name = self.name(adapter)
            if name in self.loaded:
                self.loaded.move_to_end(name)
                continue
            if sha256_file(adapter.path / ADAPTER_WEIGHTS) != adapter.sha256:
                raise ValueError(f"{adapter.path} changed after it was announced (sha256 differs)")
            begin = time.perf_counter()
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(adapter.path), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(adapter.path), adapter_name=name, is_trainable=False
                )
            self.model.eval()
            self.loaded[name] = adapter
            self.loads += 1
            self.on_load(adapter.tenant, time.perf_counter() - begin)
            while len(self.loaded) > self.capacity:
                self._evict(next(n for n in self.loaded if n not in keep))

    def _evict(self, name: str) -> None:
        adapter = self.loaded.pop(name)
        self.model.delete_adapter(name)
        self.evictions += 1
        self.on_evict(adapter.tenant)


class UpdateReader:
    """A reader of ``adapter-updates`` from the beginning, polled without blocking between batches."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        topic = topic_name(ADAPTER_UPDATES, settings.topics)
        self.consumer = consumer(settings.kafka)
        try:
            metadata = self.consumer.list_topics(topic, timeout=settings.kafka.request_timeout_s)
            partitions = metadata.topics[topic].partitions
        except BaseException:  # Kafka unreachable: callers retry, and a consumer left open per attempt would leak
            self.close()
            raise
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def poll(self, timeout_s: float = 0.0) -> list[AdapterUpdate]:
        updates = []
        while (message := self.consumer.poll(timeout_s)) is not None:
            if message.error() is None:
                try:
                    updates.append(ADAPTER_UPDATES.decode(message.value()))
                except ContractError as exc:  # a foreign, invalid announcement is not ours
                    log.warning("adapter-updates@%s: ignored an invalid announcement: %s", message.offset(), exc)
            timeout_s = 0.0
        return updates

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.consumer.close()
