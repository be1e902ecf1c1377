"""What the refresh tests on the real Kafka share (test_refresh, test_lineage, test_faults): their settings.

The numbered training examples they publish are the harness's (``streamtune.harness.training_example`` and
``publish_examples``), imported where they are used.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtune.kafka import create_topics, delete_topics
from streamtune.settings import Settings, load_settings


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
