"""What a refresh trains on, from ``training-examples``: the window of offsets after the current adapter,
the tenant's examples in it (less those relying on deleted documents, and deferring those whose documents are
not indexed yet), a deterministic split and replay sample, and the tenant's earlier held-out examples (extra
evidence for the gate, never trained on).

Everything here is decided by offsets, example ids, the seed and decisions the manifest records, never by
arrival order, the clock or the index as it is later, so ``train replay`` reads back exactly the examples a
version was trained on: examples are taken in (partition, offset) order whatever order the consumer polls
them in, and the replay sample is read back from the positions the manifest recorded.

The cost of a refresh does not grow with the topic's history: each version records the positions of the next
refresh's replay candidates and top-up evidence (``DataWindow.replay_pool`` / ``held_pool``), so a refresh
reads those few records plus its new range, not every earlier record of every tenant. A version without
them (made before they were recorded, or with other split settings) is followed by one full read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamtune.contracts import ChatMessage, TrainingExample, decode_event
from streamtune.errors import ContractError, KafkaUnavailableError
from streamtune.kafka import committed_end_offsets, consumer, read_range
from streamtune.manifest import DataWindow, Manifest, Ranges
from streamtune.settings import Settings
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name

__all__ = [
    "FEEDBACK_KINDS",
    "DocGaps",
    "Loaded",
    "MissingDocs",
    "NewExamples",
    "Pool",
    "Position",
    "Ranges",
    "TrainingData",
    "Window",
    "deleted_documents",
    "excluded_ids",
    "load_anchor",
    "next_pool",
    "plan_split",
    "read_examples",
    "read_feedback",
    "read_new",
    "read_recorded",
    "recorded_data",
    "replay_sample",
    "split",
    "split_and_replay",
    "triage",
    "window",
    "with_feedback",
]

Position = tuple[int, int]
"""(partition, offset) of a record of ``training-examples``."""


@dataclass(frozen=True)
class DocGaps:
    """The documents an index lacks, told apart: ``deleted`` (a ``document.deleted`` is their last event) and
    ``not_indexed`` (no deletion: the streaming job has not indexed them yet)."""

    deleted: frozenset[str]
    not_indexed: frozenset[str] = frozenset()


MissingDocs = Callable[[str, set[str]], "set[str] | DocGaps"]
"""Given a tenant and document ids, those the index lacks: a ``DocGaps``, or a plain set of deleted ones.

Handed in by the entry point (it asks the retrieval index), so that training does not depend on retrieval.
An example relying on a deleted document is excluded for good; one relying on a document that is only not
indexed yet is deferred: not trained on now, recorded, and read again by the next refresh."""

_BUNDLED_ANCHOR = Path(__file__).with_name("anchor.jsonl")
_POOL_FACTOR = 2
"""Replay / evidence candidates recorded per version, as a multiple of what one refresh uses: room for the
candidates that later deletions take away before a full read is needed again."""
_LANES = 2
"""Readers at once reading recorded positions (``_read_at``)."""
_MIN_PER_LANE = 8
"""Fewer positions than this per reader are not worth another reader's connection."""
_POINT_READS: dict[str, Any] = {
    "fetch.wait.max.ms": 5,
    "max.partition.fetch.bytes": 65_536,
    "queued.min.messages": 1_000,
    "fetch.queue.backoff.ms": 1,
}
_READ_THROUGH = 500
"""Reading positions, a gap of at most this many offsets is read through rather than sought over (reading
through 500 small records takes about as long as one seek, a few ms, on the local broker)."""


@dataclass(frozen=True)
class Window:
    """The offsets of one refresh, per partition of ``training-examples``."""

    ranges: Ranges
    """The new examples: from where the current adapter stopped to the committed end."""
    replay_ranges: Ranges
    """Everything before: where the replay sample is drawn from."""
    carried: list[Position] = field(default_factory=list)
    """Examples the current adapter deferred (a document not indexed yet): read again with ``ranges``."""


def window(settings: Settings, current: Manifest | None) -> Window:
    """The offsets after ``current``'s (all of them without one), up to the committed end of each partition,
    and the examples ``current`` deferred."""
    ends = committed_end_offsets(settings.kafka, topic_name(TRAINING_EXAMPLES, settings.topics))
    trained = current.data.trained_up_to() if current else {}
    starts = {p: trained.get(p, 0) for p in ends}
    carried = list(current.data.deferred) if current else []
    return Window({p: (starts[p], ends[p]) for p in ends}, {p: (0, starts[p]) for p in ends}, carried)


@dataclass(frozen=True)
class Loaded:
    examples: list[TrainingExample]
    skipped_invalid: int
    """Records that are not a valid training example (only a foreign producer writes those)."""
    duplicates: int
    """Records whose example id came earlier in the same ranges (a producer's retry); the first one counts."""
    at: dict[str, Position] = field(default_factory=dict)
    """Where each example was read from (``feedback`` included)."""
    feedback: list[TrainingExample] = field(default_factory=list)
    """The rated-down answers (``kind`` rating or preference): never trained on by SFT, held out or replayed,
    only by the preference step."""


FEEDBACK_KINDS = ("rating", "preference")


def read_examples(
    settings: Settings, tenant: str, ranges: Mapping[int, tuple[int, int]], also: Iterable[Position] = ()
) -> Loaded:
    """The tenant's examples in ``ranges`` and at the positions ``also``, first occurrence of each example id,
    in (partition, offset) order: the consumer interleaves partitions as its fetches return, so the records
    are sorted before anything is decided from their order."""
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    records = {(m.partition() or 0, m.offset() or 0): m.value() for m in read_range(settings.kafka, topic, ranges)}
    records.update(_read_at(settings, also))
    return _decoded(tenant, sorted(records.items()))


def _decoded(tenant: str, records: Iterable[tuple[Position, bytes | None]]) -> Loaded:
    seen: dict[str, Position] = {}
    examples: list[TrainingExample] = []
    feedback: list[TrainingExample] = []
    invalid = duplicates = 0
    for at, value in records:
        try:
            example = TRAINING_EXAMPLES.decode(value)
        except ContractError:
            invalid += 1  # the job only writes valid examples; a foreign producer's record is skipped
            continue
        if example.tenant != tenant:
            continue
        if example.example_id in seen:
            duplicates += 1
            continue
        seen[example.example_id] = at
        (feedback if example.kind in FEEDBACK_KINDS else examples).append(example)
    return Loaded(examples, invalid, duplicates, seen, feedback)


def _read_at(settings: Settings, positions: Iterable[Position], timeout_s: float = 30.0) -> dict[Position, bytes]:
    """The records at ``positions`` (which must exist: they were read before), seeking past long gaps so that
    the cost is the number of positions, not the length of the history between them.

    A seek is a round trip to the broker, and one reader seeks one partition at a time: the positions are
    split into runs of neighbours, read by up to ``_LANES`` readers at once."""
    from concurrent.futures import ThreadPoolExecutor

    ordered = sorted(set(positions))
    if not ordered:
        return {}
    per_lane = max(-(-len(ordered) // _LANES), _MIN_PER_LANE)
    lanes = [ordered[i : i + per_lane] for i in range(0, len(ordered), per_lane)]
    if len(lanes) == 1:
        return _read_lane(settings, lanes[0], timeout_s)
    found: dict[Position, bytes] = {}
    with ThreadPoolExecutor(len(lanes), thread_name_prefix="read-at") as pool:
        for part in pool.map(lambda lane: _read_lane(settings, lane, timeout_s), lanes):
            found.update(part)
    return found


def _read_lane(settings: Settings, positions: Sequence[Position], timeout_s: float) -> dict[Position, bytes]:
    from confluent_kafka import TopicPartition

    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    todo: dict[int, list[int]] = {}
    for partition, offset in positions:
        todo.setdefault(partition, []).append(offset)
    found: dict[Position, bytes] = {}
    # A seek waits for the fetch in flight, which the broker holds up to fetch.wait.max.ms (500 ms by default)
    # once the reader has caught up with a partition's end, and which brings up to max.partition.fetch.bytes
    # (1 MB) that a seek throws away; librdkafka prefetches up to queued.min.messages (100,000) ahead, and once
    # that many wait it fetches again only after fetch.queue.backoff.ms (1 s). All small: a seek should cost one
    # short round trip.
    reader = consumer(settings.kafka, **_POINT_READS)
    try:
        reader.assign([TopicPartition(topic, p, offsets[0]) for p, offsets in todo.items()])
        deadline = time.monotonic() + timeout_s
        while todo:
            message = reader.poll(0.5)
            if message is None or message.error() is not None:
                if time.monotonic() > deadline:
                    raise KafkaUnavailableError(f"{topic}: no progress for {timeout_s:.0f}s reading {todo}")
                continue
            partition, offset = message.partition() or 0, message.offset() or 0
            wanted = todo.get(partition)
            if not wanted or offset < wanted[0]:
                continue  # read through a short gap, or fetched before a seek
            if offset > wanted[0]:
                raise KafkaUnavailableError(
                    f"{topic}: no record at partition {partition} offset {wanted[0]}, which a manifest recorded; "
                    "was the topic's retention changed or the topic re-created?"
                )
            deadline = time.monotonic() + timeout_s
            found[(partition, offset)] = message.value() or b""
            wanted.pop(0)
            if not wanted:
                del todo[partition]
                reader.pause([TopicPartition(topic, partition)])
            elif wanted[0] - offset > _READ_THROUGH:
                reader.seek(TopicPartition(topic, partition, wanted[0]))
    finally:
        reader.close()
    return found


def _relies_on(example: TrainingExample) -> set[str]:
    """The documents an example names, and those its stored context was retrieved from."""
    return set(example.context_doc_ids or []) | {p.doc_id for p in example.context or []}


def _gaps(tenant: str, examples: Sequence[TrainingExample], missing_docs: MissingDocs | None) -> DocGaps:
    doc_ids = {d for e in examples for d in _relies_on(e)}
    if missing_docs is None or not doc_ids:
        return DocGaps(frozenset())
    answer = missing_docs(tenant, doc_ids)
    return answer if isinstance(answer, DocGaps) else DocGaps(frozenset(answer))


def triage(
    tenant: str, examples: Sequence[TrainingExample], missing_docs: MissingDocs | None
) -> tuple[list[str], list[str]]:
    """(excluded, deferred): ids of the examples relying on a document ``missing_docs`` reports deleted, and
    of those relying on one only not indexed yet (and on none deleted), each in the examples' order.

    Relying means naming the document or having stored context from it (a deleted document's text is not
    trained on). ``missing_docs`` is asked once, and only when some example names a document."""
    gaps = _gaps(tenant, examples, missing_docs)
    excluded = [e.example_id for e in examples if _relies_on(e) & gaps.deleted]
    deferred = [e.example_id for e in examples if _relies_on(e) & gaps.not_indexed and not _relies_on(e) & gaps.deleted]
    return excluded, deferred


def excluded_ids(tenant: str, examples: Sequence[TrainingExample], missing_docs: MissingDocs | None) -> list[str]:
    """Ids of the examples that rely on a document ``missing_docs`` reports deleted, in the examples' order."""
    return triage(tenant, examples, missing_docs)[0]


def deleted_documents(settings: Settings, tenant: str, doc_ids: Collection[str]) -> set[str]:
    """Those of ``doc_ids`` whose last event on ``domain-events`` is a ``document.deleted``.

    Reads the whole topic (document events are keyed ``<tenant>:<doc_id>``, and only their key is looked at
    before a match), so the index check asks only about the documents the index lacks."""
    topic = topic_name(DOMAIN_EVENTS, settings.topics)
    keys = {f"{tenant}:{d}".encode(): d for d in doc_ids}
    if not keys:
        return set()
    ends = committed_end_offsets(settings.kafka, topic)
    last: dict[str, tuple[Position, bool]] = {}
    for message in read_range(settings.kafka, topic, {p: (0, end) for p, end in ends.items()}):
        doc_id = keys.get(message.key() or b"")
        if doc_id is None:
            continue
        try:
            event = decode_event(message.value() or b"")
        except ContractError:
            continue  # a dead letter for the job; it changed nothing in the index
        at = (message.partition() or 0, message.offset() or 0)
        if event.type in ("document.deleted", "document.upserted") and at > last.get(doc_id, ((-1, -1), False))[0]:
            last[doc_id] = (at, event.type == "document.deleted")
    return {d for d, (_, deleted) in last.items() if deleted}


@dataclass(frozen=True)
class NewExamples:
    """The examples of a window that will be trained on, and what was left out of them and why."""

    examples: list[TrainingExample]
    excluded: list[str]
    """Ids left out because a document they rely on was deleted (recorded in the manifest)."""
    skipped_invalid: int
    duplicates: int
    deferred: list[Position] = field(default_factory=list)
    """Where the examples relying on a document not indexed yet are: read again by the next refresh."""
    carried: list[Position] = field(default_factory=list)
    """The earlier deferred examples read again with the window."""
    at: dict[str, Position] = field(default_factory=dict)
    """Where each of ``examples`` was read from."""
    feedback: list[TrainingExample] = field(default_factory=list)
    """The window's rated-down answers, for the preference step (``Loaded.feedback``)."""
    feedback_at: list[Position] = field(default_factory=list)
    """Where each of ``feedback`` was read from."""

    def __len__(self) -> int:
        return len(self.examples)

    def describe(self, ranges: Ranges) -> str:
        """One line for the refresh's progress: how many, from where, and everything that was not counted."""
        line = f"{len(self.examples)} new examples in {_shown(ranges)}"
        if self.carried:
            line += f" and {len(self.carried)} deferred earlier"
        uncounted = [
            f"{n} {what if n == 1 else plural}"
            for n, what, plural in (
                (self.skipped_invalid, "invalid record skipped", "invalid records skipped"),
                (self.duplicates, "duplicate id", "duplicate ids"),
                (len(self.deferred), "deferred (document not indexed yet)", "deferred (documents not indexed yet)"),
            )
            if n
        ]
        return f"{line} ({', '.join(uncounted)})" if uncounted else line


def _without(loaded: Loaded, excluded: list[str], deferred: Collection[str], carried: list[Position]) -> NewExamples:
    dropped = set(excluded) | set(deferred)
    kept = [e for e in loaded.examples if e.example_id not in dropped]
    return NewExamples(
        kept,
        excluded,
        loaded.skipped_invalid,
        loaded.duplicates,
        [loaded.at[i] for i in deferred],
        carried,
        {e.example_id: loaded.at[e.example_id] for e in kept},
        loaded.feedback,
        [loaded.at[e.example_id] for e in loaded.feedback],
    )


def read_new(
    settings: Settings,
    tenant: str,
    ranges: Ranges,
    missing_docs: MissingDocs | None,
    carried: Sequence[Position] = (),
) -> NewExamples:
    """The tenant's examples in ``ranges`` and at ``carried``, less those relying on a document ``missing_docs``
    reports deleted (excluded) or not indexed yet (deferred)."""
    loaded = read_examples(settings, tenant, ranges, carried)
    excluded, deferred = triage(tenant, loaded.examples, missing_docs)
    return _without(loaded, excluded, deferred, list(carried))


def read_feedback(settings: Settings, tenant: str, positions: Sequence[Position]) -> list[TrainingExample]:
    """The rated-down answers at ``positions``, in that order (a manifest's ``preference_offsets`` or
    ``preference_pending``)."""
    if not positions:
        return []
    records = _read_at(settings, positions)
    return _decoded(tenant, [(at, records[at]) for at in positions]).feedback


def read_recorded(settings: Settings, tenant: str, data: DataWindow) -> NewExamples:
    """The examples a version was trained on: its recorded ranges and carried positions, less its recorded
    exclusions and deferrals."""
    loaded = read_examples(settings, tenant, data.ranges, data.carried)
    deferred = set(data.deferred)
    later = [i for i, at in loaded.at.items() if at in deferred]
    return _without(loaded, list(data.excluded_example_ids), later, list(data.carried))


@dataclass(frozen=True)
class Pool:
    """What a version records for the next refresh (``DataWindow.replay_pool`` etc.)."""

    replay: list[Position]
    bound: int | None
    held: list[Position]


@dataclass(frozen=True)
class TrainingData:
    window: Window
    new: NewExamples
    train: list[TrainingExample]
    held_out: list[TrainingExample]
    replay: list[TrainingExample]
    earlier_held_out: list[TrainingExample] = field(default_factory=list)
    """The earlier examples the split holds out: never trained on when ``replay_excludes_held_out``, so the
    gate may add them to a small held-out slice."""
    replay_excludes_held_out: bool = True
    replay_at: list[Position] | None = None
    """Where each replay example was read from (recorded, so that replay reads them back)."""
    replay_excluded: list[str] = field(default_factory=list)
    """Earlier examples passed over for the replay sample: a document they rely on was deleted since."""
    pool: Pool | None = None
    """The next refresh's candidates (None: not known, e.g. when replaying)."""
    feedback: list[TrainingExample] = field(default_factory=list)
    """The rated-down answers the preference step trains on (empty: no preference step)."""
    feedback_at: list[Position] = field(default_factory=list)
    """Where each of ``feedback`` was read from."""
    feedback_pending: list[Position] = field(default_factory=list)
    """Rated-down answers read but too few to train on: the next refresh reads them again."""

    @property
    def examples(self) -> list[TrainingExample]:
        """What the trainer sees, in this order (the order is part of a byte-identical replay)."""
        return self.train + self.replay

    def describe(self) -> str:
        line = (
            f"{self.new.describe(self.window.ranges)}; train {len(self.train)}, held out {len(self.held_out)}, "
            f"replay {len(self.replay)}, excluded (deleted docs) {len(self.new.excluded)}"
        )
        if self.replay_excluded:
            line += f", {len(self.replay_excluded)} earlier left out of replay (deleted docs)"
        if self.feedback:
            line += f"; preference step on {len(self.feedback)} rated-down answers"
        elif self.feedback_pending:
            line += f"; {len(self.feedback_pending)} rated-down answers wait for more"
        return line


def with_feedback(settings: Settings, tenant: str, data: TrainingData, current: Manifest | None) -> TrainingData:
    """``data`` with the rated-down answers for the preference step: the window's, after those ``current``
    left pending. Trained on once there are ``training.min_preference_examples`` of them (and the step is on);
    fewer wait for the next refresh."""
    conf = settings.training
    earlier_at = list(current.data.preference_pending) if current else []
    examples = read_feedback(settings, tenant, earlier_at) + data.new.feedback
    at = earlier_at + data.new.feedback_at
    if conf.preference_steps and len(examples) >= conf.min_preference_examples:
        return replace(data, feedback=examples, feedback_at=at, feedback_pending=[])
    return replace(data, feedback=[], feedback_at=[], feedback_pending=at)


def split_and_replay(
    settings: Settings,
    tenant: str,
    new: NewExamples,
    span: Window,
    *,
    replay_excludes_held_out: bool = True,
    missing_docs: MissingDocs | None = None,
    current: Manifest | None = None,
) -> TrainingData:
    """Split the new examples; draw the replay sample from the earlier examples (none of the new ids, none
    still deferred, none relying on a document ``missing_docs`` reports deleted since).

    The earlier examples are read from ``current``'s recorded candidates when it has them for these split
    settings (a few records, whatever the history), else from the whole earlier range.
    ``replay_excludes_held_out``: leave the earlier held-out examples out of the replay sample (every new
    version; ``train replay`` of an older manifest passes what it recorded)."""
    if current is not None and replay_excludes_held_out:
        data = _from_pool(settings, tenant, new, span, current, missing_docs)
        if data is not None:
            return data
    new_ids = {e.example_id for e in new.examples}
    still_deferred = set(span.carried)
    loaded = read_examples(settings, tenant, span.replay_ranges)
    earlier = [
        e for e in loaded.examples if e.example_id not in new_ids and loaded.at[e.example_id] not in still_deferred
    ]
    return plan_split(
        span,
        new,
        earlier,
        settings,
        replay_excludes_held_out=replay_excludes_held_out,
        at=loaded.at,
        gone=_gone(tenant, missing_docs),
    )


def _gone(tenant: str, missing_docs: MissingDocs | None) -> Callable[[Sequence[TrainingExample]], set[str]]:
    return lambda examples: set(triage(tenant, examples, missing_docs)[0])


def plan_split(
    span: Window,
    new: NewExamples,
    earlier: Sequence[TrainingExample],
    settings: Settings,
    *,
    replay_excludes_held_out: bool = True,
    at: Mapping[str, Position] | None = None,
    gone: Callable[[Sequence[TrainingExample]], set[str]] | None = None,
    bound: int | None = None,
    ranked: bool = False,
    earlier_held: Sequence[TrainingExample] | None = None,
    held_unread: Sequence[Position] = (),
) -> TrainingData:
    """``split_and_replay`` once the earlier examples are read: decided by ids, the seed and ``gone`` alone.

    ``earlier`` is every earlier candidate, or (``bound`` given) the lowest-ranked ones, ``ranked`` when already
    in rank order. ``gone`` names the ids relying on a document deleted since; it is asked only about the
    candidates the sample reaches. ``at`` (where each example was read) lets the decision be recorded.
    ``held_unread``: earlier held-out examples not read (the gate needs none), newest first: the next
    refresh's evidence candidates after this window's held-out ones.

    The earlier held-out examples are those the same hash rule holds out (whatever the refresh that read them
    first held out for the lack of any other); leaving them out of every replay sample keeps them unseen by
    every adapter trained under this rule."""
    training = settings.training
    train, held_out = split(new.examples, training.held_out_percent, training.seed)
    if earlier_held is None:
        earlier_held = [e for e in earlier if _held(training.seed, training.held_out_percent, e.example_id)]
    held_ids = {e.example_id for e in earlier_held}
    pool = [e for e in earlier if e.example_id not in held_ids] if replay_excludes_held_out else list(earlier)
    ordered = pool if ranked else sorted(pool, key=lambda e: _rank(training.seed + 1, e.example_id))
    replay, passed_over = _lowest_live(ordered, training.replay_sample, gone)
    positions = dict(at or {}) | new.at
    record = None
    if at is not None and replay_excludes_held_out:
        dropped = set(passed_over)
        candidates = [e for e in ordered if e.example_id not in dropped] + [
            e for e in new.examples if not _held(training.seed, training.held_out_percent, e.example_id)
        ]
        next_replay, next_bound = next_pool(candidates, bound, _POOL_FACTOR * training.replay_sample, training.seed)
        recent = sorted(
            [
                *earlier_held,
                *(e for e in new.examples if _held(training.seed, training.held_out_percent, e.example_id)),
            ],
            key=lambda e: (e.created_at, e.example_id),
            reverse=True,
        )
        newest = [positions[e.example_id] for e in recent] + [p for p in held_unread if p not in positions.values()]
        record = Pool(
            [positions[e.example_id] for e in next_replay],
            next_bound,
            newest[: _POOL_FACTOR * training.min_eval_examples],
        )
    return TrainingData(
        span,
        new,
        train,
        held_out,
        replay,
        list(earlier_held),
        replay_excludes_held_out,
        [positions[e.example_id] for e in replay] if at is not None else None,
        passed_over,
        record,
    )


def _lowest_live(
    ranked: Sequence[TrainingExample], size: int, gone: Callable[[Sequence[TrainingExample]], set[str]] | None
) -> tuple[list[TrainingExample], list[str]]:
    """The first ``size`` of ``ranked`` that ``gone`` does not name, and the ids it named on the way (``gone``
    is asked in batches, only as far as the sample reaches)."""
    kept: list[TrainingExample] = []
    passed: list[str] = []
    i = 0
    while len(kept) < size and i < len(ranked):
        batch = list(ranked[i : i + size - len(kept)])
        i += len(batch)
        named = gone(batch) if gone is not None else set()
        passed += [e.example_id for e in batch if e.example_id in named]
        kept += [e for e in batch if e.example_id not in named]
    return kept, passed


def next_pool(
    candidates: Sequence[TrainingExample], bound: int | None, size: int, seed: int
) -> tuple[list[TrainingExample], int | None]:
    """The ``size`` lowest-ranked of ``candidates`` and the rank at or below which all of them are listed.

    ``candidates`` are the earlier pool (every candidate ranked at or below ``bound``; all of them when it is
    None) and the new ones: a new one ranked above ``bound`` is left out, since an unlisted earlier one may
    rank below it. So the result is always exactly the lowest-ranked of the whole history up to its bound,
    and the lowest ``replay_sample`` of it are the sample a full read would draw."""
    seen: set[str] = set()
    unique = [e for e in candidates if not (e.example_id in seen or seen.add(e.example_id))]  # type: ignore[func-returns-value]
    ranked = sorted(unique, key=lambda e: _rank(seed + 1, e.example_id))
    if bound is not None:
        ranked = [e for e in ranked if _rank(seed + 1, e.example_id) <= bound]
    if len(ranked) > size:
        ranked = ranked[:size]
        bound = _rank(seed + 1, ranked[-1].example_id) if ranked else -1
    return ranked, bound


def _from_pool(
    settings: Settings,
    tenant: str,
    new: NewExamples,
    span: Window,
    current: Manifest,
    missing_docs: MissingDocs | None,
) -> TrainingData | None:
    """``split_and_replay`` from ``current``'s recorded candidates; None when they cannot decide exactly what a
    full read would (not recorded, other split settings, or deletions took too many of them)."""
    data, training = current.data, settings.training
    if (
        data.replay_pool is None
        or data.held_pool is None
        or data.topic != topic_name(TRAINING_EXAMPLES, settings.topics)
        or (current.split.seed, current.split.held_out_percent) != (training.seed, training.held_out_percent)
    ):
        return None
    # the earlier held-out examples are read only when the gate needs them to top up the new held-out slice
    needed = len(split(new.examples, training.held_out_percent, training.seed)[1]) < training.min_eval_examples
    held_pool = data.held_pool if needed else []
    records = _read_at(settings, [*data.replay_pool, *held_pool])
    loaded = _decoded(tenant, [(at, records[at]) for at in data.replay_pool])
    held = _decoded(tenant, [(at, records[at]) for at in held_pool])
    new_ids = {e.example_id for e in new.examples}
    planned = plan_split(
        span,
        new,
        [e for e in loaded.examples if e.example_id not in new_ids],
        settings,
        at={**held.at, **loaded.at},
        gone=_gone(tenant, missing_docs),
        bound=data.replay_pool_bound,
        ranked=True,
        earlier_held=[e for e in held.examples if e.example_id not in new_ids],
        held_unread=[] if needed else data.held_pool,
    )
    if data.replay_pool_bound is not None and len(planned.replay) < training.replay_sample:
        return None  # deletions took too many of the recorded candidates: only a full read knows the next ones
    return planned


def recorded_data(settings: Settings, tenant: str, manifest: Manifest) -> TrainingData:
    """What ``manifest``'s version was trained on, from its record alone: the new examples (its ranges and
    carried positions less its exclusions and deferrals), its split, and its replay sample read back from the
    recorded positions, in the recorded order. ``settings.training``: the version's (``recorded_training``).
    Versions made before the positions were recorded draw their replay sample again from ``replay_ranges``."""
    data = manifest.data
    new = read_recorded(settings, tenant, data)
    span = Window(data.ranges, data.replay_ranges, list(data.carried))
    if data.replay_offsets is None:
        return split_and_replay(settings, tenant, new, span, replay_excludes_held_out=data.replay_excludes_held_out)
    training = settings.training
    train, held_out = split(new.examples, training.held_out_percent, training.seed)
    records = _read_at(settings, data.replay_offsets)
    replay = _decoded(tenant, [(at, records[at]) for at in data.replay_offsets]).examples
    return TrainingData(
        span,
        new,
        train,
        held_out,
        replay,
        [],
        data.replay_excludes_held_out,
        list(data.replay_offsets),
        feedback=read_feedback(settings, tenant, data.preference_offsets),
        feedback_at=list(data.preference_offsets),
        feedback_pending=list(data.preference_pending),
    )


def _rank(seed: int, example_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{example_id}".encode()).digest()[:8], "big")


def _held(seed: int, percent: int, example_id: str) -> bool:
    return _rank(seed, example_id) % 100 < percent


def split(
    examples: list[TrainingExample], percent: int, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, held-out) by a hash of the example id: stable whatever order or company examples come in.

    At least one example is held out (the lowest-ranked) so that the gate always has something to judge.
    """
    held = [e for e in examples if _held(seed, percent, e.example_id)]
    if not held and len(examples) > 1:
        held = [min(examples, key=lambda e: _rank(seed, e.example_id))]
    held_ids = {e.example_id for e in held}
    return [e for e in examples if e.example_id not in held_ids], held


def replay_sample(earlier: Iterable[TrainingExample], size: int, seed: int) -> list[TrainingExample]:
    """A deterministic sample of earlier examples (the ``size`` lowest hash ranks)."""
    return sorted(earlier, key=lambda e: _rank(seed + 1, e.example_id))[:size]


def load_anchor(path: Path | None) -> list[TrainingExample]:
    """The frozen anchor set: general questions whose answers a refresh must not forget."""
    source = path or _BUNDLED_ANCHOR
    examples = []
    for i, line in enumerate(source.read_text().splitlines()):
        if line.strip():
            row = json.loads(line)
            examples.append(
                TrainingExample(
                    example_id=f"anchor-{i}",
                    messages=[ChatMessage(**m) for m in row["messages"]],
                    source_event_id=f"anchor-{i}",
                )
            )
    return examples


def _shown(ranges: Ranges) -> str:
    return ", ".join(f"p{p} [{start}, {end})" for p, (start, end) in sorted(ranges.items())) or "no partitions"
