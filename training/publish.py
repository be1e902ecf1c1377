"""Publishing a version: write it into the registry (weights, ``manifest.json``, loss curve), then, once it
is durable and only if it is to be served, announce it on ``adapter-updates``.

A rejected version is written all the same (its manifest says why it lost) but never announced.

The topic, not the registry, is the truth of what ``serve`` loads: a tenant's current version must be the
tenant's last announcement. A crash (or a Kafka outage) between the index write and the flush leaves a
current version that nobody serves; ``ensure_announced`` finds that by reading the topic and announces it
again. It is not recorded in the index whether an announcement went out: such a flag would be wrong after a
rollback by hand or on a topic recreated under a new prefix, and ``adapter-updates`` is one small partition.
Every announcement is made holding the tenant's registry lock (``AdapterRegistry.writing``), so that two
writers cannot announce out of the order in which they changed the current version.

A version is also publishable outside streamtune: its ``adapter_config.json`` names a portable base model and
its ``README.md`` is a model card (``training/modelcard.py``). ``export_version`` copies it to any folder or
fsspec URL, checking the weights against the manifest's sha256 before and after, so that PEFT's
``PeftModel.from_pretrained`` loads it on a machine that has only the base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import training.registry as registry_module
from streamtune.contracts import AdapterUpdate
from streamtune.errors import ContractError, KafkaUnavailableError, StreamtuneError
from streamtune.kafka import committed_end_offsets, producer, read_range
from streamtune.manifest import Manifest
from streamtune.rollout import Rollout, fold
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, topic_name
from training.modelcard import ADAPTER_CONFIG, MODEL_CARD, adapter_config, model_card
from training.registry import AdapterRegistry, Version, open_registry, status_of
from training.trainer import ADAPTER_WEIGHTS, Candidate

__all__ = [
    "Announced",
    "ExportError",
    "announce",
    "ensure_announced",
    "export_version",
    "last_announcements",
    "promote_and_announce",
    "rollback_and_announce",
    "write_version",
]

log = logging.getLogger(__name__)


def write_version(registry: AdapterRegistry, manifest: Manifest, candidate: Candidate) -> Version:
    """Publish ``candidate`` as ``manifest.version``, promoted or rejected as the manifest's gate decided."""

    def write(target: Path) -> None:
        for item in candidate.adapter_dir.iterdir():
            if item.name not in (ADAPTER_CONFIG, MODEL_CARD):  # PEFT's, rewritten below
                shutil.copy2(item, target / item.name)
        config = json.loads((candidate.adapter_dir / ADAPTER_CONFIG).read_text())
        (target / ADAPTER_CONFIG).write_text(adapter_config(config, manifest))
        (target / MODEL_CARD).write_text(model_card(manifest))
        registry_module._crash_point("partial")
        (target / "manifest.json").write_text(manifest.to_json())
        result = candidate.result
        title = f"{manifest.tenant} {manifest.version}"
        _loss_curve(result.losses, target / "loss.png", title, validation=result.eval_losses, kept=result.best_step)

    return registry.publish(manifest.version, write, status_of(manifest))


class ExportError(StreamtuneError):
    """An adapter version could not be exported: its weights do not match its manifest, or the destination
    refused it. The message names the version, the destination and what to do."""


_LOSS_CURVE = "loss.png"


def export_version(version: Version, destination: str) -> list[str]:
    """Write ``version`` as a plain PEFT adapter folder to ``destination`` (a path, ``file://`` or any fsspec
    URL) and return the files written: the weights, ``adapter_config.json`` naming the portable base model,
    the model card, ``manifest.json`` and the loss curve.

    The weights are hashed as read and as written, against the manifest's sha256; a destination that already
    holds files is refused rather than mixed with another adapter. The card and config are made again from
    the manifest, so a version published before they existed exports the same way as a new one.
    """
    import fsspec

    where = f"{version.tenant} {version.name}"
    expected = version.manifest.adapter.sha256
    weights = version.read(ADAPTER_WEIGHTS) or b""
    if _sha256(weights) != expected:
        raise ExportError(
            f"{where}: {version.uri}/{ADAPTER_WEIGHTS} has sha256 {_sha256(weights)[:16]}..., its manifest says "
            f"{expected[:16]}...: the version was changed after it was published; export another version"
        )
    config = json.loads(version.read(ADAPTER_CONFIG) or b"{}")
    loss_curve = version.read(_LOSS_CURVE)
    files = {
        ADAPTER_WEIGHTS: weights,
        ADAPTER_CONFIG: adapter_config(config, version.manifest).encode(),
        MODEL_CARD: model_card(version.manifest).encode(),
        **({_LOSS_CURVE: loss_curve} if loss_curve is not None else {}),
        "manifest.json": version.read("manifest.json") or b"",  # last: an export with it is whole
    }
    try:
        fs, root = fsspec.core.url_to_fs(destination)
        if fs.exists(root) and fs.ls(root, detail=False):
            raise ExportError(f"{where}: {destination} is not empty; export into a new or empty folder")
        fs.makedirs(root, exist_ok=True)
        for name, data in files.items():
            fs.pipe_file(f"{root.rstrip('/')}/{name}", data)
        written = fs.cat_file(f"{root.rstrip('/')}/{ADAPTER_WEIGHTS}")
    except (OSError, ValueError, ImportError) as exc:  # fsspec's and its backends' errors, an unknown protocol
        raise ExportError(f"{where}: could not write to {destination}: {type(exc).__name__}: {exc}") from exc
    if _sha256(written) != expected:
        raise ExportError(f"{where}: the weights read back from {destination} do not match sha256 {expected[:16]}...")
    log.info("exported %s to %s (%s)", where, destination, ", ".join(files))
    return list(files)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def announce(settings: Settings, version: Version, state: str = "current") -> None:
    """Publish the (already durable) version on ``adapter-updates``, keyed by its tenant, as what it becomes
    (``state``: current, canary or rolled_back; ``streamtune.rollout``).

    Call it holding the tenant's registry lock (``promote_and_announce`` and ``refresh`` do)."""
    update = AdapterUpdate(
        tenant=version.tenant,
        version=version.name,
        uri=version.uri,
        base_model=settings.models.base_model,
        manifest=version.manifest,
        state=state,
        canary_percent=version.manifest.gate.canary_percent if state == "canary" else None,
    )
    client = producer(settings.kafka, idempotent=True)
    client.produce(
        topic_name(ADAPTER_UPDATES, settings.topics), key=version.tenant.encode(), value=ADAPTER_UPDATES.encode(update)
    )
    if client.flush(settings.kafka.request_timeout_s) != 0:
        raise KafkaUnavailableError(f"could not announce {version.tenant} {version.name} on adapter-updates")
    registry_module._crash_point("announced")


@dataclass(frozen=True)
class Announced:
    """What ``adapter-updates`` says of a tenant: its rollout, and the announcements that made it."""

    rollout: Rollout
    updates: dict[str, AdapterUpdate]
    """version → its last announcement."""

    def says(self, version: Version | None, role: str) -> bool:
        """Whether the topic serves ``version`` (None: none) in ``role`` (current or canary), same weights."""
        named = self.rollout.current if role == "current" else self.rollout.canary
        if version is None:
            return named is None
        update = self.updates.get(version.name)
        return (
            named == version.name
            and update is not None
            and update.manifest.adapter.sha256 == (version.manifest.adapter.sha256)
        )


def last_announcements(settings: Settings) -> dict[str, Announced]:
    """Each tenant's rollout as ``adapter-updates`` announces it (one partition: total order), folded as
    ``serve`` folds it; invalid records, which only a foreign producer writes, are skipped as ``serve`` skips
    them."""
    topic = topic_name(ADAPTER_UPDATES, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    rollouts: dict[str, Rollout] = {}
    updates: dict[str, dict[str, AdapterUpdate]] = {}
    for message in read_range(settings.kafka, topic, {p: (0, end) for p, end in ends.items()}):
        try:
            update = ADAPTER_UPDATES.decode(message.value())
        except ContractError:
            continue
        rollouts[update.tenant] = fold(rollouts.get(update.tenant, Rollout()), update)
        updates.setdefault(update.tenant, {})[update.version] = update
    return {tenant: Announced(rollout, updates[tenant]) for tenant, rollout in rollouts.items()}


def ensure_announced(
    settings: Settings, registry: AdapterRegistry, *, announced: Mapping[str, Announced] | None = None
) -> Version | None:
    """Announce what the registry holds and the topic does not say: the current version, then the canary (or
    the end of a canary the registry has decided). Return the version announced last, or None when nothing was
    missing. Call it holding ``registry.writing()``.

    ``announced``: ``last_announcements``, when the caller has read the topic for several tenants at once;
    by default the topic is read here.
    """
    said = (last_announcements(settings) if announced is None else announced).get(registry.tenant)
    said = said or Announced(Rollout(), {})
    current, canary = registry.current(), registry.canary()
    repaired = None
    if current is not None and not said.says(current, "current"):
        _repairing(registry.tenant, "current", current.name, said.rollout.current)
        announce(settings, current)
        repaired = current
    if canary is not None and not said.says(canary, "canary"):
        _repairing(registry.tenant, "canary", canary.name, said.rollout.canary)
        announce(settings, canary, "canary")
        repaired = canary
    elif canary is None and said.rollout.canary and said.rollout.canary != (current.name if current else None):
        ended = registry.get(said.rollout.canary)  # decided (rolled back) in the registry, never announced
        _repairing(registry.tenant, "canary", "none", ended.name)
        announce(settings, ended, "rolled_back")
        repaired = ended
    return repaired


def _repairing(tenant: str, role: str, registry_says: str, topic_says: str | None) -> None:
    log.warning(
        "tenant %s: repairing: the registry's %s is %s, adapter-updates says %s; announcing it",
        tenant,
        role,
        registry_says,
        topic_says or "none",
    )


def promote_and_announce(settings: Settings, tenant: str, name: str) -> Version:
    """``adapters promote``: make ``name`` current and announce it, both under the tenant's lock so that no
    refresh can announce another version in between."""
    registry = open_registry(settings, tenant)
    with registry.writing():
        version = registry.promote(name, decision=_by_hand("promote"))
        announce(settings, version)
    return version


def _by_hand(decision: str) -> dict[str, Any]:
    return {"decision": decision, "reason": "by hand (streamtune adapters)", "at": datetime.now(UTC).isoformat()}


def rollback_and_announce(settings: Settings, tenant: str) -> Version:
    """``adapters rollback``: make the previously current version current again and announce it (locked)."""
    registry = open_registry(settings, tenant)
    with registry.writing():
        version = registry.rollback()
        announce(settings, version)
    return version


def _loss_curve(
    losses: list[tuple[int, float]],
    path: Path,
    title: str,
    *,
    validation: list[tuple[int, float]] | None = None,
    kept: int | None = None,
) -> None:
    """The training loss per step; with early stopping also the validation loss and the step whose adapter
    was kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([s for s, _ in losses], [v for _, v in losses], marker=".", label="training loss")
    if validation:
        axis.plot([s for s, _ in validation], [v for _, v in validation], marker="o", label="validation loss")
    if kept is not None:
        axis.axvline(kept, color="grey", linestyle="--", label=f"kept: step {kept}")
    axis.set(xlabel="step", ylabel="loss" if validation else "training loss", title=title)
    if validation or kept is not None:
        axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
