"""Bring your own data: OpenAI chat JSONL in, and the examples a version was trained on back out as the same JSONL.

Import (``streamtune examples import``) checks every line the way OpenAI's data preparation does, and
refuses a line with exactly one error class and a message that says where and why (``ERROR_CLASSES``); a
refused line is never published, and every other line is. Valid lines become ``qa.recorded`` events on
``domain-events``, so they take the same path as every recorded answer: the ingest job scrubs PII, derives
the example id, and stores the context the question retrieves. Nothing is written to ``training-examples``
directly.

What maps, and what is refused (``qa.recorded`` carries one question and its answer, and ``serve`` is asked
one question at a time):

- ``[system*, user, assistant]`` is one exchange. Leading system messages are accepted but not carried
  (warning ``system_dropped``): training prompts with ``serve``'s system prompt and the retrieved context,
  exactly as ``serve`` will, so a system message of the file would never be trained on anyway.
- More than one user/assistant exchange, a system message after the first user turn, or two turns of the
  same role in a row is refused as ``unsupported_turns``: keeping only the last exchange would silently
  train on an answer out of its conversation.
- "Too long" is measured as the trainer measures it (``streamtune.prompt.conversation``): the example
  through the base model's chat template with serve's system prompt and an empty context, in tokens of the
  base model's tokenizer, against ``training.max_length``. Retrieved context is cut to fit at training
  time; the question and answer are not, so an example over the limit even without context would have its
  answer truncated. The tokenizer is loaded only for this check (``token_counter``); the rest of the import
  needs neither torch nor transformers.

Event ids are a hash of the tenant and the exchange, so importing a file twice (or a line twice) yields the
same example ids, which training reads once. Export (``streamtune examples export``) reads the version's
recorded offsets of ``training-examples`` through ``training.data.read_recorded`` and the split its manifest
records, so the lines are exactly the new examples the version was made from (replayed earlier examples are
other versions' windows: export those versions).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from streamtune.contracts import (
    MAX_SOURCE_CHARS,
    QaRecorded,
    QaRecordedData,
    TrainingExample,
    encode,
)
from streamtune.errors import ConfigError, ContractError, KafkaUnavailableError
from streamtune.kafka import producer
from streamtune.prompt import PromptFormat, conversation, token_codec
from streamtune.settings import Settings
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name
from training.data import read_recorded, split
from training.registry import RegistryError, open_registry

__all__ = [
    "ERROR_CLASSES",
    "Exchange",
    "Exported",
    "ImportReport",
    "LineProblem",
    "Split",
    "check_lines",
    "event_id",
    "example_line",
    "export_version",
    "import_jsonl",
    "parse_line",
    "publish",
    "qa_events",
    "token_counter",
]

ERROR_CLASSES: dict[str, str] = {
    "invalid_json": "the line is not UTF-8 JSON",
    "not_an_object": "the line is JSON but not an object (OpenAI: data_type)",
    "missing_messages": "no `messages`, or it is not a non-empty list (OpenAI: missing_messages_list)",
    "invalid_message": "a message is not an object, or its `weight` is not 0 or 1",
    "unrecognized_key": "a message has a key besides role, content, name, weight (OpenAI: message_unrecognized_key)",
    "unknown_role": "a message's role is missing or not system, user or assistant (OpenAI: unrecognized_role)",
    "missing_content": "a message's content is missing, null, empty or not text (OpenAI: missing_content)",
    "no_assistant_last": (
        "the last message is not an assistant turn to train on (OpenAI: example_missing_assistant_message)"
    ),
    "unsupported_turns": "not one exchange: [system*, user, assistant] is what qa.recorded carries",
    "contract_refused": "the exchange breaks the wire contract's limits (docs/contract.md)",
    "too_long": "over training.max_length tokens as the trainer renders it, before any context",
}
"""Every class a line can be refused with, and what it means (each refused line has exactly one)."""

WARNING_CLASSES: dict[str, str] = {
    "system_dropped": "system messages are not carried: training uses serve's system prompt and retrieved context",
    "duplicate": "the same exchange as an earlier line: published once",
}

_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight"})
_ROLES = ("system", "user", "assistant")

TokenCount = Callable[[str, str], int]
"""Tokens of (question, answer) as the trainer renders them, without context."""


@dataclass(frozen=True)
class LineProblem:
    line: int
    """1-based line number in the file."""
    error_class: str
    message: str


@dataclass(frozen=True)
class Exchange:
    """A valid line: one question and its answer."""

    line: int
    question: str
    answer: str
    system_dropped: bool = False


@dataclass
class ImportReport:
    """What became of every line of a file: valid exchanges, refused lines, warnings, and what was published."""

    source: str
    lines: int = 0
    """Non-blank lines read."""
    blank: int = 0
    valid: list[Exchange] = field(default_factory=list)
    """Valid lines, duplicates included, in file order."""
    refused: list[LineProblem] = field(default_factory=list)
    warnings: list[LineProblem] = field(default_factory=list)
    published: int = 0
    """``qa.recorded`` events published (distinct exchanges); 0 on a dry run."""

    @property
    def unique(self) -> list[Exchange]:
        """The valid exchanges, each once (first line wins), in file order: what is published."""
        seen: set[tuple[str, str]] = set()
        out = []
        for exchange in self.valid:
            if (exchange.question, exchange.answer) not in seen:
                seen.add((exchange.question, exchange.answer))
                out.append(exchange)
        return out

    def counts(self) -> Counter[str]:
        """Refused lines per error class."""
        return Counter(p.error_class for p in self.refused)

    def render(self, *, topic: str, tenant: str, dry_run: bool = False) -> str:
        """The report a person reads: one summary line, each refused line and warning, counts per class."""
        duplicates = len(self.valid) - len(self.unique)
        dup = f" ({duplicates} duplicate{'s' if duplicates != 1 else ''} published once)" if duplicates else ""
        fate = (
            f"dry run: nothing published ({len(self.unique)} events would go to {topic})"
            if dry_run
            else f"{self.published} qa.recorded events published to {topic} for tenant {tenant}"
        )
        blank = f" ({self.blank} blank skipped)" if self.blank else ""
        out = [
            f"{self.source}: {self.lines} lines{blank}, {len(self.valid)} valid{dup}, "
            f"{len(self.refused)} refused; {fate}"
        ]
        for title, problems in (("refused", self.refused), ("warnings", self.warnings)):
            if problems:
                out.append(f"{title}:")
                out.extend(f"  line {p.line:<6} {p.error_class:<18} {p.message}" for p in problems)
        if self.refused:
            by_class = ", ".join(f"{name} {n}" for name, n in sorted(self.counts().items()))
            out.append(f"refused by class: {by_class}")
        return "\n".join(out)


def _refuse(line: int, error_class: str, message: str) -> LineProblem:
    assert error_class in ERROR_CLASSES, error_class
    return LineProblem(line, error_class, message)


def _content(value: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of text parts joined; None when it has no text."""
    if isinstance(value, str):
        return value if value.strip() else None
    text_parts = isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    )
    if text_parts and value:
        text = "".join(p["text"] for p in value)
        return text if text.strip() else None
    return None


def parse_line(raw: bytes | str, line: int) -> Exchange | LineProblem:
    """One line of OpenAI chat JSONL as an exchange, or the first problem found (order: JSON, shape, each
    message, the turns as a whole, the contract). Pure; the token length is checked by ``check_lines``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        return _refuse(line, "invalid_json", f"not UTF-8 at byte {exc.start}")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return _refuse(line, "invalid_json", f"{exc.msg} at column {exc.colno}")
    if not isinstance(row, dict):
        return _refuse(line, "not_an_object", f"a JSON {type(row).__name__}, expected an object with `messages`")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        what = "no `messages` key" if "messages" not in row else f"`messages` is {json.dumps(messages)[:40]}"
        return _refuse(line, "missing_messages", f"{what}; expected a non-empty list of messages")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return _refuse(line, "invalid_message", f"{where} is a JSON {type(message).__name__}, expected an object")
        unknown = sorted(set(message) - _MESSAGE_KEYS)
        if unknown:
            return _refuse(line, "unrecognized_key", f"{where} has {', '.join(map(repr, unknown))}")
        role = message.get("role")
        if role not in _ROLES:
            what = "has no role" if role is None else f"role is {json.dumps(role)}"
            return _refuse(line, "unknown_role", f"{where} {what}; expected one of {', '.join(_ROLES)}")
        if "weight" in message and message["weight"] not in (0, 1):
            return _refuse(
                line, "invalid_message", f"{where}.weight is {json.dumps(message['weight'])}; expected 0 or 1"
            )
        content = _content(message.get("content"))
        if content is None:
            shown = json.dumps(message.get("content"))[:40] if "content" in message else "missing"
            return _refuse(line, "missing_content", f"{where} ({role}) has no text content ({shown})")
        turns.append((role, content))
    if turns[-1][0] != "assistant":
        return _refuse(line, "no_assistant_last", f"the last message is {turns[-1][0]}, expected assistant")
    if messages[-1].get("weight") == 0:
        return _refuse(line, "no_assistant_last", "the last assistant message has weight 0: nothing to train on")
    leading = 0
    while turns[leading][0] == "system":
        leading += 1
    exchange = [role for role, _ in turns[leading:]]
    if exchange != ["user", "assistant"]:
        return _refuse(
            line,
            "unsupported_turns",
            f"turns {' → '.join(role for role, _ in turns)}: one question and its answer is what qa.recorded "
            "carries (split a multi-turn conversation into its exchanges)",
        )
    question, answer = turns[leading][1], turns[leading + 1][1]
    try:
        QaRecordedData(question=question, answer=answer)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _refuse(line, "contract_refused", f"{where}: {first['msg']}")
    return Exchange(line, question, answer, system_dropped=leading > 0)


def _physical_lines(data: bytes) -> list[bytes]:
    # Split on LF only: JSON strings may hold U+2028 and friends, which str.splitlines() would split on.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.removesuffix(b"\r") for line in lines]


def check_lines(
    lines: Iterable[bytes | str],
    *,
    source: str = "<lines>",
    count_tokens: TokenCount | None = None,
    max_length: int | None = None,
) -> ImportReport:
    """Check every line (numbered from 1; blank lines are skipped and counted). With ``count_tokens`` and
    ``max_length``, a valid exchange longer than ``max_length`` tokens is refused as ``too_long``."""
    report = ImportReport(source)
    first_line: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            report.blank += 1
            continue
        report.lines += 1
        parsed = parse_line(raw, number)
        if isinstance(parsed, Exchange) and count_tokens is not None and max_length is not None:
            tokens = count_tokens(parsed.question, parsed.answer)
            if tokens > max_length:
                parsed = _refuse(
                    number,
                    "too_long",
                    f"{tokens} tokens as the trainer renders it (serve's system prompt, no context), over "
                    f"training.max_length={max_length}",
                )
        if isinstance(parsed, LineProblem):
            report.refused.append(parsed)
            continue
        report.valid.append(parsed)
        if parsed.system_dropped:
            report.warnings.append(LineProblem(number, "system_dropped", WARNING_CLASSES["system_dropped"]))
        key = (parsed.question, parsed.answer)
        if key in first_line:
            report.warnings.append(LineProblem(number, "duplicate", f"the same exchange as line {first_line[key]}"))
        else:
            first_line[key] = number
    return report


def token_counter(settings: Settings) -> TokenCount:
    """Tokens of an exchange as the trainer counts them against ``training.max_length``: through the base
    model's chat template with serve's prompt format and no context (``streamtune.prompt.conversation``).
    Loads the base model's tokenizer (transformers) once, here and only here."""
    from transformers import AutoTokenizer

    from streamtune.models import base_model_source

    tokenizer = AutoTokenizer.from_pretrained(base_model_source(settings))
    form = PromptFormat.of(settings)
    encode_text, _ = token_codec(tokenizer)

    def count(question: str, answer: str) -> int:
        prompt, completion = conversation(tokenizer, form, question, [], answer)
        return len(encode_text(str(tokenizer.apply_chat_template(prompt + completion, tokenize=False))))

    return count


def event_id(tenant: str, question: str, answer: str) -> str:
    """The same exchange of the same tenant always gets the same event id (and so the same example id)."""
    digest = hashlib.sha256("\x1f".join((tenant, question, answer)).encode("utf-8")).hexdigest()
    return f"jsonl-{digest[:32]}"


def qa_events(
    exchanges: Sequence[Exchange], tenant: str, *, source: str, occurred_at: datetime | None = None
) -> list[QaRecorded]:
    """One ``qa.recorded`` event per exchange (the contract validates the tenant and the source here)."""
    when = occurred_at or datetime.now(UTC)
    try:
        return [
            QaRecorded(
                event_id=event_id(tenant, e.question, e.answer),
                type="qa.recorded",
                tenant=tenant,
                occurred_at=when,
                source=source[:MAX_SOURCE_CHARS],
                data=QaRecordedData(question=e.question, answer=e.answer),
            )
            for e in exchanges
        ]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContractError(f"{where}: {first['msg']} (tenant {tenant!r})", error_class="InvalidEvent") from exc


def publish(settings: Settings, events: Sequence[QaRecorded]) -> int:
    """Produce ``events`` to ``domain-events`` (idempotent producer, keyed as the contract says) and wait until
    every one is acknowledged; raise ``KafkaUnavailableError`` naming how many were not."""
    topic = topic_name(DOMAIN_EVENTS, settings.topics)
    client = producer(settings.kafka, idempotent=True)
    failed: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    for event in events:
        client.produce(topic, key=event.key.encode(), value=encode(event), on_delivery=delivered)
        client.poll(0)
    # Waits while the acknowledgements come, and at most kafka.request_timeout_s without one (a broker that is
    # down is reported in that time, a large import on a slow broker is not cut short).
    waiting = len(events)
    left = client.flush(settings.kafka.request_timeout_s)
    while 0 < left < waiting:  # acknowledged some in the last interval: keep waiting
        waiting = left
        left = client.flush(settings.kafka.request_timeout_s)
    if left or failed:
        raise KafkaUnavailableError(
            f"{topic} on {settings.kafka.bootstrap_servers}: {left + len(failed)} of {len(events)} events not "
            f"acknowledged{f' ({failed[0]})' if failed else ''}; the import is safe to repeat (same event ids)"
        )
    return len(events)


def import_jsonl(
    settings: Settings,
    path: Path,
    tenant: str,
    *,
    check_length: bool = True,
    dry_run: bool = False,
    source: str | None = None,
) -> ImportReport:
    """Check every line of ``path`` and publish the valid exchanges as ``qa.recorded`` events of ``tenant``
    (none on a dry run). The report says what became of every line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("FILE", str(path), f"name a readable JSONL file ({exc.strerror})") from exc
    counter = token_counter(settings) if check_length else None
    report = check_lines(
        _physical_lines(data), source=str(path), count_tokens=counter, max_length=settings.training.max_length
    )
    events = qa_events(report.unique, tenant, source=source or f"jsonl:{path.name}")
    if not dry_run and events:
        report.published = publish(settings, events)
    return report


def example_line(example: TrainingExample) -> str:
    """An example as one line of OpenAI chat JSONL (its turns; the stored context is not part of the format)."""
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    return json.dumps({"messages": messages}, ensure_ascii=False)


Split = Literal["all", "train", "held-out"]


@dataclass(frozen=True)
class Exported:
    tenant: str
    version: str
    examples: list[TrainingExample]
    """In partition-offset order (the order training read them)."""

    def lines(self) -> list[str]:
        return [example_line(e) for e in self.examples]


def export_version(settings: Settings, tenant: str, version: str | None = None, part: Split = "all") -> Exported:
    """The new examples ``version`` (default: the tenant's current one) was made from, read from the offsets
    its manifest records, less its recorded exclusions; ``part`` picks the manifest's train or held-out split.

    Raises ``ContractError`` when the topic no longer holds what the manifest counted (retention, a
    different cluster), ``RegistryError`` for an unknown version, ``ConfigError`` when the topic prefix
    differs from the one the version was trained under."""
    registry = open_registry(settings, tenant)
    chosen = registry.get(version) if version else registry.current()
    if chosen is None:
        known = ", ".join(v.name for v in registry.versions()) or "none"
        raise RegistryError(f"tenant {tenant}: no current adapter version; name one with --version (known: {known})")
    manifest = chosen.manifest
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    if manifest.data.topic != topic:
        raise ConfigError(
            "topics.prefix",
            settings.topics.prefix,
            f"{tenant} {chosen.name} was trained on {manifest.data.topic}, not {topic}: "
            "use the prefix it was trained under",
        )
    new = read_recorded(settings, tenant, manifest.data)
    train, held_out = split(new.examples, manifest.split.held_out_percent, manifest.split.seed)
    if (len(train), len(held_out)) != (manifest.data.train, manifest.data.held_out):
        raise ContractError(
            f"{topic} {manifest.data.ranges} now holds {len(train)} train / {len(held_out)} held-out examples of "
            f"{tenant}; {chosen.name}'s manifest recorded {manifest.data.train} / {manifest.data.held_out}",
            error_class="WindowChanged",
        )
    picked = {"all": new.examples, "train": train, "held-out": held_out}[part]
    return Exported(tenant, chosen.name, list(picked))
