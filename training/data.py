"""What a refresh trains on, from ``training-examples``: the window of offsets after the current adapter,
the tenant's examples in it (less those relying on deleted documents), a deterministic split and replay sample,
and the tenant's earlier held-out examples (extra evidence for the gate, never trained on).

Everything here is decided by offsets, example ids and the seed, never by arrival order or the clock, so
``train replay`` reads back exactly the examples a version was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.errors import ContractError
from streamtune.kafka import committed_end_offsets, read_range
from streamtune.manifest import DataWindow, Manifest, Ranges
from streamtune.settings import Settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name

__all__ = [
    "Loaded",
    "MissingDocs",
    "NewExamples",
    "Ranges",
    "TrainingData",
    "Window",
    "excluded_ids",
    "load_anchor",
    "plan_split",
    "read_examples",
    "read_new",
    "read_recorded",
    "replay_sample",
    "split",
    "split_and_replay",
    "window",
]

MissingDocs = Callable[[str, set[str]], set[str]]
"""Given a tenant and document ids, the ones no longer in the index.

Handed in by the entry point (it asks the retrieval index), so that training does not depend on retrieval."""

_BUNDLED_ANCHOR = Path(__file__).with_name("anchor.jsonl")


@dataclass(frozen=True)
class Window:
    """The offsets of one refresh, per partition of ``training-examples``."""

    ranges: Ranges
    """The new examples: from where the current adapter stopped to the committed end."""
    replay_ranges: Ranges
    """Everything before: where the replay sample is drawn from."""


def window(settings: Settings, current: Manifest | None) -> Window:
    """The offsets after ``current``'s (all of them without one), up to the committed end of each partition."""
    ends = committed_end_offsets(settings.kafka, topic_name(TRAINING_EXAMPLES, settings.topics))
    trained = current.data.trained_up_to() if current else {}
    starts = {p: trained.get(p, 0) for p in ends}
    return Window({p: (starts[p], ends[p]) for p in ends}, {p: (0, starts[p]) for p in ends})


@dataclass(frozen=True)
class Loaded:
    examples: list[TrainingExample]
    skipped_invalid: int
    """Records that are not a valid training example (only a foreign producer writes those)."""
    duplicates: int
    """Records whose example id came earlier in the same ranges (a producer's retry); the first one counts."""


def read_examples(settings: Settings, tenant: str, ranges: Mapping[int, tuple[int, int]]) -> Loaded:
    """The tenant's examples in ``ranges``, first occurrence of each example id, in partition-offset order."""
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    seen: set[str] = set()
    examples: list[TrainingExample] = []
    invalid = duplicates = 0
    for message in read_range(settings.kafka, topic, ranges):
        try:
            example = TRAINING_EXAMPLES.decode(message.value())
        except ContractError:
            invalid += 1  # the job only writes valid examples; a foreign producer's record is skipped
            continue
        if example.tenant != tenant:
            continue
        if example.example_id in seen:
            duplicates += 1
            continue
        seen.add(example.example_id)
        examples.append(example)
    return Loaded(examples, invalid, duplicates)


def _relies_on(example: TrainingExample) -> set[str]:
    """The documents an example names, and those its stored context was retrieved from."""
    return set(example.context_doc_ids or []) | {p.doc_id for p in example.context or []}


def excluded_ids(tenant: str, examples: Sequence[TrainingExample], missing_docs: MissingDocs | None) -> list[str]:
    """Ids of the examples that rely on a document ``missing_docs`` reports gone, in the examples' order: one
    they name, or one their stored context came from (a deleted document's text is not trained on).

    ``missing_docs`` is asked only when some example names a document (the index is not touched otherwise).
    """
    doc_ids = {d for e in examples for d in _relies_on(e)}
    if missing_docs is None or not doc_ids:
        return []
    gone = missing_docs(tenant, doc_ids)
    return [e.example_id for e in examples if _relies_on(e) & gone]


@dataclass(frozen=True)
class NewExamples:
    """The examples of a window that will be trained on, and what was left out of them and why."""

    examples: list[TrainingExample]
    excluded: list[str]
    """Ids left out because a document they rely on was deleted (recorded in the manifest)."""
    skipped_invalid: int
    duplicates: int

    def __len__(self) -> int:
        return len(self.examples)

    def describe(self, ranges: Ranges) -> str:
        """One line for the refresh's progress: how many, from where, and everything that was not counted."""
        line = f"{len(self.examples)} new examples in {_shown(ranges)}"
        uncounted = [
            f"{n} {what if n == 1 else plural}"
            for n, what, plural in (
                (self.skipped_invalid, "invalid record skipped", "invalid records skipped"),
                (self.duplicates, "duplicate id", "duplicate ids"),
            )
            if n
        ]
        return f"{line} ({', '.join(uncounted)})" if uncounted else line


def _without(loaded: Loaded, excluded: list[str]) -> NewExamples:
    dropped = set(excluded)
    kept = [e for e in loaded.examples if e.example_id not in dropped]
    return NewExamples(kept, excluded, loaded.skipped_invalid, loaded.duplicates)


def read_new(settings: Settings, tenant: str, ranges: Ranges, missing_docs: MissingDocs | None) -> NewExamples:
    """The tenant's examples in ``ranges`` less those relying on a document ``missing_docs`` reports gone."""
    loaded = read_examples(settings, tenant, ranges)
    return _without(loaded, excluded_ids(tenant, loaded.examples, missing_docs))


def read_recorded(settings: Settings, tenant: str, data: DataWindow) -> NewExamples:
    """The examples a version was trained on: its recorded ranges less its recorded exclusions."""
    return _without(read_examples(settings, tenant, data.ranges), list(data.excluded_example_ids))


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

    @property
    def examples(self) -> list[TrainingExample]:
        """What the trainer sees, in this order (the order is part of a byte-identical replay)."""
        return self.train + self.replay

    def describe(self) -> str:
        return (
            f"{self.new.describe(self.window.ranges)}; train {len(self.train)}, held out {len(self.held_out)}, "
            f"replay {len(self.replay)}, excluded (deleted docs) {len(self.new.excluded)}"
        )


def split_and_replay(
    settings: Settings, tenant: str, new: NewExamples, span: Window, *, replay_excludes_held_out: bool = True
) -> TrainingData:
    """Split the new examples; draw the replay sample from the earlier range (none of the new ids).

    ``replay_excludes_held_out``: leave the earlier held-out examples out of the replay sample (every new
    version; ``train replay`` passes what an older manifest recorded)."""
    new_ids = {e.example_id for e in new.examples}
    earlier = [e for e in read_examples(settings, tenant, span.replay_ranges).examples if e.example_id not in new_ids]
    return plan_split(span, new, earlier, settings, replay_excludes_held_out=replay_excludes_held_out)


def plan_split(
    span: Window,
    new: NewExamples,
    earlier: Sequence[TrainingExample],
    settings: Settings,
    *,
    replay_excludes_held_out: bool = True,
) -> TrainingData:
    """``split_and_replay`` once the earlier examples are read: pure, decided by ids and the seed alone.

    The earlier held-out examples are those the same hash rule holds out (whatever the refresh that read them
    first held out for the lack of any other); leaving them out of every replay sample keeps them unseen by
    every adapter trained under this rule."""
    training = settings.training
    train, held_out = split(new.examples, training.held_out_percent, training.seed)
    earlier_held = [e for e in earlier if _held(training.seed, training.held_out_percent, e.example_id)]
    held_ids = {e.example_id for e in earlier_held}
    pool = [e for e in earlier if e.example_id not in held_ids] if replay_excludes_held_out else list(earlier)
    replay = replay_sample(pool, training.replay_sample, training.seed)
    return TrainingData(span, new, train, held_out, replay, earlier_held, replay_excludes_held_out)


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
