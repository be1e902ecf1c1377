"""One adapter refresh, as named steps: window -> examples -> split + replay -> evidence -> train -> gate ->
publish -> announce. Each step lives in the module that owns it (``data``, ``trainer``, ``gate``, ``manifest``,
``publish``); this module only puts them in order.

Also ``replay``: retrain a published version from its manifest alone and compare the weights' sha256.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import training.registry as registry_module
from streamtune.allocator import release_freed_memory
from streamtune.manifest import Manifest
from streamtune.prompt import PromptFormat
from streamtune.settings import Settings
from training.data import (
    MissingDocs,
    excluded_ids,
    load_anchor,
    read_new,
    recorded_data,
    split_and_replay,
    window,
    with_feedback,
)
from training.gate import decide, gather_evidence, score
from training.manifest import build_manifest, recorded_training
from training.publish import announce, ensure_announced, write_version
from training.registry import AdapterRegistry, RegistryError, Version, open_registry
from training.trainer import train_candidate

__all__ = ["Guard", "RefreshOutcome", "ReplayOutcome", "refresh", "replay"]

Guard = Callable[[str], AbstractContextManager[None]]
"""Wraps each step of a refresh that others see (``announce``: the repair's announcement; ``publish``: the new
version's publication and announcement): entering it raises when the caller may no longer write the tenant
(``training.worker``: its partition was revoked), and leaving it lets a revocation waiting for it go on."""


@dataclass(frozen=True)
class RefreshOutcome:
    status: str
    """promoted | canary | rejected | skipped"""
    reason: str
    version: str | None = None
    """The version published; when skipped because it was made already (``up_to``), that version."""
    manifest: Manifest | None = None
    """The published version's manifest (None when skipped)."""


@dataclass(frozen=True)
class ReplayOutcome:
    version: str
    recorded_sha256: str
    replayed_sha256: str

    @property
    def identical(self) -> bool:
        return self.recorded_sha256 == self.replayed_sha256


def refresh(
    settings: Settings,
    tenant: str,
    *,
    missing_docs: MissingDocs | None = None,
    say: Callable[[str], None] = print,
    up_to: Mapping[int, int] | None = None,
    guard: Guard | None = None,
) -> RefreshOutcome:
    """Train on the examples after the current adapter's range; publish; promote only through the gate.

    Holds the tenant's registry lock throughout (a second refresh of the tenant waits for it, then finds
    nothing new); first repairs what a crash left and announces the current version again if its
    announcement is missing on ``adapter-updates``.

    ``missing_docs`` reports which documents the index lacks: the new examples relying on a deleted one are
    left out (recorded as excluded), and so are the earlier ones from the replay sample (recorded too); those
    relying on one only not indexed yet are deferred to the next refresh (recorded). None excludes nothing.

    Skipped without training when the gate would have too little evidence to decide on: fewer than the
    minimum held-out examples, the new slice and the earlier held-out ones together. Nothing is published and
    the window is not consumed, so the next refresh sees these examples again with the newer ones.

    ``up_to`` (a refresh request's, ``training.worker``): per partition of ``training-examples``, the offsets the
    request counted to; when a version already reaches them (``AdapterRegistry.covering``, read after the
    repair), the request was served (by a worker that died before it could say so) and nothing is trained.
    ``guard`` wraps the announcement of the repair and the publication with its announcement (``Guard``).
    """
    registry = open_registry(settings, tenant)
    # One writer per tenant from reading `current` to the announcement, so that two trainers cannot both
    # publish the next version nor announce out of order; opening it repairs what a crash left behind.
    with registry.writing():
        with _step(guard, "announce"):
            ensure_announced(settings, registry)  # a crash after an earlier promotion must not leave it unserved
        if up_to is not None:
            made = registry.covering(up_to)
            if made is not None:
                reason = f"already made as {made.name} ({made.status}) from the examples up to {dict(up_to)}"
                say(f"  {tenant}: {reason}")
                return RefreshOutcome("skipped", reason, made.name)
        try:
            return _refresh(settings, registry, missing_docs, say, guard)
        finally:
            release_freed_memory()  # what training kept for reuse (memory.keep_freed_mb); `train watch` lives on


def _step(guard: Guard | None, name: str) -> AbstractContextManager[None]:
    return guard(name) if guard is not None else nullcontext()


def _refresh(
    settings: Settings,
    registry: AdapterRegistry,
    missing_docs: MissingDocs | None,
    say: Callable[[str], None],
    guard: Guard | None,
) -> RefreshOutcome:
    tenant = registry.tenant
    canary = registry.canary()
    if canary is not None:
        # One trial at a time: the next candidate is trained against the version the decision leaves current.
        reason = f"canary {canary.name} is on trial (`streamtune adapters decide`); the examples wait"
        say(f"  {tenant}: {reason}")
        return RefreshOutcome("skipped", reason)
    current = registry.current()
    span = window(settings, current.manifest if current else None)
    new = read_new(settings, tenant, span.ranges, missing_docs, span.carried)
    if len(new) < settings.training.min_examples:
        # checked before the earlier range is read for the replay sample: `--watch` polls often
        say(f"  {tenant}: {new.describe(span.ranges)}")
        return RefreshOutcome("skipped", f"{len(new)} new examples, fewer than {settings.training.min_examples}")
    data = split_and_replay(
        settings, tenant, new, span, missing_docs=missing_docs, current=current.manifest if current else None
    )
    data = with_feedback(settings, tenant, data, current.manifest if current else None)
    say(f"  {tenant}: {data.describe()}")
    evidence = gather_evidence(
        data.held_out,
        data.earlier_held_out,
        settings.training.min_eval_examples,
        unusable=lambda examples: excluded_ids(tenant, examples, missing_docs),
    )
    if not evidence.enough:
        say(f"  {tenant}: {evidence.shortfall}; the examples wait for the next refresh")
        return RefreshOutcome("skipped", evidence.shortfall)
    if evidence.record.earlier_held_out:
        added = evidence.record.earlier_held_out
        say(f"  {tenant}: the gate scores {len(data.held_out)} new + {added} earlier held-out examples")

    parent, baseline = (current.local_dir(), current.name) if current else (None, "base model")
    form = PromptFormat.of(settings)
    with tempfile.TemporaryDirectory(prefix="streamtune-train-") as tmp:
        candidate = train_candidate(
            settings, data.examples, parent, Path(tmp), say, prompt=form, feedback=data.feedback
        )
        anchor = load_anchor(settings.training.anchor_file)
        held_out = evidence.examples
        ours = score(settings, candidate, candidate.adapter_dir, held_out, anchor, "candidate (new)", say)
        theirs = score(settings, candidate, parent, held_out, anchor, f"current   ({baseline})", say)
        verdict = decide(
            ours,
            theirs,
            settings.training.anchor_tolerance,
            quality_tolerance=settings.training.quality_tolerance,
            compared_with=baseline,
        )
        if verdict.promoted and settings.training.canary_percent:
            verdict = verdict.model_copy(update={"canary_percent": settings.training.canary_percent})
        manifest = build_manifest(
            settings,
            tenant=tenant,
            version=registry.next_name(),
            parent=current,
            data=data,
            candidate=candidate,
            scores=(ours, theirs),
            verdict=verdict,
            evidence=evidence.record,
        )
        registry_module._crash_point("trained")
        # Publication and announcement in one guarded step: a revocation waits for both or fences both.
        with _step(guard, "publish"):
            version = write_version(registry, manifest, candidate)
            if version.status == "promoted":
                announce(settings, version)
            elif version.status == "canary":
                percent = settings.training.canary_percent
                say(f"  {tenant}: {version.name} passed the gate; canary for {percent}% of queries")
                announce(settings, version, "canary")
    return RefreshOutcome(version.status, verdict.reason, version.name, manifest)


def replay(settings: Settings, tenant: str, name: str, *, say: Callable[[str], None] = print) -> ReplayOutcome:
    """Retrain ``name`` from exactly what its manifest records and compare the adapter's sha256."""
    registry = open_registry(settings, tenant)
    manifest = registry.get(name).manifest
    recorded = settings.model_copy(update={"training": recorded_training(manifest)})
    parent = _recorded_parent(registry, manifest)
    # the recorded decisions (exclusions, deferrals, replay positions): the index is not asked again
    data = recorded_data(recorded, tenant, manifest)
    say(f"  replaying {tenant} {name}: {data.describe()}")
    with tempfile.TemporaryDirectory(prefix="streamtune-replay-") as tmp:
        # the recorded format, not today's inference settings; None (older versions): their bare turns
        candidate = train_candidate(
            recorded,
            data.examples,
            parent.local_dir() if parent else None,
            Path(tmp),
            say,
            prompt=manifest.prompt,
            feedback=data.feedback,
        )
        replayed = candidate.sha256
    release_freed_memory()
    return ReplayOutcome(name, manifest.adapter.sha256, replayed)


def _recorded_parent(registry: AdapterRegistry, manifest: Manifest) -> Version | None:
    """The version ``manifest``'s adapter continued from, checked against the sha256 it recorded."""
    if manifest.parent is None:
        return None
    parent = registry.get(manifest.parent.version)
    if parent.manifest.adapter.sha256 != manifest.parent.sha256:
        raise RegistryError(
            f"parent {parent.name} no longer matches the sha256 recorded in {manifest.version}'s manifest"
        )
    return parent
