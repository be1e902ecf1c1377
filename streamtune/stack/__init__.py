"""The local stack: Kafka (KRaft), Weaviate and the Flink Kafka connector, real servers on 127.0.0.1."""

from streamtune.stack.manager import ComponentStatus, Stack

__all__ = ["ComponentStatus", "Stack"]
