from __future__ import annotations

from streamtune.settings import TopicSettings
from streamtune.topics import ALL_TOPICS, DOMAIN_EVENTS, DOMAIN_EVENTS_DLQ, TRAINING_EXAMPLES, topic_name


def test_contract_topic_names_are_declared_once() -> None:
    names = [spec.name for spec in ALL_TOPICS]
    assert names == [
        "domain-events",
        "domain-events.dlq",
        "training-examples",
        "queries",
        "answers",
        "answer-deltas",
        "adapter-updates",
        "refresh-requests",
        "refresh-results",
    ]
    assert len(set(names)) == len(names)


def test_prefix_applies_and_partitions_follow_settings() -> None:
    settings = TopicSettings(prefix="t1-", partitions=4)
    assert topic_name(DOMAIN_EVENTS, settings) == "t1-domain-events"
    assert DOMAIN_EVENTS.partitions(settings) == 4
    assert DOMAIN_EVENTS_DLQ.partitions(settings) == 1


def test_replayable_topics_keep_data_forever() -> None:
    # An adapter is rebuilt from recorded offsets of training-examples: they must never expire.
    assert TRAINING_EXAMPLES.config["retention.ms"] == "-1"
