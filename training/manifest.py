"""Where an adapter's manifest is built, and where the training settings are read back from one.

The ``Manifest`` type itself lives in ``streamtune/manifest.py``: it rides on ``adapter-updates`` and
``serve`` reads it, and inference must not import training. It is re-exported here so that code which
builds or inspects a version's provenance finds everything under ``training.manifest``.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from streamtune.manifest import (
    AdapterDigest,
    BaseModelIdentity,
    CodeVersion,
    DataWindow,
    EvalEvidence,
    Manifest,
    Metrics,
    ParentRef,
    SideScores,
    Split,
    TrainFigures,
    Verdict,
)
from streamtune.models import sha256_file
from streamtune.settings import Settings, TrainingSettings
from streamtune.topics import TRAINING_EXAMPLES, topic_name
from training.data import TrainingData
from training.registry import Version
from training.trainer import Candidate, TrainResult, resolved_precision

__all__ = ["Manifest", "build_manifest", "data_window", "recorded_training"]

log = logging.getLogger(__name__)

_LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


def build_manifest(
    settings: Settings,
    *,
    tenant: str,
    version: str,
    parent: Version | None,
    data: TrainingData,
    candidate: Candidate,
    scores: tuple[SideScores, SideScores],
    verdict: Verdict,
    evidence: EvalEvidence | None = None,
) -> Manifest:
    """Everything ``version`` was made from and how it scored: enough to retrain it byte for byte.

    ``scores`` is (candidate, current) as the gate measured them, on ``evidence``.
    """
    result = candidate.result
    return Manifest(
        tenant=tenant,
        version=version,
        created_at=datetime.now(UTC),
        base_model=_base_identity(settings, candidate.source),
        parent=ParentRef(version=parent.name, sha256=parent.manifest.adapter.sha256) if parent else None,
        data=data_window(settings, data, evidence, candidate.result),
        split=Split(seed=settings.training.seed, held_out_percent=settings.training.held_out_percent),
        training=resolved_precision(settings.training).model_dump(mode="json"),
        quantization=candidate.quantization,
        libraries=_libraries(),
        code=_code_version(),
        metrics=Metrics(
            train=TrainFigures(
                steps=result.steps,
                tokens=result.tokens,
                seconds=round(result.seconds, 3),
                tokens_per_second=round(result.tokens_per_second, 1),
                final_loss=result.losses[-1][1] if result.losses else None,
                eval_losses=result.eval_losses,
                best_step=result.best_step,
                stopped_early=result.stopped_early,
                validation_examples=result.validation,
            ),
            candidate=scores[0],
            current=scores[1],
            preference=candidate.preference,
        ),
        gate=verdict,
        adapter=AdapterDigest(sha256=candidate.sha256),
        prompt=candidate.prompt,
    )


def data_window(
    settings: Settings, data: TrainingData, evidence: EvalEvidence | None = None, result: TrainResult | None = None
) -> DataWindow:
    """What a version records of its data: exact offsets, every decision taken on them (exclusions,
    deferrals, the replay sample's positions, what the trainer dropped or cut), and the next refresh's
    candidates, so that neither replay nor the next refresh has to read the whole history again."""
    return DataWindow(
        topic=topic_name(TRAINING_EXAMPLES, settings.topics),
        ranges=data.window.ranges,
        replay_ranges=data.window.replay_ranges,
        new_examples=len(data.new),
        train=len(data.train),
        held_out=len(data.held_out),
        replay=len(data.replay),
        excluded_example_ids=data.new.excluded,
        replay_excludes_held_out=data.replay_excludes_held_out,
        evaluation=evidence,
        replay_offsets=data.replay_at,
        replay_excluded_example_ids=data.replay_excluded,
        deferred=data.new.deferred,
        carried=data.new.carried,
        replay_pool=data.pool.replay if data.pool else None,
        replay_pool_bound=data.pool.bound if data.pool else None,
        held_pool=data.pool.held if data.pool else None,
        dropped_example_ids=result.dropped if result else [],
        truncated_example_ids=result.truncated if result else [],
        preference_offsets=data.feedback_at,
        preference_pending=data.feedback_pending,
    )


def recorded_training(manifest: Manifest) -> TrainingSettings:
    """The ``[training]`` settings ``manifest``'s version was trained with.

    A key this version of streamtune no longer knows is dropped with a warning rather than refused, so that
    an older version can still be replayed (whether the weights come out identical is what replay checks).
    """
    known = TrainingSettings.model_fields
    unknown = sorted(set(manifest.training) - set(known))
    if unknown:
        log.warning(
            "%s %s: ignoring training settings unknown to this version of streamtune: %s",
            manifest.tenant,
            manifest.version,
            ", ".join(unknown),
        )
    recorded = {k: v for k, v in manifest.training.items() if k in known}
    return TrainingSettings.model_validate({**_BEFORE_RECORDED, **recorded})


_BEFORE_RECORDED: dict[str, Any] = {"bf16_on_cpu": False, "validation_percent": 0, "preference_steps": 0}
"""Settings added after versions were published without them, at the value those versions were trained with
(where today's default differs)."""


def _base_identity(settings: Settings, source: str) -> BaseModelIdentity:
    folder = Path(source)
    if folder.is_dir():
        hashes = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
        return BaseModelIdentity(setting=settings.models.base_model, source=source, sha256=hashes)
    return BaseModelIdentity(
        setting=settings.models.base_model, source=source, revision="hub default branch at training time"
    )


def _code_version() -> CodeVersion:
    import streamtune

    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")):
        digest.update(path.read_bytes())
    try:
        git: str | None = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = None
    return CodeVersion(streamtune=streamtune.__version__, git=git, training_sha256=digest.hexdigest())


def _libraries() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in _LIBRARIES}}
