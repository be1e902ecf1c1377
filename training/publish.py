"""Publishing a version: write it into the registry (weights, ``manifest.json``, loss curve), then, once it
is durable and only if it is to be served, announce it on ``adapter-updates``.

A rejected version is written all the same (its manifest says why it lost) but never announced.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from streamtune.contracts import AdapterUpdate
from streamtune.errors import KafkaUnavailableError
from streamtune.kafka import producer
from streamtune.manifest import Manifest
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, topic_name
from training.registry import AdapterRegistry, Version
from training.trainer import Candidate

__all__ = ["announce", "write_version"]


def write_version(registry: AdapterRegistry, manifest: Manifest, candidate: Candidate) -> Version:
    """Publish ``candidate`` as ``manifest.version``, promoted or rejected as the manifest's gate decided."""

    def write(target: Path) -> None:
        for item in candidate.adapter_dir.iterdir():
            shutil.copy2(item, target / item.name)
        (target / "manifest.json").write_text(manifest.to_json())
        _loss_curve(candidate.result.losses, target / "loss.png", f"{manifest.tenant} {manifest.version}")

    return registry.publish(manifest.version, write, "promoted" if manifest.gate.promoted else "rejected")


def announce(settings: Settings, version: Version) -> None:
    """Publish the (already durable) version on ``adapter-updates``, keyed by its tenant."""
    update = AdapterUpdate(
        tenant=version.tenant,
        version=version.name,
        uri=version.path.resolve().as_uri(),
        base_model=settings.models.base_model,
        manifest=version.manifest,
    )
    client = producer(settings.kafka, idempotent=True)
    client.produce(
        topic_name(ADAPTER_UPDATES, settings.topics), key=version.tenant.encode(), value=ADAPTER_UPDATES.encode(update)
    )
    if client.flush(settings.kafka.request_timeout_s) != 0:
        raise KafkaUnavailableError(f"could not announce {version.tenant} {version.name} on adapter-updates")


def _loss_curve(losses: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([s for s, _ in losses], [v for _, v in losses], marker=".")
    axis.set(xlabel="step", ylabel="training loss", title=title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
