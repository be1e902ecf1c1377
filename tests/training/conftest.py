"""What the refresh tests on the real Kafka share (test_refresh, test_lineage, test_faults): their settings, and
the numbered training examples they publish.

Test modules do not import each other, nor this file (``--import-mode=importlib``, ``tests`` is no package), so
the two builders come as fixtures, under the names the tests call them by.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamtune.contracts import ChatMessage, ContextPassage, TrainingExample
from streamtune.kafka import create_topics, delete_topics, producer
from streamtune.settings import Settings, load_settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name


def training_example(
    tenant: str, i: int, relies_on: list[str] | None = None, *, context: list[ContextPassage] | None = None
) -> TrainingExample:
    """Example number ``i`` of ``tenant`` (``<tenant>-ex-<i>``): the refund question, answered "30 days.";
    ``relies_on``: the doc ids it relies on; ``context``: what it is meant to be answered with."""
    return TrainingExample(
        example_id=f"{tenant}-ex-{i}",
        tenant=tenant,
        messages=[
            ChatMessage(role="user", content=f"What is the refund window? ({i})"),
            ChatMessage(role="assistant", content="30 days."),
        ],
        source_event_id=f"e-{i}",
        context_doc_ids=relies_on,
        context=context,
    )


def publish_examples(
    settings: Settings,
    tenant: str,
    start: int,
    count: int,
    relies_on: dict[int, list[str]] | None = None,
    context: list[ContextPassage] | None = None,
) -> None:
    """Examples ``start`` .. ``start + count - 1`` of ``tenant`` onto ``training-examples``, flushed;
    ``relies_on``: example number -> doc ids."""
    client = producer(settings.kafka)
    for i in range(start, start + count):
        example = training_example(tenant, i, (relies_on or {}).get(i), context=context)
        client.produce(
            topic_name(TRAINING_EXAMPLES, settings.topics),
            key=example.example_id.encode(),
            value=TRAINING_EXAMPLES.encode(example),
        )
    assert client.flush(15) == 0


@pytest.fixture
def example() -> Callable[..., TrainingExample]:
    """``training_example``."""
    return training_example


@pytest.fixture
def publish() -> Callable[..., None]:
    """``publish_examples``."""
    return publish_examples


@pytest.fixture
def trainer_settings(stack: Settings, tiny_model: Path, tmp_path: Path) -> Iterator[Settings]:
    """Refreshes of the tiny model in a few seconds, on topics (and a Weaviate collection) of the test's own;
    the topics are deleted afterwards. The gate decides on any held-out slice (min_eval_examples 1: these tests
    are about the refresh's steps, on a few examples; the evidence rule has its own test)."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        config_files=[],
        topics={"prefix": f"tr-{tag}."},
        weaviate={"collection": f"Trainer{tag}"},
        models={"base_model": str(tiny_model)},
        training={
            "adapters_dir": tmp_path / "adapters",
            "max_steps": 12,
            "learning_rate": 5e-3,
            "batch_size": 4,
            "eval_max_new_tokens": 8,
            "torch_threads": 1,
            "replay_sample": 4,
            "metrics_port": 0,
            "min_eval_examples": 1,
            "canary_percent": 0,  # promoted directly: these tests are about the refresh (canaries: test_canary)
        },
    )
    create_topics(settings.kafka, settings.topics)
    yield settings
    delete_topics(settings.kafka, settings.topics)
