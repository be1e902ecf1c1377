"""The preference step (trl's KTOTrainer after SFT) on the rated-down answers that feedback becomes: the rows it
trains on, and a refresh on the real Kafka with the tiny model that records them and replays byte-identically."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.harness import publish_examples
from streamtune.kafka import producer
from streamtune.prompt import PromptFormat
from streamtune.settings import InferenceSettings, Settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name
from training.refresh import refresh, replay
from training.trainer import preference_rows


def rated(tenant: str, i: int, kind: str, *, label: bool | None = None) -> TrainingExample:
    """A rated-down answer (``kind`` rating or preference) or a thumbs-up demonstration (kind None)."""
    return TrainingExample(
        example_id=f"{tenant}-fb-{i}",
        tenant=tenant,
        messages=[
            ChatMessage(role="user", content=f"How long is the warranty? ({i})"),
            ChatMessage(role="assistant", content="Two years." if kind == "preference" else "Ten days."),
        ],
        source_event_id=f"fb-{i}",
        kind=None if kind == "demonstration" else kind,  # type: ignore[arg-type]
        rejected="Ten days." if kind == "preference" else None,
        label=label,
    )


def test_corrections_ratings_and_thumbs_up_become_labelled_rows(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    form = PromptFormat.of(Settings(inference=InferenceSettings(context_tokens=64)))
    examples = [
        rated("acme", 0, "preference"),
        rated("acme", 1, "rating", label=False),
        rated("acme", 2, "demonstration", label=True),
        rated("acme", 3, "demonstration"),  # an SFT example without a rating: not a preference row
    ]
    rows = preference_rows(examples, form, tokenizer, 256)
    shaped = [(r["completion"][-1]["content"], r["label"]) for r in rows]
    assert shaped == [("Two years.", True), ("Ten days.", False), ("Ten days.", False), ("Ten days.", True)]
    # the prompt is serve's: its system message first, the question last
    assert rows[0]["prompt"][0]["role"] == "system" and "(0)" in rows[0]["prompt"][-1]["content"]
    assert rows[0]["prompt"] == rows[1]["prompt"]  # a correction and the answer it replaced share the prompt


def _publish(settings: Settings, examples: list[TrainingExample]) -> None:
    client = producer(settings.kafka)
    for example in examples:
        client.produce(
            topic_name(TRAINING_EXAMPLES, settings.topics),
            key=example.example_id.encode(),
            value=TRAINING_EXAMPLES.encode(example),
        )
    assert client.flush(15) == 0


@pytest.mark.integration
@pytest.mark.slow
def test_a_refresh_learns_from_feedback_once_there_is_enough_and_replays_byte_identically(
    trainer_settings: Settings,
) -> None:
    settings = trainer_settings.model_copy(
        update={
            "training": trainer_settings.training.model_copy(
                update={"min_preference_examples": 4, "preference_steps": 3, "validation_percent": 0}
            )
        }
    )
    publish_examples(settings, "acme", 0, 10)
    _publish(settings, [rated("acme", 0, "preference"), rated("acme", 1, "rating", label=False)])
    first = refresh(settings, "acme", say=lambda _: None)
    assert first.manifest is not None and first.status == "promoted", first.reason
    # two rated-down answers, fewer than four: not trained on, pending for the next refresh
    assert first.manifest.metrics.preference is None and first.manifest.data.preference_offsets == []
    assert len(first.manifest.data.preference_pending) == 2

    publish_examples(settings, "acme", 100, 10)
    more = [
        rated("acme", 2, "preference"),
        rated("acme", 3, "rating", label=False),
        rated("acme", 4, "rating", label=True),
    ]
    _publish(settings, more)
    lines: list[str] = []
    second = refresh(settings, "acme", say=lines.append)
    manifest = second.manifest
    assert manifest is not None, second.reason
    data = manifest.data
    # the two pending ones first, then the window's three, in the order trained
    assert len(data.preference_offsets) == 5 and data.preference_offsets[:2] == first.manifest.data.preference_pending
    assert data.preference_pending == []
    figures = manifest.metrics.preference
    assert figures is not None and figures.method == "kto" and figures.steps == 3
    # rows: 2 corrections x (good + bad), 2 thumbs down, 1 thumbs up among the ratings
    assert (figures.desirable, figures.undesirable) == (3, 4)
    assert data.new_examples == 10  # rated-down answers are never SFT examples, held out or replayed
    assert "    preference step (KTO): 3 steps on 3 desirable + 4 undesirable rows" in lines
    # its progress is said as SFT's is (here only the last step: 3 steps, said every 5)
    assert sum(line.startswith("    step 3/3  loss ") for line in lines) == 1
    assert any(line.startswith("    preference step (KTO) done: 3 steps, loss ") for line in lines)
    assert replay(settings, "acme", second.version or "", say=lambda _: None).identical
