"""Question drift in serve: the figures on /metrics, the reason while no test can run, and the reference read
from the topic offsets of the current adapter's manifest (the test itself: tests/streamtune/test_drift.py)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inference.question_drift import QuestionDrift
from streamtune.contracts import ChatMessage, TrainingExample, encode
from streamtune.harness import sample_manifest, wait_for
from streamtune.kafka import create_topics, delete_topics, producer
from streamtune.settings import DriftConfig, Settings, load_settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name

SMALL = DriftConfig(window=40, every=10, min_window=20, min_reference=20, permutations=200, significance=0.01)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _gaussian(rng: np.random.Generator, rows: int, shift: float = 0.0) -> list[list[float]]:
    return (rng.standard_normal((rows, 8)) + shift).tolist()  # type: ignore[no-any-return]


def _small(kept: Path) -> DriftConfig:
    return replace(SMALL, kept_dir=kept)


def test_figures_per_tenant_and_the_reason_while_none_can_be_tested(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    drift = QuestionDrift(Settings(drift=_small(tmp_path)), registry, embed=lambda texts: [])
    rng = np.random.default_rng(3)
    for vector in _gaussian(rng, 40):  # the first full window becomes acme's reference
        drift.observe("acme", vector)
    assert _value(registry, "streamtune_question_drift_untested", tenant="acme", reason="no reference yet") is None
    readings = [drift.observe("acme", v) for v in _gaussian(rng, 40, shift=1.5)]  # another subject
    assert any(r is not None and r.drifted for r in readings)
    untested = next(m for m in registry.collect() if m.name == "streamtune_question_drift_untested").samples
    assert [s.labels for s in untested if s.labels["tenant"] == "acme"] == []  # tested: no reason left
    p_value = _value(registry, "streamtune_question_drift_p_value", tenant="acme")
    assert p_value is not None and p_value < 0.01
    assert (_value(registry, "streamtune_question_drift_statistic", tenant="acme") or 0) > 0
    assert _value(registry, "streamtune_question_drift_window", tenant="acme") == 40

    for vector in _gaussian(rng, 10):  # beta: too few questions for anything
        drift.observe("beta", vector)
    drift.observe("beta", None)  # an empty question: skipped, no exception
    assert math.isnan(_value(registry, "streamtune_question_drift_p_value", tenant="beta") or 0.0)
    assert _value(registry, "streamtune_question_drift_untested", tenant="beta", reason="no reference yet") == 1


def test_each_test_runs_on_one_blas_thread_and_answering_keeps_its_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The test runs in serve's loop: numpy's BLAS is limited to one thread while it runs, and only then."""
    from threadpoolctl import threadpool_info

    import streamtune.drift as drift_module

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen: list[set[int]] = []
    test = drift_module.mmd_test
    monkeypatch.setattr(drift_module, "mmd_test", lambda *a, **k: (seen.append(blas_threads()), test(*a, **k))[1])
    before = blas_threads()
    drift = QuestionDrift(Settings(drift=_small(tmp_path)), CollectorRegistry(), embed=lambda texts: [])
    rng = np.random.default_rng(5)
    for vector in _gaussian(rng, 80):  # a first window (the reference), then tests
        drift.observe("acme", vector)
    assert len(seen) >= 2 and all(threads == {1} for threads in seen), seen
    assert blas_threads() == before


@pytest.mark.fault
def test_a_first_window_reference_outlives_a_restart_so_a_drift_under_way_still_shows(tmp_path: Path) -> None:
    """Restarted in the middle of a change of subject, serve compares the new questions with the reference it
    had, not with its next window (which is already the new subject and would hide the drift for good)."""
    rng = np.random.default_rng(11)
    settings = Settings(drift=_small(tmp_path))
    before = QuestionDrift(settings, CollectorRegistry(), embed=lambda texts: [])
    for vector in _gaussian(rng, 40):  # the first window: acme's usual questions become its reference
        before.observe("acme", vector)
    usual = before.tracker.reference("acme")
    assert usual is not None and (tmp_path / "default" / "acme.npz").exists()

    registry = CollectorRegistry()
    after = QuestionDrift(settings, registry, embed=lambda texts: [])  # the restart: windows empty
    readings = [after.observe("acme", v) for v in _gaussian(rng, 40, shift=1.5)]  # the new subject
    assert after.tracker.reading("acme").reference_source == "first window, kept from before a restart"
    assert np.array_equal(after.tracker.reference("acme"), usual)
    assert any(r is not None and r.drifted for r in readings)
    p_value = _value(registry, "streamtune_question_drift_p_value", tenant="acme")
    assert p_value is not None and p_value < 0.01

    # without the kept file, the same questions are taken as the reference and nothing ever shows
    (tmp_path / "default" / "acme.npz").unlink()
    forgetful = QuestionDrift(settings, CollectorRegistry(), embed=lambda texts: [])
    readings = [forgetful.observe("acme", v) for v in _gaussian(rng, 80, shift=1.5)]
    assert forgetful.tracker.reading("acme").reference_source == "first window"
    assert not any(r is not None and r.drifted for r in readings)


def test_a_kept_reference_of_another_embedder_or_a_torn_file_is_ignored(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    settings = Settings(drift=_small(tmp_path))
    kept = tmp_path / "default"
    kept.mkdir()
    np.savez(kept / "acme.npz", reference=np.asarray(_gaussian(rng, 40)), model=np.array("another-embedder"))
    (kept / "beta.npz").write_bytes(b"torn")
    drift = QuestionDrift(settings, CollectorRegistry(), embed=lambda texts: [])
    drift.observe("acme", _gaussian(rng, 1)[0])
    drift.observe("beta", _gaussian(rng, 1)[0])
    assert drift.tracker.reference("acme") is None and drift.tracker.reference("beta") is None


def _example(tenant: str, i: int, question: str) -> TrainingExample:
    return TrainingExample(
        example_id=f"{tenant}-{i}",
        tenant=tenant,
        source_event_id=f"e-{tenant}-{i}",
        messages=[ChatMessage(role="user", content=question), ChatMessage(role="assistant", content="Yes.")],
    )


@pytest.fixture
def examples(stack: Settings, tmp_path: Path) -> Iterator[tuple[Settings, str]]:
    """Settings on topics of their own (removed after), and their ``training-examples`` topic."""
    settings = load_settings(
        config_files=[], topics={"prefix": f"drift-{uuid.uuid4().hex[:8]}."}, drift=_small(tmp_path)
    )
    create_topics(settings.kafka, settings.topics)
    try:
        yield settings, topic_name(TRAINING_EXAMPLES, settings.topics)
    finally:
        delete_topics(settings.kafka, settings.topics)


def _publish_questions(settings: Settings, topic: str, tenants: Sequence[str], count: int = 24) -> None:
    """``count`` demonstrations per tenant on partition 0, interleaved: "<tenant> question <i>?"."""
    out = producer(settings.kafka)
    for i in range(count):
        for tenant in tenants:
            example = _example(tenant, i, f"{tenant} question {i}?")
            out.produce(topic, partition=0, key=tenant.encode(), value=encode(example))
    assert out.flush(15) == 0


@pytest.mark.integration
def test_the_reference_is_what_the_current_adapter_was_trained_on(examples: tuple[Settings, str]) -> None:
    settings, topic = examples
    _publish_questions(settings, topic, ["acme", "beta"])
    embedded: list[str] = []

    def embed(texts: Sequence[str]) -> list[list[float]]:
        embedded.extend(texts)
        return [[float(len(t)), float(i), 1.0] for i, t in enumerate(texts)]

    drift = QuestionDrift(settings, CollectorRegistry(), embed)
    manifest = sample_manifest("acme", "v0001", data={"topic": topic, "ranges": {0: (0, 48)}})
    drift.reference_from("acme", manifest)

    def loaded() -> bool:
        drift.observe("acme", [1.0, 2.0, 3.0])  # references are taken on serve's thread, between questions
        return drift.tracker.reading("acme").reference_source == "v0001 training questions"

    wait_for(loaded, 60, "acme's reference")
    assert drift.tracker.reading("acme").reference == 24  # acme's questions only, every one
    assert sorted(embedded) == sorted(f"acme question {i}?" for i in range(24))


def _recording_embedder() -> tuple[list[list[str]], Callable[[Sequence[str]], list[list[float]]]]:
    """(the texts of each embedding call, an embedder that records them and returns one 3-d vector per text)."""
    calls: list[list[str]] = []

    def embed(texts: Sequence[str]) -> list[list[float]]:
        calls.append(list(texts))
        return [[float(i), 0.0, 1.0] for i, _ in enumerate(texts)]

    return calls, embed


@pytest.mark.integration
@pytest.mark.parametrize(("embed_batch", "calls"), [(512, [48]), (20, [24, 24])])
def test_many_tenants_references_are_read_in_one_pass_and_embedded_together(
    examples: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch, embed_batch: int, calls: list[int]
) -> None:
    """At start-up every tenant asks at once: one read of the ranges' union, the questions embedded across tenants
    ``EMBED_BATCH`` at a time, and still each tenant's own questions from its own range only."""
    import inference.question_drift
    import streamtune.kafka

    monkeypatch.setattr(inference.question_drift, "EMBED_BATCH", embed_batch)

    settings, topic = examples
    _publish_questions(settings, topic, ["acme", "beta", "gamma"])  # acme at offsets 0, 3, 6 ..., beta 1, 4, ...
    reads: list[dict[int, tuple[int, int]]] = []
    real_read = streamtune.kafka.read_range

    def counted(kafka: Any, topic: str, ranges: dict[int, tuple[int, int]], *args: Any) -> Any:
        reads.append(dict(ranges))
        return real_read(kafka, topic, ranges, *args)

    monkeypatch.setattr(streamtune.kafka, "read_range", counted)
    embedded, embed = _recording_embedder()
    drift = QuestionDrift(settings, CollectorRegistry(), embed)
    wanted = {
        "acme": sample_manifest("acme", "v0001", data={"topic": topic, "ranges": {0: (0, 36)}}),
        "beta": sample_manifest("beta", "v0003", data={"topic": topic, "ranges": {0: (36, 72)}}),
        "gamma": sample_manifest("gamma", "v0002", data={"topic": topic, "ranges": {0: (0, 72)}}),
        "delta": sample_manifest("delta", "v0001", data={"topic": topic, "ranges": {0: (0, 72)}}),  # none of its own
    }
    references = {tenant: (len(vectors), error) for tenant, _, vectors, error in drift._references(wanted)}
    assert reads == [{0: (0, 72)}]
    assert references == {"acme": (12, None), "beta": (12, None), "gamma": (24, None), "delta": (0, None)}
    assert [len(call) for call in embedded] == calls
    every = [question for call in embedded for question in call]
    assert every[:12] == [f"acme question {i}?" for i in range(12)]
    assert every[12:24] == [f"beta question {i}?" for i in range(12, 24)]
    assert every[24:] == [f"gamma question {i}?" for i in range(24)]


@pytest.mark.integration
@pytest.mark.fault
def test_a_topic_that_cannot_be_read_fails_only_its_tenants_references_each_once(
    examples: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One read serves every tenant of a topic, so a failed read fails all of them, once each, and only them: a
    tenant whose versions were trained on another topic still gets its reference."""
    import streamtune.kafka
    from streamtune.errors import KafkaUnavailableError

    settings, topic = examples
    _publish_questions(settings, topic, ["acme"])
    real_read = streamtune.kafka.read_range

    def failing(kafka: Any, name: str, ranges: dict[int, tuple[int, int]], *args: Any) -> Any:
        if name == "unreadable":
            raise KafkaUnavailableError("cannot read unreadable from 127.0.0.1:9092: broker down")
        return real_read(kafka, name, ranges, *args)

    monkeypatch.setattr(streamtune.kafka, "read_range", failing)
    embedded, embed = _recording_embedder()
    drift = QuestionDrift(settings, CollectorRegistry(), embed)
    wanted = {
        "acme": sample_manifest("acme", "v0001", data={"topic": topic, "ranges": {0: (0, 24)}}),
        "beta": sample_manifest("beta", "v0001", data={"topic": "unreadable", "ranges": {0: (0, 24)}}),
        "gamma": sample_manifest("gamma", "v0002", data={"topic": "unreadable", "ranges": {0: (5, 9)}}),
    }
    results = [(tenant, len(vectors), type(error).__name__) for tenant, _, vectors, error in drift._references(wanted)]
    assert sorted(results) == [
        ("acme", 24, "NoneType"),
        ("beta", 0, "KafkaUnavailableError"),
        ("gamma", 0, "KafkaUnavailableError"),
    ]
    assert [len(call) for call in embedded] == [24]


@pytest.mark.integration
@pytest.mark.fault
def test_a_reference_that_cannot_be_embedded_leaves_the_first_window_and_the_next_one_loads(
    examples: tuple[Settings, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings, topic = examples
    _publish_questions(settings, topic, ["acme"])
    calls: list[int] = []

    def embed(texts: Sequence[str]) -> list[list[float]]:
        calls.append(len(texts))
        if len(calls) == 1:
            raise RuntimeError("the embedder ran out of memory")
        return [[float(len(t)), float(i), 1.0] for i, t in enumerate(texts)]

    registry = CollectorRegistry()
    drift = QuestionDrift(settings, registry, embed)
    drift.reference_from("acme", sample_manifest("acme", "v0001", data={"topic": topic, "ranges": {0: (0, 24)}}))
    wait_for(lambda: "could not read the questions acme v0001" in caplog.text, 60, "the failure logged")
    rng = np.random.default_rng(5)
    for vector in _gaussian(rng, 40):  # serve goes on: the first window becomes the reference meanwhile
        drift.observe("acme", vector[:3])
    assert drift.tracker.reading("acme").reference_source == "first window"
    assert _value(registry, "streamtune_question_drift_untested", tenant="acme", reason="no reference yet") is None

    drift.reference_from("acme", sample_manifest("acme", "v0002", data={"topic": topic, "ranges": {0: (0, 24)}}))

    def loaded() -> bool:
        drift.observe("acme", [1.0, 2.0, 3.0])
        return drift.tracker.reading("acme").reference_source == "v0002 training questions"

    wait_for(loaded, 60, "the next version's reference")  # the background thread outlived the failure
    assert calls == [24, 24]
    assert drift.tracker.reading("acme").reference == 24
