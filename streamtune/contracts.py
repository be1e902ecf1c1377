"""The wire contract (DESIGN.md, "Wire contract"): versioned message models and strict decoding.

This is the public API. Change it only by adding optional fields or a new ``schema_version``.
Unknown extra fields are ignored so that newer producers keep working with older consumers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from streamtune.errors import ContractError
from streamtune.manifest import Manifest

__all__ = [
    "SCHEMA_VERSION",
    "AdapterUpdate",
    "Answer",
    "AnswerDelta",
    "AnswerError",
    "ChatMessage",
    "Citation",
    "ContextPassage",
    "DocumentDeleted",
    "DocumentUpserted",
    "DomainEvent",
    "FeedbackRecorded",
    "QaRecorded",
    "Query",
    "RefreshRequest",
    "RefreshResult",
    "TrainingExample",
    "Usage",
    "decode",
    "decode_event",
    "encode",
]

SCHEMA_VERSION: Literal[1] = 1
TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Ids are compared exactly everywhere, but Weaviate's field tokenization trims whitespace: ids that
# differed only by surrounding whitespace would share (and delete) each other's chunks. So an id may not
# start or end with whitespace, nor hold control characters; such events are refused with the reason.
# Limits of every text field (docs/contract.md); document text is limited by streams.max_text_chars.
MAX_ID_CHARS = 512
MAX_TITLE_CHARS = 1_000
MAX_SOURCE_CHARS = 256
MAX_QA_CHARS = 20_000
MAX_METADATA_BYTES = 16_384
MAX_CONTEXT_DOCS = 100
MAX_STOP_SEQUENCES = 4
Tenant = Annotated[str, Field(pattern=TENANT_PATTERN)]
NonEmpty = Annotated[str, Field(min_length=1)]
QaText = Annotated[str, Field(min_length=1, max_length=MAX_QA_CHARS)]


def _exact_id(value: str) -> str:
    if value != value.strip():
        raise ValueError("an id may not start or end with whitespace (it would collide with the trimmed id)")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("an id may not contain control characters")
    return value


Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_exact_id)]


def _metadata_fits(value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON, over the limit of {MAX_METADATA_BYTES}")
    return value


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class DocumentUpsertedData(_Data):
    doc_id: Identifier
    text: NonEmpty
    title: Annotated[str, Field(max_length=MAX_TITLE_CHARS)] | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_metadata_fits)] = Field(default_factory=dict)


class DocumentDeletedData(_Data):
    doc_id: Identifier


class QaRecordedData(_Data):
    question: QaText
    answer: QaText
    context_doc_ids: Annotated[list[Identifier], Field(max_length=MAX_CONTEXT_DOCS)] | None = None


class FeedbackRecordedData(_Data):
    query_id: Identifier
    rating: Literal[1, -1]
    question: QaText
    answer: QaText
    correction: Annotated[str, Field(max_length=MAX_QA_CHARS)] | None = None


class _Event(_Message):
    event_id: Identifier
    tenant: Tenant = "default"
    occurred_at: datetime
    """A timestamp without a timezone is read as UTC (Weaviate, and every consumer, need one)."""
    source: Annotated[str, Field(max_length=MAX_SOURCE_CHARS)] | None = None

    @field_validator("occurred_at")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    @property
    def key(self) -> str:
        """The contract's message key: ``<tenant>:<doc_id>`` for documents, else ``event_id``."""
        doc_id = getattr(self.data, "doc_id", None)  # type: ignore[attr-defined]
        return f"{self.tenant}:{doc_id}" if doc_id is not None else self.event_id


class DocumentUpserted(_Event):
    type: Literal["document.upserted"]
    data: DocumentUpsertedData


class DocumentDeleted(_Event):
    type: Literal["document.deleted"]
    data: DocumentDeletedData


class QaRecorded(_Event):
    type: Literal["qa.recorded"]
    data: QaRecordedData


class FeedbackRecorded(_Event):
    type: Literal["feedback.recorded"]
    data: FeedbackRecordedData


DomainEvent = Annotated[DocumentUpserted | DocumentDeleted | QaRecorded | FeedbackRecorded, Field(discriminator="type")]
EVENT_TYPES = ("document.upserted", "document.deleted", "qa.recorded", "feedback.recorded")


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ContextPassage(BaseModel):
    """One retrieved chunk, as the index held it (scrubbed) when the example was recorded."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    doc_id: Identifier
    chunk_id: NonEmpty
    title: str = ""
    text: str
    similarity: float | None = None
    """Cosine similarity of the chunk to the question (``retrieval.min_similarity`` filters on it when the
    example is rendered). None: recorded before hits carried it (such a passage is always rendered)."""


class TrainingExample(_Message):
    example_id: Identifier
    tenant: Tenant = "default"
    messages: list[ChatMessage] = Field(min_length=2)
    source_event_id: Identifier
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    context_doc_ids: list[Identifier] | None = None
    """Documents the example relies on (optional; a deleted document's examples are left out of training)."""
    context: Annotated[list[ContextPassage], Field(max_length=MAX_CONTEXT_DOCS)] | None = None
    """The retrieved context the answer is meant to be given with, as it was when the example was recorded, in
    rank order. Training renders it into the prompt exactly as ``serve`` renders its retrieval (``prompt.py``);
    stored here, not looked up again, so that replaying the topic trains on the same bytes. None: recorded
    before examples carried context (rendered like an empty retrieval)."""
    kind: Literal["demonstration", "preference", "rating"] | None = None
    """What the example teaches. ``demonstration`` (or None, every example before kinds existed): the last
    assistant turn is an answer to learn (supervised fine-tuning). ``preference``: a rated-down answer with the
    user's correction, the last assistant turn being the correction (chosen) and ``rejected`` the served answer.
    ``rating``: an answer as it was served, rated by ``label``. Only demonstrations are trained on by SFT, held
    out for the gate or replayed; the other two feed the preference step (``training.trainer.prefer``)."""
    rejected: Annotated[str, Field(min_length=1, max_length=MAX_QA_CHARS)] | None = None
    """For ``preference``: the answer that was served and rated down."""
    label: bool | None = None
    """Thumbs up (True) or down (False) from a rating: set on ``rating`` examples, and on the demonstrations that
    positive feedback makes (so the preference step sees them as desirable too)."""


class Query(_Message):
    query_id: Identifier
    tenant: Tenant = "default"
    question: NonEmpty
    top_k: int | None = Field(None, ge=1, le=100)
    adapter: str | None = None
    deadline: datetime | None = None
    """When the asker stops waiting (with a timezone; the gateway sets it from ``http.answer_timeout_s``): a
    query whose deadline has passed before its generation starts is answered with ``deadline_exceeded``,
    without generating."""
    stream: bool = False
    """Publish the answer's text on ``answer-deltas`` as it is generated (the final answer is unchanged)."""
    max_tokens: int | None = Field(None, ge=1)
    """At most this many answer tokens (capped by ``inference.max_new_tokens``; ``finish_reason`` ``length``
    when cut). None: ``inference.max_new_tokens``."""
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    """Up to four sequences that end the answer where one first appears; the sequence is not part of the text."""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    """Sampling temperature; None or 0: greedy decoding (the same text every time)."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """Nucleus sampling: sample among the most likely tokens whose probabilities add up to ``top_p``."""
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    """Seed of the row's own random generator when sampling: the same seed, prompt and adapter give the same
    text, whatever else shares the batch."""


class Citation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    doc_id: str
    chunk_id: str
    score: float
    """The hybrid rank score (Weaviate's fusion: relative to this query's result list)."""
    similarity: float | None = None
    """Cosine similarity of the chunk to the question: absolute, comparable across queries; only chunks at or
    above ``retrieval.min_similarity`` are cited."""


class Usage(BaseModel):
    """Tokens of the prompt as the model saw it (system message, context and question) and of the answer."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class AnswerError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    code: str
    message: str


class Answer(_Message):
    query_id: str
    tenant: str = "default"
    answer: str = ""
    citations: list[Citation] = Field(default_factory=list)
    adapter_version: str | None = None
    model: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: AnswerError | None = None
    arm: Literal["canary", "incumbent"] | None = None
    """Which arm of the tenant's running canary answered (``streamtune.rollout``); None: no canary was running,
    or the query pinned its version (a pin is no evidence about either arm)."""
    usage: Usage | None = None
    """Token counts (None: no generation, e.g. an error answer)."""
    finish_reason: Literal["stop", "length"] | None = None
    """``stop``: the model ended its answer or a stop sequence ended it; ``length``: cut at the token budget
    (None: no generation)."""
    grounded: bool | None = None
    """True: the answer was given with retrieved context that passed ``retrieval.min_similarity`` (its
    citations). False: nothing passed, so the answer abstains or was generated without context
    (``inference.no_context``) and cites nothing. None: an error answer, or a producer from before."""
    pieces: int = Field(default=0, ge=0)
    """How many pieces of a streamed answer ``serve`` published on ``answer-deltas`` before this answer (0: none,
    or not streamed). The two topics are read apart, so the answer can overtake its last pieces; a reader holds
    it briefly until they have come (``inference.routing``)."""


class AnswerDelta(_Message):
    """A piece of an answer's text as it is generated, on ``answer-deltas`` (a query with ``stream``). The
    pieces of one query, in ``seq`` order, concatenate to its answer's text; the ``answers`` record stays the
    answer of record (a delta lost in an outage is not re-sent)."""

    query_id: str
    tenant: str = "default"
    seq: int = Field(ge=0)
    text: str


class AdapterUpdate(_Message):
    tenant: Tenant
    version: Identifier
    uri: str
    base_model: str
    manifest: Manifest
    state: Literal["current", "canary", "rolled_back"] | None = None
    """What the version becomes (``streamtune.rollout``): ``current`` serves the tenant; ``canary`` serves
    ``canary_percent`` of its queries beside the current one; ``rolled_back`` ends that canary (or, for the
    version that was current, is followed by the announcement of the one that is current again). None: an
    announcement from before canaries, which means ``current``."""
    canary_percent: int | None = Field(None, ge=0, le=100)
    """For ``state = "canary"``: the share of the tenant's queries it answers."""


class RefreshRequest(_Message):
    """A tenant is due for an adapter refresh (``train watch`` decided it, with ``training.distribute = "kafka"``),
    on ``refresh-requests``, keyed by the tenant: the partition of the key, hence one ``train worker`` of the group
    at a time, owns the tenant. Delivered at least once: a worker that dies mid-refresh leaves it to another."""

    request_id: Identifier
    tenant: Tenant
    requested_at: datetime
    up_to: dict[int, int] = Field(default_factory=dict)
    """Per partition of ``training-examples``, the committed end offset the decision counted up to. A version
    whose manifest's ranges reach every one of them already served the request: a repeated request (redelivered
    after a worker died, or asked again) is skipped instead of training a second version on the same examples."""
    pending: int = Field(0, ge=0)
    """New examples the decision counted (for logs and operators)."""
    reason: str = ""
    """Why the tenant is due: enough examples, waited long enough, or its questions drifted."""


class RefreshResult(_Message):
    """What became of a refresh request, on ``refresh-results``, keyed by the tenant; written by the worker that
    ran it before it commits the request's offset. Every request gets one (a repeated one may get two: the
    second says that the version was already built)."""

    request_id: str
    """The request's id; for a record that is no valid request, ``<topic>[<partition>]@<offset>``."""
    tenant: str
    """The request's tenant; for an invalid record, its key as text (it may be no valid tenant)."""
    status: Literal["promoted", "canary", "rejected", "skipped", "failed", "invalid"]
    """``promoted``, ``canary``, ``rejected``: a version was published with that status; ``skipped``: none
    (too few examples or too little evidence, a canary on trial, or the version was already built: ``version``
    names it); ``failed``: the refresh raised (``reason`` says what; the watcher asks again after its backoff);
    ``invalid``: the record is no valid request (``reason`` says why)."""
    reason: str
    version: str | None = None
    worker: str
    """``<host>:<pid>`` of the worker that ran it."""
    finished_at: datetime
    seconds: float = Field(ge=0)
    """How long the refresh took."""


_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(DomainEvent)
M = TypeVar("M", bound=BaseModel)


def encode(message: BaseModel) -> bytes:
    """Serialize a contract message to UTF-8 JSON bytes."""
    return message.model_dump_json().encode("utf-8")


def _precheck(raw: bytes, max_bytes: int | None) -> dict[str, Any]:
    if max_bytes is not None and len(raw) > max_bytes:
        raise ContractError(
            f"payload is {len(raw)} bytes, over the limit of {max_bytes}", error_class="PayloadTooLarge"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"payload is not UTF-8: {exc}", error_class="NotUtf8") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"payload is not JSON: {exc}", error_class="MalformedJson") from exc
    if not isinstance(value, dict):
        raise ContractError(
            f"payload is a JSON {type(value).__name__}, expected an object", error_class="InvalidMessage"
        )
    version = value.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ContractError(
            f"schema_version is {version!r}; this consumer understands {SCHEMA_VERSION}",
            error_class="UnsupportedSchemaVersion",
        )
    return value


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_event(
    raw: bytes, *, max_bytes: int | None = None
) -> DocumentUpserted | DocumentDeleted | QaRecorded | FeedbackRecorded:
    """Decode one ``domain-events`` value, or raise ContractError with the precise reason."""
    value = _precheck(raw, max_bytes)
    kind = value.get("type")
    if kind not in EVENT_TYPES:
        raise ContractError(
            f"unknown event type {kind!r}; expected one of {', '.join(EVENT_TYPES)}", error_class="UnknownEventType"
        )
    try:
        # JSON mode keeps strict typing ("1" is not 1) while accepting ISO-8601 timestamps.
        return _EVENT_ADAPTER.validate_json(raw, strict=True)
    except ValidationError as exc:
        raise ContractError(_reason(exc), error_class="InvalidEvent") from exc


def decode(raw: bytes, model: type[M], *, max_bytes: int | None = None) -> M:
    """Decode a contract message of the given type, or raise ContractError with the precise reason."""
    _precheck(raw, max_bytes)
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise ContractError(_reason(exc), error_class=f"Invalid{model.__name__}") from exc
