"""Refresh cost vs history: the data phase of a refresh with a fixed number of new examples, as the history of
``training-examples`` grows (many tenants), ÷ the same at the smallest history. Goal: ≤ 1.2 from 10k to 1M.

    OMP_WAIT_POLICY=PASSIVE .venv/ml/bin/python bench/history.py [--sizes 10000 100000 1000000] [--tenants 100]
        [--new 64] [--rounds 3] [--plot bench/plots/history.png]

For each size, on a topic of its own on the running Kafka: a plain producer writes the history (``--tenants``
tenants, round robin), a first data phase reads all of it as one tenant's first version would (its
``DataWindow`` is built by ``training.manifest.data_window``, exactly what a refresh records), then ``--new``
new examples of that tenant arrive and the next refresh's data phase is timed: ``window`` + ``read_new`` +
``split_and_replay`` (planning and reading; no index check, no training). The yardstick is the same phase
with the parent's recorded candidates withheld, i.e. a read of the whole earlier range, which is what every
refresh did before they were recorded. Both must draw the same replay sample (checked, printed).

Figures are medians over ``--rounds``, the rounds interleaved across the sizes (the full read: one round from
500k records up, it takes minutes). All sizes' topics exist at once (about 300 MB for 1M records).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.harness import sample_manifest
from streamtune.kafka import create_topics, delete_topics, producer
from streamtune.manifest import Manifest, Split
from streamtune.settings import Settings, load_settings
from streamtune.topics import TRAINING_EXAMPLES, topic_name
from training.data import TrainingData, read_new, split_and_replay, window
from training.manifest import data_window

TENANT = "t0000"
"""The tenant whose refresh is timed (one of ``--tenants``)."""


def _template() -> bytes:
    example = TrainingExample(
        example_id="__ID__",
        tenant="__TENANT__",
        messages=[
            ChatMessage(role="user", content="What is the refund window for orders shipped from Lisbon?"),
            ChatMessage(role="assistant", content="Thirty days from delivery."),
        ],
        source_event_id="__ID__",
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    return TRAINING_EXAMPLES.encode(example)


def seed(settings: Settings, count: int, tenants: int, first: int = 0, only: str | None = None) -> float:
    """Write ``count`` examples (round robin over ``tenants``, or all of tenant ``only``); returns seconds."""
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    template = _template()
    config: dict[str, Any] = {
        # 16 KB batches, as the streaming job's Java producer writes them (batch.size's default there); the
        # librdkafka default of 1 MB would make every seek of a reader fetch a thousand-record batch.
        "linger.ms": 5,
        "batch.size": 16_384,
        "queue.buffering.max.kbytes": 1 << 20,
    }
    client = producer(settings.kafka, **config)
    begin = time.monotonic()
    for i in range(first, first + count):
        tenant = only or f"t{i % tenants:04d}"
        example_id = f"{tenant}-{i}".encode()
        value = template.replace(b"__ID__", example_id).replace(b"__TENANT__", tenant.encode())
        while True:
            try:
                client.produce(topic, key=example_id, value=value)
                break
            except BufferError:
                client.poll(0.05)
        if i % 10_000 == 0:
            client.poll(0)
    assert client.flush(120) == 0, "the history did not reach Kafka"
    return time.monotonic() - begin


def data_phase(settings: Settings, current: Manifest | None) -> tuple[float, TrainingData]:
    """A refresh's planning and reading, as ``training.refresh`` runs it (no index check)."""
    begin = time.monotonic()
    span = window(settings, current)
    new = read_new(settings, TENANT, span.ranges, None, span.carried)
    data = split_and_replay(settings, TENANT, new, span, current=current)
    return time.monotonic() - begin, data


def as_manifest(settings: Settings, data: TrainingData) -> Manifest:
    """A first version whose data record is exactly what a refresh records, and whose split is these settings'
    (the next refresh reads its recorded candidates only then); the rest is made up."""
    split = Split(seed=settings.training.seed, held_out_percent=settings.training.held_out_percent)
    return sample_manifest(TENANT, "v0001", data=data_window(settings, data), split=split)


@dataclass
class History:
    """One size's topic, written, with its first version recorded and the new examples after it."""

    size: int
    settings: Settings
    seed_s: float
    first_s: float
    first: TrainingData
    current: Manifest
    recorded: list[tuple[float, TrainingData]] = field(default_factory=list)
    full: list[tuple[float, TrainingData]] = field(default_factory=list)


def prepare(size: int, tenants: int, new: int) -> History:
    settings = load_settings(config_files=[], topics={"prefix": f"bench-hist-{uuid.uuid4().hex[:8]}."})
    create_topics(settings.kafka, settings.topics, [TRAINING_EXAMPLES])
    seeding = seed(settings, size, tenants)
    first_s, first = data_phase(settings, None)
    current = as_manifest(settings, first)
    seed(settings, new, tenants, first=size, only=TENANT)
    return History(size, settings, seeding, first_s, first, current)


def result(h: History) -> dict[str, float | int | bool]:
    full_replay = [e.example_id for e in h.full[0][1].replay]
    same = all([e.example_id for e in d.replay] == full_replay for _, d in h.recorded) and [
        e.example_id for e in h.recorded[0][1].train
    ] == [e.example_id for e in h.full[0][1].train]
    return {
        "history": h.size,
        "seed_s": round(h.seed_s, 1),
        "first_version_s": round(h.first_s, 2),
        "tenant_history": len(h.first.new),
        "new": len(h.recorded[0][1].new),
        "replay": len(h.recorded[0][1].replay),
        "recorded_s": statistics.median(t for t, _ in h.recorded),
        "recorded_min_s": min(t for t, _ in h.recorded),
        "full_read_s": statistics.median(t for t, _ in h.full),
        "same_sample": same,
    }


def plot(rows: list[dict[str, float | int | bool]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["history"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(sizes, [r["full_read_s"] for r in rows], "o-", label="read the whole earlier range (before)")
    ax.plot(sizes, [r["recorded_s"] for r in rows], "o-", label="read the recorded candidates (now)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records already on training-examples")
    ax.set_ylabel("refresh data phase, seconds")
    ax.set_title(f"Refresh planning + reading, {rows[0]['new']} new examples, 2 CPU cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--new", type=int, default=64, help="new examples of the timed tenant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=Path("bench/plots/history.png"))
    args = parser.parse_args()

    print(f"python {platform.python_version()} on {platform.machine()}, {args.tenants} tenants", file=sys.stderr)
    histories = [prepare(size, args.tenants, args.new) for size in sorted(args.sizes)]
    try:
        # rounds interleaved across the sizes, so that the machine's load drifts over all of them alike
        for _ in range(args.rounds):
            for h in histories:
                h.recorded.append(data_phase(h.settings, h.current))
        for h in histories:
            withheld = h.current.data.model_copy(update={"replay_pool": None})
            h.full = [
                data_phase(h.settings, h.current.model_copy(update={"data": withheld}))
                for _ in range(args.rounds if h.size < 500_000 else 1)
            ]
    finally:
        for h in histories:
            delete_topics(h.settings.kafka, h.settings.topics, [TRAINING_EXAMPLES])
    rows = [result(h) for h in histories]
    for row in rows:
        print(json.dumps(row), flush=True)
    base = rows[0]
    print("\n| history | tenant's own | recorded candidates (s) | ratio | full read (s) | same sample |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['history']:,} | {r['tenant_history']:,} | {r['recorded_s']:.3f} | "
            f"{float(r['recorded_s']) / float(base['recorded_s']):.2f} | {r['full_read_s']:.2f} | {r['same_sample']} |"
        )
    last = rows[-1]
    ratio = float(last["recorded_s"]) / float(base["recorded_s"])
    print(f"\nratio {last['history']:,} vs {base['history']:,} records: {ratio:.2f} (goal <= 1.2)")
    plot(rows, args.plot)
    print(f"plot: {args.plot}")
    return 0 if all(r["same_sample"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
