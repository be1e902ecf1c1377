"""What a refresh trains on, from ``training-examples``: the window of offsets after the current adapter,
the tenant's examples in it (less those relying on deleted documents), a deterministic split and replay sample.

Everything here is decided by offsets, example ids and the seed, never by arrival order or the clock, so
``train replay`` reads back exactly the examples a version was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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


def excluded_ids(tenant: str, examples: Sequence[TrainingExample], missing_docs: MissingDocs | None) -> list[str]:
    """Ids of the examples that rely on a document ``missing_docs`` reports gone, in the examples' order.

    ``missing_docs`` is asked only when some example names a document (the index is not touched otherwise).
    """
    doc_ids = {d for e in examples for d in e.context_doc_ids or []}
    if missing_docs is None or not doc_ids:
        return []
    gone = missing_docs(tenant, doc_ids)
    return [e.example_id for e in examples if set(e.context_doc_ids or []) & gone]


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

    @property
    def examples(self) -> list[TrainingExample]:
        """What the trainer sees, in this order (the order is part of a byte-identical replay)."""
        return self.train + self.replay

    def describe(self) -> str:
        return (
            f"{self.new.describe(self.window.ranges)}; train {len(self.train)}, held out {len(self.held_out)}, "
            f"replay {len(self.replay)}, excluded (deleted docs) {len(self.new.excluded)}"
        )


def split_and_replay(settings: Settings, tenant: str, new: NewExamples, span: Window) -> TrainingData:
    """Split the new examples; draw the replay sample from the earlier range (none of the new ids)."""
    train, held_out = split(new.examples, settings.training.held_out_percent, settings.training.seed)
    new_ids = {e.example_id for e in new.examples}
    earlier = [e for e in read_examples(settings, tenant, span.replay_ranges).examples if e.example_id not in new_ids]
    replay = replay_sample(earlier, settings.training.replay_sample, settings.training.seed)
    return TrainingData(span, new, train, held_out, replay)


def _rank(seed: int, example_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{example_id}".encode()).digest()[:8], "big")


def split(
    examples: list[TrainingExample], percent: int, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, held-out) by a hash of the example id: stable whatever order or company examples come in.

    At least one example is held out (the lowest-ranked) so that the gate always has something to judge.
    """
    held = [e for e in examples if _rank(seed, e.example_id) % 100 < percent]
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
