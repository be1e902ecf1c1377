"""The local stack: Kafka (KRaft), Weaviate, an S3 server, the Flink Kafka connector and, on demand, a Flink
session cluster, real servers on 127.0.0.1. ``base`` says what a component is, one module per system
implements it, ``manager`` lists them in start order and runs them; ``flink_jobs`` is the cluster's job client."""

from streamtune.stack.manager import ComponentStatus, Stack

__all__ = ["ComponentStatus", "Stack"]
