"""Early stopping in the refresh's training: a validation slice carved out of what is trained on (never the
gate's held-out examples), a validation loss every ``eval_steps``, a stop after ``patience`` of them without
improvement, and the best step's adapter kept; the manifest, the model card and ``loss.png`` say so, and a
manifest written before any of this still loads and replays without a slice."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.harness import sample_manifest
from streamtune.manifest import EvalScores, Manifest, SideScores, TrainFigures
from streamtune.settings import Settings, TrainingSettings, load_settings
from training.data import NewExamples, TrainingData, Window, split
from training.gate import decide
from training.manifest import build_manifest, recorded_training
from training.modelcard import model_card
from training.publish import _loss_curve, write_version
from training.registry import AdapterRegistry, Version
from training.trainer import ADAPTER_WEIGHTS, Candidate, train, train_candidate, validation_slice


def _example(i: int) -> TrainingExample:
    return TrainingExample(
        example_id=f"ex-{i}",
        tenant="acme",
        source_event_id=f"ev-{i}",
        messages=[
            ChatMessage(role="user", content=f"What is the refund window of order {i}?"),
            ChatMessage(role="assistant", content=f"{i + 20} days from purchase."),
        ],
    )


# -- the slice: out of the training split, by example id ---------------------------------------------------


def test_the_validation_slice_comes_out_of_the_training_split_never_the_held_out_examples() -> None:
    settings = TrainingSettings(validation_percent=10)
    examples = [_example(i) for i in range(300)]
    trained, held_out = split(examples, settings.held_out_percent, settings.seed)  # as the refresh splits

    kept, validation = validation_slice(trained, settings)

    held_ids = {e.example_id for e in held_out}
    slice_ids = {e.example_id for e in validation}
    assert slice_ids and not slice_ids & held_ids
    assert sorted(e.example_id for e in kept + validation) == sorted(e.example_id for e in trained)
    assert 0.04 < len(validation) / len(trained) < 0.2  # about 10%
    # by example id: the same slice whatever the order the examples come in
    shuffled = list(trained)
    random.Random(7).shuffle(shuffled)
    assert {e.example_id for e in validation_slice(shuffled, settings)[1]} == slice_ids
    # ranked independently of the held-out split (by the same rank, every slice would lie inside the held-out ids)
    assert not {e.example_id for e in validation_slice(examples, settings)[1]} <= held_ids
    # 0: nothing set aside, today's behaviour
    assert validation_slice(trained, settings.model_copy(update={"validation_percent": 0})) == (trained, [])


@pytest.mark.slow
def test_too_few_rows_for_a_slice_train_on_every_example_and_say_why(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    said: list[str] = []
    settings = TrainingSettings(
        max_steps=2, batch_size=2, learning_rate=5e-3, validation_percent=50, quantize_4bit=False, bf16_on_cpu=False
    )
    _, result = train(
        str(tiny_model),
        AutoTokenizer.from_pretrained(tiny_model),
        [_example(0), _example(1)],  # one would be left to train on
        settings,
        quantize=False,
        parent=None,
        work_dir=tmp_path / "work",
        say=said.append,
    )
    assert any("no validation slice" in line for line in said)
    assert (result.validation, result.eval_losses, result.best_step, result.stopped_early) == (0, [], None, False)
    assert result.steps == 2
    assert not list((tmp_path / "work").glob("checkpoint-*"))  # no evaluation, no checkpoints


# -- a run that stops early, published as a refresh publishes it --------------------------------------------


@dataclass(frozen=True)
class Stopped:
    settings: Settings
    candidate: Candidate
    version: Version
    work: Path


@pytest.fixture(scope="module")
def stopped(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Stopped:
    """The tiny model trained at a learning rate it cannot bear, evaluated every step with patience 1: its
    validation loss rises within a few steps, long before ``max_steps``."""
    root = tmp_path_factory.mktemp("early-stopping")
    settings = load_settings(
        config_files=[],
        models={"base_model": str(tiny_model)},
        training={
            "adapters_dir": root / "adapters",
            "max_steps": 20,
            "batch_size": 2,
            "learning_rate": 5e-2,
            "torch_threads": 1,
            "quantize_4bit": False,
            "bf16_on_cpu": False,
            "validation_percent": 25,
            "eval_steps": 1,
            "patience": 1,
        },
    )
    examples = [_example(i) for i in range(14)]
    trained, held_out = examples[:12], examples[12:]
    candidate = train_candidate(settings, trained, None, root / "work", say=lambda _: None)
    scores = SideScores(
        held_out=EvalScores(loss=1.0, exact_match=0.0, token_f1=0.5, examples=len(held_out)),
        anchor=EvalScores(loss=2.0, exact_match=0.0, token_f1=0.2, examples=8),
    )
    registry = AdapterRegistry(settings.adapters_dir, "acme")
    manifest = build_manifest(
        settings,
        tenant="acme",
        version=registry.next_name(),
        parent=None,
        data=TrainingData(Window({0: (0, 14)}, {0: (0, 0)}), NewExamples(examples, [], 0, 0), trained, held_out, []),
        candidate=candidate,
        scores=(scores, scores),
        verdict=decide(scores, scores, 0.05, quality_tolerance=0.05, compared_with="base model"),
    )
    return Stopped(settings, candidate, write_version(registry, manifest, candidate), root / "work")


@pytest.mark.slow
def test_training_stops_once_the_validation_loss_stops_improving(stopped: Stopped) -> None:
    result = stopped.candidate.result
    assert result.stopped_early and result.steps < stopped.settings.training.max_steps
    assert result.validation == len(validation_slice([_example(i) for i in range(12)], stopped.settings.training)[1])
    # every step evaluated (eval_steps 1), and stopped at the first that did not improve (patience 1)
    assert [step for step, _ in result.eval_losses] == list(range(1, result.steps + 1))
    losses = [loss for _, loss in result.eval_losses]
    assert losses[-1] >= losses[-2] and losses[:-1] == sorted(losses[:-1], reverse=True)
    # the best step is the lowest validation loss, and training went on past it
    assert result.best_step == min(result.eval_losses, key=lambda sl: sl[1])[0]
    assert result.best_step is not None and result.best_step < result.steps


@pytest.mark.slow
def test_the_saved_adapter_is_the_best_steps_checkpoint(stopped: Stopped) -> None:
    from safetensors.torch import load_file

    best = stopped.candidate.result.best_step
    saved = load_file(str(stopped.candidate.adapter_dir / ADAPTER_WEIGHTS))
    checkpoint = load_file(str(stopped.work / "trainer" / f"checkpoint-{best}" / ADAPTER_WEIGHTS))
    assert saved.keys() == checkpoint.keys() and saved
    # bit for bit: training went on after this step, so only the reload of the best checkpoint gives these
    assert all(saved[name].equal(checkpoint[name]) for name in saved)
    published = stopped.version.path / ADAPTER_WEIGHTS
    assert published.read_bytes() == (stopped.candidate.adapter_dir / ADAPTER_WEIGHTS).read_bytes()


@pytest.mark.slow
def test_the_manifest_card_and_curve_show_the_validation_curve_and_the_kept_step(
    stopped: Stopped, tmp_path: Path
) -> None:
    result, path = stopped.candidate.result, stopped.version.path
    manifest = Manifest.load(path)
    assert manifest == stopped.version.manifest
    figures = manifest.metrics.train
    assert figures.eval_losses == result.eval_losses and figures.best_step == result.best_step
    assert figures.stopped_early and figures.validation_examples == result.validation
    # a replay trains with the slice, the patience and the steps it was trained with
    recorded = recorded_training(manifest)
    assert (recorded.validation_percent, recorded.eval_steps, recorded.patience) == (25, 1, 1)

    assert f"kept step {result.best_step} (validation loss" in manifest.summary()
    card = (path / "README.md").read_text()
    assert f"Stopped early at step {result.steps}; kept the adapter of step {result.best_step}" in card
    assert f"final validation loss {result.eval_losses[-1][1]:.4f}" in card

    curve = (path / "loss.png").read_bytes()
    assert curve.startswith(b"\x89PNG")
    _loss_curve(result.losses, tmp_path / "training-only.png", f"acme {manifest.version}")
    assert (tmp_path / "training-only.png").read_bytes() != curve  # the validation series and the kept step drawn


# -- manifests from before early stopping -------------------------------------------------------------------


def test_a_manifest_without_the_early_stopping_fields_loads_and_replays_without_a_slice() -> None:
    old = json.loads(sample_manifest("acme", "v0001").to_json())
    for key in ("eval_losses", "best_step", "stopped_early", "validation_examples"):
        del old["metrics"]["train"][key]
    for key in ("validation_percent", "eval_steps", "patience"):
        del old["training"][key]

    manifest = Manifest.from_json(old)

    assert manifest.metrics.train == TrainFigures(
        steps=4, tokens=100, seconds=1.0, tokens_per_second=100.0, final_loss=0.9
    )
    assert recorded_training(manifest).validation_percent == 0  # trained without a slice: replayed so
    assert "kept step" not in manifest.summary() and "Early stopping" not in model_card(manifest)


def test_the_early_stopping_figures_round_trip_through_json() -> None:
    train = TrainFigures(
        steps=7,
        tokens=900,
        seconds=2.5,
        tokens_per_second=360.0,
        final_loss=1.5,
        eval_losses=[(2, 3.25), (4, 3.0), (6, 3.5)],
        best_step=4,
        stopped_early=True,
        validation_examples=3,
    )
    manifest = sample_manifest("acme", "v0002", metrics={"train": train})
    again = Manifest.from_json(json.loads(manifest.to_json()))
    assert again == manifest and again.metrics.train.eval_losses == [(2, 3.25), (4, 3.0), (6, 3.5)]
    assert "kept step 4 (validation loss 3.0000, stopped early)" in again.summary()
    assert "kept the adapter of step 4 (validation loss 3.0000)" in model_card(again)
