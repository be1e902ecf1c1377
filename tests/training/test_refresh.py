"""The refresh job on the real Kafka (and Weaviate), with the tiny model: quality is not the subject here."""

from __future__ import annotations

import logging
import math

import pytest

from streamtune.contracts import AdapterUpdate, ContextPassage
from streamtune.harness import publish_examples
from streamtune.kafka import committed_end_offsets, producer, read_range
from streamtune.manifest import EvalEvidence, Manifest
from streamtune.prompt import PromptFormat
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, TRAINING_EXAMPLES, topic_name
from training.refresh import RefreshOutcome, refresh, replay
from training.registry import AdapterRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def publish_raw(settings: Settings, key: bytes, value: bytes) -> None:
    client = producer(settings.kafka)
    client.produce(topic_name(TRAINING_EXAMPLES, settings.topics), key=key, value=value)
    assert client.flush(15) == 0


def announcements(settings: Settings) -> list[AdapterUpdate]:
    """Everything on adapter-updates, decoded as serve decodes it."""
    topic = topic_name(ADAPTER_UPDATES, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    return [
        ADAPTER_UPDATES.decode(m.value())
        for m in read_range(settings.kafka, topic, {p: (0, e) for p, e in ends.items()})
    ]


def published(outcome: RefreshOutcome) -> Manifest:
    assert outcome.manifest is not None, (outcome.status, outcome.reason)
    return outcome.manifest


def test_refresh_promotes_records_exact_offsets_and_replays_byte_identically(trainer_settings: Settings) -> None:
    settings = trainer_settings
    publish_examples(settings, "acme", 0, 16)
    publish_examples(settings, "other", 0, 5)  # another tenant's examples are not trained on
    publish_examples(settings, "acme", 3, 1)  # a producer's retry: the example is trained on once
    publish_raw(settings, b"junk", b"not a training example")  # a foreign producer's record is skipped
    lines: list[str] = []
    first = refresh(settings, "acme", say=lines.append)
    assert first.status == "promoted", first.reason
    ends = committed_end_offsets(settings.kafka, topic_name(TRAINING_EXAMPLES, settings.topics))
    manifest = published(first)
    assert manifest.data.ranges == {p: (0, end) for p, end in ends.items()}
    assert manifest.data.new_examples == 16
    assert manifest.data.train + manifest.data.held_out == 16
    assert manifest.quantization.startswith("nf4")
    assert manifest.base_model.sha256  # the base weights are pinned by hash
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes"} <= set(manifest.libraries)
    assert any("step 12/12" in line for line in lines)  # progress was shown
    assert any("16 new examples" in line and "(1 invalid record skipped, 1 duplicate id)" in line for line in lines)

    version = AdapterRegistry(settings.adapters_dir, "acme").get("v0001")
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json", "loss.png"} <= {
        p.name for p in version.path.iterdir()
    }
    assert version.manifest == manifest  # what was written reads back as what refresh returned
    announced = announcements(settings)
    assert [(a.tenant, a.version) for a in announced] == [("acme", "v0001")]
    assert announced[0].manifest.adapter.sha256 == manifest.adapter.sha256
    assert announced[0].uri == version.path.resolve().as_uri()

    outcome = replay(settings, "acme", "v0001", say=lambda _: None)
    assert outcome.identical, (outcome.recorded_sha256, outcome.replayed_sha256)

    assert refresh(settings, "acme", say=lambda _: None).status == "skipped"  # nothing new

    # New examples: the next candidate continues from v0001 and reads only the new offsets.
    publish_examples(settings, "acme", 16, 8)
    second = published(refresh(settings, "acme", say=lambda _: None))
    assert second.parent is not None and second.parent.version == "v0001"
    assert second.parent.sha256 == manifest.adapter.sha256
    assert second.data.new_examples == 8
    assert second.data.replay == 4  # sampled from the earlier range
    later = committed_end_offsets(settings.kafka, topic_name(TRAINING_EXAMPLES, settings.topics))
    assert second.data.ranges == {p: (ends[p], later[p]) for p in later}
    assert second.data.replay_ranges == {p: (0, ends[p]) for p in later}


def test_the_gate_rejects_a_worse_candidate_and_keeps_it(trainer_settings: Settings) -> None:
    settings = trainer_settings
    publish_examples(settings, "acme", 0, 12)
    assert refresh(settings, "acme", say=lambda _: None).status == "promoted"
    publish_examples(settings, "acme", 12, 12)
    # A learning rate this large wrecks the adapter: the held-out loss rises, and the gate must say no.
    wrecked = settings.model_copy(update={"training": settings.training.model_copy(update={"learning_rate": 5.0})})
    outcome = refresh(wrecked, "acme", say=lambda _: None)
    assert outcome.status == "rejected", outcome.reason
    registry = AdapterRegistry(settings.adapters_dir, "acme")
    assert registry.current().name == "v0001"  # type: ignore[union-attr]
    rejected = registry.get("v0002")
    assert rejected.status == "rejected"
    assert rejected.manifest.metrics.candidate.held_out.loss > 0
    assert not rejected.manifest.gate.promoted and rejected.manifest.gate.reason == outcome.reason
    assert rejected.manifest.gate.compared_with == "v0001"
    assert [a.version for a in announcements(settings)] == ["v0001"]  # a rejected one is never announced


def test_too_few_examples_is_skipped(trainer_settings: Settings) -> None:
    publish_examples(trainer_settings, "lonely", 0, 1)
    outcome = refresh(trainer_settings, "lonely", say=lambda _: None)
    assert outcome.status == "skipped" and "fewer than 2" in outcome.reason


def test_watch_refreshes_on_count_and_on_time(trainer_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from training.watch import watch

    caplog.set_level(logging.INFO, logger="training.watch")
    by_count = trainer_settings.model_copy(
        update={"training": trainer_settings.training.model_copy(update={"watch_min_examples": 6, "watch_minutes": 60})}
    )
    publish_examples(by_count, "acme", 0, 6)
    watch(by_count, poll_s=0.2, max_refreshes=1)
    lines = caplog.messages
    assert any("acme: 6 new examples; refreshing" in line for line in lines)
    assert any("step 12/12" in line for line in lines)  # the refresh's progress goes to the log too
    assert AdapterRegistry(by_count.adapters_dir, "acme").current() is not None

    # Fewer than the count, but the time limit passes: a refresh all the same, on the new examples only.
    by_time = trainer_settings.model_copy(
        update={
            "training": trainer_settings.training.model_copy(update={"watch_min_examples": 100, "watch_minutes": 0.01})
        }
    )
    publish_examples(by_time, "acme", 6, 3)
    caplog.clear()
    watch(by_time, poll_s=0.2, max_refreshes=1)
    lines = caplog.messages
    assert any("acme: 3 new examples; refreshing" in line for line in lines), lines
    assert len(AdapterRegistry(by_time.adapters_dir, "acme").versions()) == 2


def test_plain_lora_when_4bit_is_off_and_the_manifest_says_so(trainer_settings: Settings) -> None:
    plain = trainer_settings.model_copy(
        update={"training": trainer_settings.training.model_copy(update={"quantize_4bit": False})}
    )
    publish_examples(plain, "acme", 0, 8)
    lines: list[str] = []
    manifest = published(refresh(plain, "acme", say=lines.append))
    assert manifest.quantization == "none (disabled by setting)"
    assert any("training plain LoRA" in line for line in lines)
    anchor = manifest.metrics.candidate.anchor  # the anchor set is scored on all three measures
    assert math.isfinite(anchor.loss) and 0 <= anchor.exact_match <= 1 and 0 <= anchor.token_f1 <= 1
    assert anchor.examples >= 5


def test_examples_relying_on_deleted_documents_are_left_out_recorded_and_replayed(trainer_settings: Settings) -> None:
    settings = trainer_settings.model_copy(
        update={"training": trainer_settings.training.model_copy(update={"max_steps": 2})}
    )
    publish_examples(settings, "acme", 0, 8, relies_on={1: ["doc-gone"], 4: ["doc-kept", "doc-gone"], 6: ["doc-kept"]})
    asked: list[tuple[str, set[str]]] = []

    def missing_docs(tenant: str, doc_ids: set[str]) -> set[str]:
        asked.append((tenant, set(doc_ids)))
        return doc_ids & {"doc-gone"}

    lines: list[str] = []
    manifest = published(refresh(settings, "acme", missing_docs=missing_docs, say=lines.append))
    assert asked == [("acme", {"doc-gone", "doc-kept"})]
    assert sorted(manifest.data.excluded_example_ids) == ["acme-ex-1", "acme-ex-4"]
    assert manifest.data.new_examples == 6
    assert manifest.data.train + manifest.data.held_out == 6
    assert any("excluded (deleted docs) 2" in line for line in lines)

    # Replay asks nobody: it leaves out exactly the recorded ids, and the weights come out the same.
    outcome = replay(settings, "acme", manifest.version, say=lambda _: None)
    assert outcome.identical, (outcome.recorded_sha256, outcome.replayed_sha256)
    assert len(asked) == 1


POLICY = [
    ContextPassage(
        doc_id="refund-policy",
        chunk_id="refund-policy#0",
        title="Refund policy",
        text="Refunds are accepted within thirty days of purchase.",
    ),
    ContextPassage(doc_id="shipping", chunk_id="shipping#0", title="", text="Orders ship from Lisbon."),
]


def test_examples_with_context_are_gated_on_enough_evidence_recorded_and_replayed(
    trainer_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = trainer_settings.model_copy(
        update={"training": trainer_settings.training.model_copy(update={"min_eval_examples": 3})}
    )
    # which acme-ex-<i> the split holds out (hash of the id, seed 42, 20 %): 8, 13, 17, 20, 23, 28 below 30
    publish_examples(settings, "acme", 0, 10, context=POLICY)  # one held out (8)
    lines: list[str] = []
    outcome = refresh(settings, "acme", say=lines.append)
    assert (outcome.status, outcome.reason) == ("skipped", "too little evidence (1 held-out examples, minimum 3)")
    assert outcome.version is None and AdapterRegistry(settings.adapters_dir, "acme").versions() == []

    publish_examples(settings, "acme", 10, 14, context=POLICY)  # the skipped ten are new again: 5 held out of 24
    first = published(refresh(settings, "acme", say=lambda _: None))
    assert first.data.new_examples == 24 and first.data.held_out == 5
    assert first.data.evaluation == EvalEvidence(minimum=3, new_held_out=5, earlier_held_out=0)
    assert first.metrics.candidate.held_out.examples == 5
    assert first.prompt == PromptFormat.of(settings)  # trained and gated as serve prompts
    assert first.data.replay_excludes_held_out and first.gate.quality_tolerance == settings.training.quality_tolerance

    # one held out (28): topped up with the newest earlier two
    publish_examples(settings, "acme", 24, 6, context=POLICY)
    lines.clear()
    second = published(refresh(settings, "acme", say=lines.append))
    assert second.data.new_examples == 6 and second.data.held_out == 1
    assert second.data.evaluation == EvalEvidence(
        minimum=3, new_held_out=1, earlier_held_out=2, earlier_example_ids=["acme-ex-23", "acme-ex-20"]
    )
    assert second.metrics.candidate.held_out.examples == second.metrics.current.held_out.examples == 3
    assert any("the gate scores 1 new + 2 earlier held-out examples" in line for line in lines)
    assert second.data.replay == 4  # from the earlier examples the split did not hold out

    # Replay renders the stored context in the recorded format, whatever the settings say now.
    changed = settings.model_copy(
        update={"inference": settings.inference.model_copy(update={"system_prompt": "Something else entirely."})}
    )
    replayed = replay(changed, "acme", second.version, say=lambda _: None)
    assert replayed.identical, (replayed.recorded_sha256, replayed.replayed_sha256)
