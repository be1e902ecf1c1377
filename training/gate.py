"""The promotion gate: a candidate adapter replaces the current one only if it is better on the held-out
slice of the new examples and does not forget the anchor set by more than ``training.anchor_tolerance``.

``decide`` is the rule, pure and tested without a model; ``score`` measures one side of the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from streamtune.contracts import TrainingExample
from streamtune.manifest import EvalScores, SideScores, Verdict
from streamtune.settings import Settings
from training.trainer import Candidate, EvalMetrics, evaluate, load_model

__all__ = ["decide", "score"]


def decide(candidate: SideScores, current: SideScores, tolerance: float, *, compared_with: str = "") -> Verdict:
    """Promote iff the candidate's held-out loss is below the current's and its anchor loss is at most the
    current's times ``1 + tolerance``. A NaN loss (nothing to score) never compares better."""
    cand_held, curr_held = candidate.held_out.loss, current.held_out.loss
    better = cand_held < curr_held
    limit = current.anchor.loss * (1 + tolerance)
    anchor_ok = candidate.anchor.loss <= limit
    if better and anchor_ok:
        reason = f"held-out loss {cand_held:.4f} < {curr_held:.4f} and anchor within tolerance"
    elif not better:
        reason = f"held-out loss {cand_held:.4f} is not below the current {curr_held:.4f}"
    else:
        reason = f"anchor loss {candidate.anchor.loss:.4f} exceeds {limit:.4f} (current +{tolerance:.0%})"
    return Verdict(
        promoted=better and anchor_ok, reason=reason, anchor_tolerance=tolerance, compared_with=compared_with
    )


def score(
    settings: Settings,
    candidate: Candidate,
    adapter: Path | None,
    held_out: Sequence[TrainingExample],
    anchor: Sequence[TrainingExample],
    label: str,
    say: Callable[[str], None] = print,
) -> SideScores:
    """Held-out and anchor scores of ``candidate``'s base model with ``adapter`` (None: the bare base model);
    ``label`` names the side in the line it says.

    Each side loads its own model, the candidate from its saved folder too: bitsandbytes repacks 4-bit
    weights at the first eval-mode forward, so a model that has been evaluated is not reused (trainer.py).
    """
    model = load_model(
        candidate.source, settings.training, quantize=candidate.quantize, adapter=adapter, trainable=False
    )
    tokens = settings.training.eval_max_new_tokens
    side = SideScores(
        held_out=_scores(evaluate(model, candidate.tokenizer, held_out, tokens)),
        anchor=_scores(evaluate(model, candidate.tokenizer, anchor, tokens)),
    )
    del model
    held, anchored = side.held_out, side.anchor
    say(
        f"    {label}: held-out loss {held.loss:.3f} EM {held.exact_match:.2f} "
        f"F1 {held.token_f1:.2f}; anchor loss {anchored.loss:.3f} F1 {anchored.token_f1:.2f}"
    )
    return side


def _scores(metrics: EvalMetrics) -> EvalScores:
    return EvalScores(
        loss=metrics.loss, exact_match=metrics.exact_match, token_f1=metrics.token_f1, examples=metrics.examples
    )
