"""Training data from ``training-examples``: exact offset ranges, a deterministic split and replay sample."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from streamtune.contracts import ChatMessage, TrainingExample, decode
from streamtune.errors import ContractError
from streamtune.kafka import read_range
from streamtune.settings import Settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name

__all__ = ["Ranges", "load_anchor", "read_examples", "replay_sample", "split"]

Ranges = dict[int, tuple[int, int]]
"""Per partition, the half-open offset range ``[start, end)``."""

_BUNDLED_ANCHOR = Path(__file__).with_name("anchor.jsonl")


@dataclass(frozen=True)
class Loaded:
    examples: list[TrainingExample]
    skipped_invalid: int
    duplicates: int


def read_examples(settings: Settings, tenant: str, ranges: Mapping[int, tuple[int, int]]) -> Loaded:
    """The tenant's examples in ``ranges``, first occurrence of each example id, in partition-offset order."""
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    seen: set[str] = set()
    examples: list[TrainingExample] = []
    invalid = duplicates = 0
    for message in read_range(settings.kafka, topic, ranges):
        try:
            example = decode(message.value() or b"", TrainingExample)
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
