"""The promotion gate: a candidate adapter replaces the current one only if, on enough held-out evidence, its
loss is lower, its exact match and token F1 are no worse than the current's by more than a tolerance, and it
does not forget the anchor set by more than ``training.anchor_tolerance``.

``gather_evidence`` decides what is scored, and whether that is enough to decide at all: the new held-out
slice, topped up with the tenant's most recent earlier held-out examples, must hold at least the minimum
number of examples, or there is no decision (the refresh is skipped and its examples wait for more).
``decide`` is the rule, pure and tested without a model; ``score`` measures one side of the comparison, in
the format ``serve`` prompts in (the candidate's ``PromptFormat``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamtune.contracts import TrainingExample
from streamtune.manifest import EvalEvidence, EvalScores, SideScores, Verdict
from streamtune.settings import Settings
from training.trainer import Candidate, EvalMetrics, evaluate, load_model

__all__ = ["Evidence", "decide", "gather_evidence", "score"]


@dataclass(frozen=True)
class Evidence:
    """The examples the gate scores both sides on, and what the manifest records of them."""

    examples: list[TrainingExample]
    record: EvalEvidence

    @property
    def enough(self) -> bool:
        return len(self.examples) >= self.record.minimum

    @property
    def shortfall(self) -> str:
        """Why there is no decision, when there is not ``enough``."""
        return f"too little evidence ({len(self.examples)} held-out examples, minimum {self.record.minimum})"


def gather_evidence(
    held_out: Sequence[TrainingExample],
    earlier_held_out: Sequence[TrainingExample],
    minimum: int,
    *,
    unusable: Callable[[Sequence[TrainingExample]], Collection[str]] | None = None,
) -> Evidence:
    """The new held-out slice, plus, while it is smaller than ``minimum``, the most recent of the tenant's
    earlier held-out examples (by ``created_at``, then id: a fixed order, whatever order they were read in),
    less those ``unusable`` names (ids; the refresh's: relying on a since deleted document). It is asked only
    about the examples that would be added, so a large history costs nothing when the new slice suffices.

    Recent ones first because they describe the business as it is now; an earlier example's answer may have
    been superseded since.
    """
    needed = max(minimum - len(held_out), 0)
    ranked = sorted(earlier_held_out, key=lambda e: (e.created_at, e.example_id), reverse=True)
    earlier: list[TrainingExample] = []
    while ranked and len(earlier) < needed:
        batch, ranked = ranked[: needed - len(earlier)], ranked[needed - len(earlier) :]
        dropped = set(unusable(batch)) if unusable is not None else set()
        earlier += [e for e in batch if e.example_id not in dropped]
    record = EvalEvidence(
        minimum=minimum,
        new_held_out=len(held_out),
        earlier_held_out=len(earlier),
        earlier_example_ids=[e.example_id for e in earlier],
    )
    return Evidence([*held_out, *earlier], record)


def decide(
    candidate: SideScores,
    current: SideScores,
    tolerance: float,
    *,
    quality_tolerance: float,
    compared_with: str = "",
) -> Verdict:
    """Promote iff, on the held-out evidence, the candidate's loss is below the current's and its exact match
    and token F1 are at least the current's minus ``quality_tolerance``, and its anchor loss is at most the
    current's times ``1 + tolerance``. Checked in that order; the reason names the first rule that fails.
    A NaN (nothing could be measured) never passes a rule."""
    cand, curr = candidate.held_out, current.held_out
    limit = current.anchor.loss * (1 + tolerance)
    failure: str | None = None
    if not cand.loss < curr.loss:
        failure = f"held-out loss {cand.loss:.4f} is not below the current {curr.loss:.4f}"
    failure = failure or _fell("exact match", cand.exact_match, curr.exact_match, quality_tolerance)
    failure = failure or _fell("token F1", cand.token_f1, curr.token_f1, quality_tolerance)
    if not failure and not candidate.anchor.loss <= limit:
        failure = f"anchor loss {candidate.anchor.loss:.4f} exceeds {limit:.4f} (current +{tolerance:.0%})"
    reason = failure or (
        f"held-out loss {cand.loss:.4f} < {curr.loss:.4f}, exact match {cand.exact_match:.2f} "
        f"(current {curr.exact_match:.2f}), token F1 {cand.token_f1:.2f} (current {curr.token_f1:.2f}) on "
        f"{cand.examples} examples, and anchor within tolerance"
    )
    return Verdict(
        promoted=failure is None,
        reason=reason,
        anchor_tolerance=tolerance,
        compared_with=compared_with,
        quality_tolerance=quality_tolerance,
    )


def _fell(name: str, candidate: float, current: float, tolerance: float) -> str | None:
    """Why ``candidate`` fails the held-out ``name`` rule, or None when it passes."""
    if math.isnan(candidate) or math.isnan(current):
        return f"held-out {name} could not be measured (candidate {candidate}, current {current})"
    if candidate >= current - tolerance:
        return None
    return f"held-out {name} {candidate:.4f} is more than {tolerance:.2f} below the current {current:.4f}"


def score(
    settings: Settings,
    candidate: Candidate,
    adapter: Path | None,
    held_out: Sequence[TrainingExample],
    anchor: Sequence[TrainingExample],
    label: str,
    say: Callable[[str], None] = print,
) -> SideScores:
    """Held-out and anchor scores of ``candidate``'s base model with ``adapter`` (None: the bare base model),
    with the examples rendered in the candidate's prompt format; ``label`` names the side in the line it says.

    Each side loads its own model, the candidate from its saved folder too: bitsandbytes repacks 4-bit
    weights at the first eval-mode forward, so a model that has been evaluated is not reused (trainer.py).
    """
    model = load_model(
        candidate.source, settings.training, quantize=candidate.quantize, adapter=adapter, trainable=False
    )
    tokens = settings.training.eval_max_new_tokens
    form = candidate.prompt
    side = SideScores(
        held_out=_scores(evaluate(model, candidate.tokenizer, held_out, tokens, prompt=form)),
        anchor=_scores(evaluate(model, candidate.tokenizer, anchor, tokens, prompt=form)),
    )
    del model
    held, anchored = side.held_out, side.anchor
    say(
        f"    {label}: held-out loss {held.loss:.3f} EM {held.exact_match:.2f} "
        f"F1 {held.token_f1:.2f} ({held.examples} examples); anchor loss {anchored.loss:.3f} "
        f"F1 {anchored.token_f1:.2f}"
    )
    return side


def _scores(metrics: EvalMetrics) -> EvalScores:
    return EvalScores(
        loss=metrics.loss, exact_match=metrics.exact_match, token_f1=metrics.token_f1, examples=metrics.examples
    )
