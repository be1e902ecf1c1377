"""One adapter refresh, top to bottom: read new examples, split, train, evaluate, gate, publish, announce.

Also ``replay``: retrain a published version from its manifest alone and compare the weights' sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from streamtune.contracts import AdapterUpdate, TrainingExample, encode
from streamtune.errors import KafkaUnavailableError
from streamtune.kafka import client_config, committed_end_offsets
from streamtune.models import sha256_file
from streamtune.settings import Settings, TrainingSettings
from streamtune.topics import ADAPTER_UPDATES, TRAINING_EXAMPLES, topic_name
from training.data import Ranges, load_anchor, read_examples, replay_sample, split
from training.registry import AdapterRegistry, RegistryError, Version

__all__ = ["RefreshOutcome", "ReplayOutcome", "announce", "refresh", "replay"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


@dataclass
class RefreshOutcome:
    status: str
    """promoted | rejected | skipped"""
    reason: str
    version: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplayOutcome:
    version: str
    recorded_sha256: str
    replayed_sha256: str

    @property
    def identical(self) -> bool:
        return self.recorded_sha256 == self.replayed_sha256


def _ranges_json(ranges: Ranges) -> dict[str, list[int]]:
    return {str(p): [start, end] for p, (start, end) in sorted(ranges.items())}


def _ranges_from_json(data: dict[str, list[int]]) -> Ranges:
    return {int(p): (int(r[0]), int(r[1])) for p, r in data.items()}


def _base_identity(settings: Settings, source: str) -> dict[str, Any]:
    folder = Path(source)
    identity: dict[str, Any] = {"setting": settings.models.base_model, "source": source}
    if folder.is_dir():
        identity["sha256"] = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    else:
        identity["revision"] = "hub default branch at training time"
    return identity


def _code_version() -> dict[str, Any]:
    import streamtune

    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")):
        digest.update(path.read_bytes())
    try:
        git = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"streamtune": streamtune.__version__, "git": git, "training_sha256": digest.hexdigest()}


def _libraries() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in _LIBRARIES}}


def _exclude_deleted(settings: Settings, tenant: str, examples: list[TrainingExample]) -> list[str]:
    """Ids of examples that rely on a document no longer in the index (deleted since)."""
    doc_ids = {d for e in examples for d in e.context_doc_ids or []}
    if not doc_ids:
        return []
    from retrieval import connect
    from retrieval.store import ChunkStore

    with connect(settings.weaviate) as client:
        store = ChunkStore(client, settings)
        gone = {d for d in doc_ids if store.count(tenant, d) == 0}
    return [e.example_id for e in examples if set(e.context_doc_ids or []) & gone]


@dataclass
class _Data:
    ranges: Ranges
    replay_ranges: Ranges
    new: list[TrainingExample]
    train: list[TrainingExample]
    held_out: list[TrainingExample]
    replay: list[TrainingExample]
    excluded: list[str]


def _new_examples(
    settings: Settings, tenant: str, ranges: Ranges, excluded: list[str] | None
) -> tuple[list[TrainingExample], list[str]]:
    """The tenant's examples in ``ranges`` less the excluded ids (looked up in the index when not given)."""
    examples = read_examples(settings, tenant, ranges).examples
    if excluded is None:
        excluded = _exclude_deleted(settings, tenant, examples)
    dropped = set(excluded)
    return [e for e in examples if e.example_id not in dropped], excluded


def _with_split_and_replay(
    settings: Settings,
    tenant: str,
    new: list[TrainingExample],
    excluded: list[str],
    ranges: Ranges,
    replay_ranges: Ranges,
) -> _Data:
    train_set, held_out = split(new, settings.training.held_out_percent, settings.training.seed)
    new_ids = {e.example_id for e in new}
    earlier = [e for e in read_examples(settings, tenant, replay_ranges).examples if e.example_id not in new_ids]
    replay = replay_sample(earlier, settings.training.replay_sample, settings.training.seed)
    return _Data(ranges, replay_ranges, new, train_set, held_out, replay, excluded)


def _train(
    settings: Settings, data: _Data, parent: Version | None, work: Path, say: Callable[[str], None]
) -> tuple[Any, Any, Any, str, bool]:
    import torch
    from transformers import AutoTokenizer

    from streamtune.models import base_model_source
    from training.trainer import quantization_support, train

    torch.set_num_threads(settings.training.torch_threads)
    quantize, why_not = quantization_support() if settings.training.quantize_4bit else (False, "disabled by setting")
    if not quantize:
        say(f"    bitsandbytes 4-bit unavailable ({why_not}): training plain LoRA on the full-precision base")
    source = base_model_source(settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model, result = train(
        source,
        tokenizer,
        data.train + data.replay,
        settings.training,
        quantize=quantize,
        parent=parent.path if parent else None,
        work_dir=work / "trainer",
        say=say,
    )
    model.save_pretrained(str(work / "adapter"))
    return tokenizer, result, source, "nf4+double-quant" if quantize else f"none ({why_not})", quantize


def refresh(settings: Settings, tenant: str, *, say: Callable[[str], None] = print) -> RefreshOutcome:
    """Train on the examples after the current adapter's range; publish; promote only through the gate."""
    registry = AdapterRegistry(settings.adapters_dir, tenant)
    current = registry.current()
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    previous = _ranges_from_json(current.manifest["data"]["ranges"]) if current else {}
    starts = {p: previous.get(p, (0, 0))[1] for p in ends}
    ranges = {p: (starts[p], ends[p]) for p in ends}
    new, excluded = _new_examples(settings, tenant, ranges, None)
    if len(new) < settings.training.min_examples:
        # checked before the earlier range is read for the replay sample: `--watch` polls often
        say(f"  {tenant}: {len(new)} new examples in {_ranges_json(ranges)}")
        return RefreshOutcome("skipped", f"{len(new)} new examples, fewer than {settings.training.min_examples}")
    data = _with_split_and_replay(settings, tenant, new, excluded, ranges, {p: (0, starts[p]) for p in ends})
    say(
        f"  {tenant}: {len(data.new)} new examples in {_ranges_json(ranges)}; train {len(data.train)}, "
        f"held out {len(data.held_out)}, replay {len(data.replay)}, excluded (deleted docs) {len(data.excluded)}"
    )

    with tempfile.TemporaryDirectory(prefix="streamtune-train-") as tmp:
        work = Path(tmp)
        tokenizer, result, source, quantization, quantize = _train(settings, data, current, work, say)
        gate = _gate(settings, tokenizer, source, quantize, work / "adapter", current, data.held_out, say)
        name = registry.next_name()
        manifest = {
            "schema_version": 1,
            "tenant": tenant,
            "version": name,
            "created_at": datetime.now(UTC).isoformat(),
            "base_model": _base_identity(settings, source),
            "parent": {"version": current.name, "sha256": current.manifest["adapter"]["sha256"]} if current else None,
            "data": {
                "topic": topic,
                "ranges": _ranges_json(data.ranges),
                "replay_ranges": _ranges_json(data.replay_ranges),
                "new_examples": len(data.new),
                "train": len(data.train),
                "held_out": len(data.held_out),
                "replay": len(data.replay),
                "excluded_example_ids": data.excluded,
            },
            "split": {"seed": settings.training.seed, "held_out_percent": settings.training.held_out_percent},
            "training": settings.training.model_dump(mode="json"),
            "quantization": quantization,
            "libraries": _libraries(),
            "code": _code_version(),
            "metrics": {
                "train": {
                    "steps": result.steps,
                    "tokens": result.tokens,
                    "seconds": round(result.seconds, 3),
                    "tokens_per_second": round(result.tokens_per_second, 1),
                    "final_loss": result.losses[-1][1] if result.losses else None,
                },
                **gate["metrics"],
            },
            "gate": {k: v for k, v in gate.items() if k != "metrics"},
            "adapter": {"sha256": sha256_file(work / "adapter" / ADAPTER_WEIGHTS)},
        }
        status = "promoted" if gate["promoted"] else "rejected"

        def write(target: Path) -> None:
            for item in (work / "adapter").iterdir():
                shutil.copy2(item, target / item.name)
            (target / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _loss_curve(result.losses, target / "loss.png", f"{tenant} {name}")

        version = registry.publish(name, write, status)
    if status == "promoted":
        announce(settings, tenant, version)
    return RefreshOutcome(status, gate["reason"], name, manifest)


def _gate(
    settings: Settings,
    tokenizer: Any,
    source: str,
    quantize: bool,
    candidate_dir: Path,
    current: Version | None,
    held_out: list[TrainingExample],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Promote only if the candidate beats the current adapter on the held-out slice and the anchor loss
    rises by no more than ``training.anchor_tolerance`` (relative)."""
    from training.trainer import evaluate, load_model

    anchor = load_anchor(settings.training.anchor_file)
    scores: dict[str, dict[str, Any]] = {}
    for label, adapter in (("candidate", candidate_dir), ("current", current.path if current else None)):
        model = load_model(source, settings.training, quantize=quantize, adapter=adapter, trainable=False)
        scores[label] = {
            "held_out": evaluate(model, tokenizer, held_out, settings.training.eval_max_new_tokens).as_dict(),
            "anchor": evaluate(model, tokenizer, anchor, settings.training.eval_max_new_tokens).as_dict(),
        }
        which = "new" if label == "candidate" else current.name if current else "base"
        held, anchored = scores[label]["held_out"], scores[label]["anchor"]
        say(
            f"    {label:<9} ({which}): held-out loss {held['loss']:.3f} EM {held['exact_match']:.2f} "
            f"F1 {held['token_f1']:.2f}; anchor loss {anchored['loss']:.3f} F1 {anchored['token_f1']:.2f}"
        )
        del model
    cand, curr = scores["candidate"], scores["current"]
    better = cand["held_out"]["loss"] < curr["held_out"]["loss"]
    limit = curr["anchor"]["loss"] * (1 + settings.training.anchor_tolerance)
    anchor_ok = cand["anchor"]["loss"] <= limit
    if better and anchor_ok:
        reason = (
            f"held-out loss {cand['held_out']['loss']:.4f} < {curr['held_out']['loss']:.4f} and anchor within tolerance"
        )
    elif not better:
        reason = f"held-out loss {cand['held_out']['loss']:.4f} is not below the current {curr['held_out']['loss']:.4f}"
    else:
        tolerance = settings.training.anchor_tolerance
        reason = f"anchor loss {cand['anchor']['loss']:.4f} exceeds {limit:.4f} (current +{tolerance:.0%})"
    return {
        "promoted": better and anchor_ok,
        "reason": reason,
        "compared_with": current.name if current else "base model",
        "anchor_tolerance": settings.training.anchor_tolerance,
        "metrics": {"candidate": cand, "current": curr},
    }


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


def announce(settings: Settings, tenant: str, version: Version) -> None:
    """Publish the (already durable) version on ``adapter-updates``."""
    from confluent_kafka import Producer

    update = AdapterUpdate(
        tenant=tenant,
        version=version.name,
        uri=version.path.resolve().as_uri(),
        base_model=settings.models.base_model,
        manifest=version.manifest,
    )
    producer = Producer(client_config(settings.kafka, **{"enable.idempotence": True}))
    producer.produce(topic_name(ADAPTER_UPDATES, settings.topics), key=tenant.encode(), value=encode(update))
    if producer.flush(settings.kafka.request_timeout_s) != 0:
        raise KafkaUnavailableError(f"could not announce {tenant} {version.name} on adapter-updates")


def replay(settings: Settings, tenant: str, name: str, *, say: Callable[[str], None] = print) -> ReplayOutcome:
    """Retrain ``name`` from exactly what its manifest records and compare the adapter's sha256."""
    registry = AdapterRegistry(settings.adapters_dir, tenant)
    version = registry.get(name)
    manifest = version.manifest
    recorded = TrainingSettings.model_validate(manifest["training"])
    replay_settings = settings.model_copy(update={"training": recorded})
    parent = registry.get(manifest["parent"]["version"]) if manifest["parent"] else None
    if parent is not None and parent.manifest["adapter"]["sha256"] != manifest["parent"]["sha256"]:
        raise RegistryError(f"parent {parent.name} no longer matches the sha256 recorded in {name}'s manifest")
    ranges = _ranges_from_json(manifest["data"]["ranges"])
    new, excluded = _new_examples(replay_settings, tenant, ranges, list(manifest["data"]["excluded_example_ids"]))
    data = _with_split_and_replay(
        replay_settings, tenant, new, excluded, ranges, _ranges_from_json(manifest["data"]["replay_ranges"])
    )
    say(
        f"  replaying {tenant} {name}: ranges {manifest['data']['ranges']}, "
        f"{len(data.train)} train, {len(data.replay)} replay"
    )
    with tempfile.TemporaryDirectory(prefix="streamtune-replay-") as tmp:
        work = Path(tmp)
        _train(replay_settings, data, parent, work, say)
        replayed = sha256_file(work / "adapter" / ADAPTER_WEIGHTS)
    return ReplayOutcome(name, manifest["adapter"]["sha256"], replayed)
