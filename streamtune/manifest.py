"""The adapter manifest: what every adapter version was made from, as one typed, versioned record.

It is written beside the weights as ``manifest.json``, rides on ``adapter-updates`` (so it is part of the
wire contract and lives in the core), and is read back through this model everywhere: by the registry,
``train replay``, ``train watch``, ``serve`` (the weights' sha256), the CLI, the demo and the benchmarks.
``training/manifest.py`` builds it. Loading is forward-compatible: unknown keys of a newer writer are
ignored with a warning, as PEFT does with its configs; every manifest written since the first version loads.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamtune.errors import ContractError
from streamtune.prompt import PromptFormat

__all__ = [
    "AdapterDigest",
    "BaseModelIdentity",
    "CodeVersion",
    "DataWindow",
    "EvalEvidence",
    "EvalScores",
    "Manifest",
    "Metrics",
    "ParentRef",
    "PreferenceFigures",
    "PromptFormat",
    "Ranges",
    "SideScores",
    "Split",
    "TrainFigures",
    "Verdict",
]

log = logging.getLogger(__name__)

Ranges = dict[int, tuple[int, int]]
"""Per partition, the half-open offset range ``[start, end)``."""


class _Part(BaseModel):
    # NaN is a legitimate score (no tokens to score), so it is written as NaN, not null.
    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants")


class BaseModelIdentity(_Part):
    setting: str
    """``models.base_model`` as configured (a hub id, a path, or the packaged default)."""
    source: str
    """What was loaded (a folder or hub id)."""
    sha256: dict[str, str] = Field(default_factory=dict)
    """Per weights file, its sha256 (local folders)."""
    revision: str | None = None
    """For a hub id: the revision, when no file hash could be taken."""


class ParentRef(_Part):
    version: str
    sha256: str


class EvalEvidence(_Part):
    """The held-out examples the gate scored both sides on: the new held-out slice, topped up to ``minimum``
    with the tenant's most recent earlier held-out examples (never trained on) when it is smaller."""

    minimum: int
    """The least evidence a decision needs (``training.min_eval_examples``)."""
    new_held_out: int
    earlier_held_out: int
    earlier_example_ids: list[str] = Field(default_factory=list)
    """Which earlier held-out examples were added, in the order scored."""


class DataWindow(_Part):
    topic: str
    ranges: Ranges
    """The new examples: exactly these offsets of ``topic``."""
    replay_ranges: Ranges
    """Where the replay sample was drawn from."""
    new_examples: int
    train: int
    held_out: int
    replay: int
    excluded_example_ids: list[str] = Field(default_factory=list)
    """New examples left out because a document they rely on was deleted."""
    replay_excludes_held_out: bool = False
    """Whether the replay sample left out the earlier examples the split holds out (they stay unseen, as
    evaluation evidence). False in versions made before that rule: their replay draws from all earlier ones."""
    evaluation: EvalEvidence | None = None
    """What the gate scored on (None in versions made before it was recorded: the held-out slice alone)."""
    # Positions below are (partition, offset) of ``topic``. All optional: every earlier manifest still loads.
    replay_offsets: list[tuple[int, int]] | None = None
    """Where each replay example was read from, in the order trained: ``train replay`` reads exactly these.
    None: versions made before it was recorded (their sample is drawn again from ``replay_ranges``)."""
    replay_excluded_example_ids: list[str] = Field(default_factory=list)
    """Earlier examples left out of the replay sample because a document they rely on was deleted since."""
    deferred: list[tuple[int, int]] = Field(default_factory=list)
    """Examples not trained on because a document they rely on is not indexed yet (not deleted): the next
    refresh reads them again and trains on them once it is (or excludes them once it is deleted)."""
    carried: list[tuple[int, int]] = Field(default_factory=list)
    """Earlier deferred examples this version read again besides ``ranges`` (trained on unless now excluded or
    deferred again)."""
    replay_pool: list[tuple[int, int]] | None = None
    """The next refresh's replay candidates: the lowest-ranked examples trained up to this version (less
    those the split holds out), so that it reads these instead of the whole topic. None: not recorded."""
    replay_pool_bound: int | None = None
    """Every candidate ranked at or below this is in ``replay_pool`` (None: every candidate is)."""
    held_pool: list[tuple[int, int]] | None = None
    """The most recent earlier held-out examples, the gate's top-up evidence for the next refresh."""
    dropped_example_ids: list[str] = Field(default_factory=list)
    """Examples the trainer could not use (no user question and answer at the end): trained on nothing."""
    truncated_example_ids: list[str] = Field(default_factory=list)
    """Examples cut to ``training.max_length`` tokens (their context shortened, or the example cut)."""
    preference_offsets: list[tuple[int, int]] = Field(default_factory=list)
    """The rated-down answers (``rating`` and ``preference`` examples) the preference step trained on, in the
    order trained: ``train replay`` reads exactly these. Empty: no preference step."""
    preference_pending: list[tuple[int, int]] = Field(default_factory=list)
    """Rated-down answers read but not trained on (fewer than ``training.min_preference_examples``): the next
    refresh reads them again with its own."""

    def trained_up_to(self) -> dict[int, int]:
        """Per partition, the first offset this version did not see."""
        return {p: end for p, (_, end) in self.ranges.items()}


class EvalScores(_Part):
    loss: float
    exact_match: float
    token_f1: float
    examples: int


class SideScores(_Part):
    held_out: EvalScores
    anchor: EvalScores


class TrainFigures(_Part):
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    final_loss: float | None = None
    # Early stopping on a validation slice (``training.validation_percent``). All optional: every earlier
    # manifest still loads, as one trained without a slice (every step trained, the last one kept).
    eval_losses: list[tuple[int, float]] = Field(default_factory=list)
    """(step, validation loss) at each evaluation, in order."""
    best_step: int | None = None
    """The step whose adapter was kept: the lowest validation loss (None: no slice, the last step's)."""
    stopped_early: bool = False
    """Whether training stopped before ``training.max_steps`` for want of improvement."""
    validation_examples: int = 0
    """Examples in the validation slice, carved out of those trained on (0: none)."""


class Verdict(_Part):
    """The promotion gate's decision (``training/gate.py``)."""

    promoted: bool
    reason: str
    anchor_tolerance: float
    compared_with: str = ""
    quality_tolerance: float | None = None
    """How far held-out exact match and token F1 may fall below the current's (None: not a rule yet then)."""
    canary_percent: int | None = None
    """For a candidate that passed: the share of queries it answered as the canary before a decision on live
    feedback (``training.canary_percent``); None or 0: promoted directly (and every version made before)."""


class PreferenceFigures(_Part):
    """The preference step after SFT (trl's ``KTOTrainer``, the SFT'd adapter as its reference)."""

    method: str
    steps: int
    desirable: int
    """Rows labelled good: thumbs-up answers and corrections."""
    undesirable: int
    """Rows labelled bad: thumbs-down answers and the answers a correction replaced."""
    seconds: float
    losses: list[tuple[int, float]] = Field(default_factory=list)


class Metrics(_Part):
    train: TrainFigures
    candidate: SideScores
    current: SideScores
    preference: PreferenceFigures | None = None
    """None: no preference step (too few rated-down answers, or before it existed)."""


class Split(_Part):
    seed: int
    held_out_percent: int


class CodeVersion(_Part):
    streamtune: str
    git: str | None = None
    training_sha256: str


class AdapterDigest(_Part):
    sha256: str


class Manifest(_Part):
    schema_version: Literal[1] = 1
    tenant: str
    version: str
    created_at: datetime
    base_model: BaseModelIdentity
    parent: ParentRef | None
    data: DataWindow
    split: Split
    training: dict[str, Any]
    """Every ``[training]`` setting, as the version was trained (``TrainingSettings`` fields)."""
    quantization: str
    libraries: dict[str, str]
    code: CodeVersion
    metrics: Metrics
    gate: Verdict
    adapter: AdapterDigest
    prompt: PromptFormat | None = None
    """The format the examples were rendered in, for training and the gate (serve's system prompt and context
    budget). None: versions trained on bare question/answer turns, before examples carried context."""

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read ``manifest.json`` (or a version directory holding one)."""
        file = path / "manifest.json" if path.is_dir() else path
        try:
            return cls.from_json(json.loads(file.read_text()), where=str(file))
        except (OSError, json.JSONDecodeError) as exc:
            raise ContractError(f"{file}: not a readable manifest: {exc}", error_class="InvalidManifest") from exc

    @classmethod
    def from_json(cls, data: Any, *, where: str = "manifest") -> Manifest:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                log.warning("%s: ignoring keys unknown to this version of streamtune: %s", where, ", ".join(unknown))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first["loc"])
            raise ContractError(f"{where}: {at}: {first['msg']}", error_class="InvalidManifest") from exc

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def summary(self) -> str:
        """One screen: what the version was trained on, how it scored, and why it was (not) promoted."""
        cand, curr = self.metrics.candidate, self.metrics.current
        ranges = ", ".join(f"p{p} [{a}, {b})" for p, (a, b) in sorted(self.data.ranges.items())) or "none"
        base = self.base_model
        pinned = next(iter(base.sha256.values()), None) if base.sha256 else base.revision
        lines = [
            f"{self.tenant} {self.version}  created {self.created_at:%Y-%m-%d %H:%M:%S %Z}",
            f"  base model   {base.setting} ({(pinned or 'unpinned')[:16]})",
            f"  parent       {f'{self.parent.version} ({self.parent.sha256[:16]})' if self.parent else 'none'}",
            f"  data         {self.data.topic}: {ranges}",
            f"               {self.data.new_examples} new (train {self.data.train}, held out {self.data.held_out}), "
            f"replay {self.data.replay}, excluded {len(self.data.excluded_example_ids)}",
            f"  training     {self.metrics.train.steps} steps, lr {self.training.get('learning_rate')}, "
            f"batch {self.training.get('batch_size')}, LoRA r {self.training.get('lora_r')}, {self.quantization}",
            f"               {self.metrics.train.tokens_per_second:.1f} tokens/s, "
            f"final loss {_num(self.metrics.train.final_loss)}{_kept(self.metrics.train)}",
            f"  held-out     loss {_num(cand.held_out.loss)} vs {_num(curr.held_out.loss)}, "
            f"EM {_num(cand.held_out.exact_match, 2)} vs {_num(curr.held_out.exact_match, 2)}, "
            f"F1 {_num(cand.held_out.token_f1, 2)} vs {_num(curr.held_out.token_f1, 2)} "
            f"({cand.held_out.examples} examples)",
            f"  anchor       loss {_num(cand.anchor.loss)} vs {_num(curr.anchor.loss)} "
            f"(tolerance +{self.gate.anchor_tolerance:.0%})",
            f"  gate         {'promoted' if self.gate.promoted else 'rejected'} against "
            f"{self.gate.compared_with or 'the base model'}: {self.gate.reason}",
            f"  weights      sha256 {self.adapter.sha256}",
            f"  code         streamtune {self.code.streamtune} git {(self.code.git or 'unknown')[:12]}; "
            + ", ".join(
                f"{k} {v}" for k, v in sorted(self.libraries.items()) if k in ("torch", "transformers", "peft")
            ),
        ]
        return "\n".join(lines)


def _kept(train: TrainFigures) -> str:
    """The early-stopping part of the summary's training line ("" without a validation slice)."""
    if train.best_step is None:
        return ""
    best = dict(train.eval_losses).get(train.best_step)
    early = ", stopped early" if train.stopped_early else ""
    return f", kept step {train.best_step} (validation loss {_num(best)}{early})"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"
