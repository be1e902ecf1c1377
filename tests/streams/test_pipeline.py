"""The ingest operator's pipeline: bounded, ordered per partition, failures raised in the caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from typing import Any

import pytest

from streams.pipeline import Pipeline

WAIT_S = 10


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    made = Pipeline(2, "test-batch")
    yield made
    made.close()


def _finished(pipeline: Pipeline, partition: str, count: int) -> list[Any]:
    """The partition's finished results, waiting (at most WAIT_S) until ``count`` have come out."""
    results: list[Any] = []
    deadline = time.monotonic() + WAIT_S
    while len(results) < count and time.monotonic() < deadline:
        results += pipeline.finished(partition)
        time.sleep(0.01)
    return results


def gated(gate: threading.Event, result: Any) -> Any:
    def work(after: Future[Any] | None) -> Any:
        assert gate.wait(WAIT_S)
        return result

    return work


def test_results_come_out_in_the_order_their_batches_started(pipeline: Pipeline) -> None:
    first, second = threading.Event(), threading.Event()
    pipeline.start("p0", gated(first, "batch 1"))
    pipeline.start("p0", gated(second, "batch 2"))
    second.set()  # the later batch ends first
    assert list(pipeline.finished("p0")) == []
    assert pipeline.in_flight("p0") == 2
    first.set()
    done = threading.Event()
    pipeline.start("p1", lambda after: done.set())  # room again once both ended
    assert done.wait(WAIT_S)
    assert _finished(pipeline, "p0", 2) == ["batch 1", "batch 2"]  # the room may be batch 2's: wait for batch 1
    assert pipeline.in_flight("p0") == 0


def test_each_batch_is_handed_its_partitions_batch_before_it(pipeline: Pipeline) -> None:
    handed: dict[int, Future[Any] | None] = {}
    ran = {batch: threading.Event() for batch in (1, 2, 3)}

    def work(batch: int) -> Any:
        def run(after: Future[Any] | None) -> int:
            handed[batch] = after
            ran[batch].set()
            return batch

        return run

    pipeline.start("p0", work(1))
    pipeline.start("p1", work(2))
    pipeline.start("p0", work(3))
    assert all(event.wait(WAIT_S) for event in ran.values())
    assert handed[1] is None and handed[2] is None  # partitions are independent
    previous = handed[3]
    assert previous is not None and previous.result(WAIT_S) == 1


def test_start_waits_while_limit_batches_run(pipeline: Pipeline) -> None:
    gate = threading.Event()
    pipeline.start("p0", gated(gate, 1))
    pipeline.start("p1", gated(gate, 2))
    third_started = threading.Event()

    def third() -> None:
        pipeline.start("p2", lambda after: 3)
        third_started.set()

    caller = threading.Thread(target=third)
    caller.start()
    assert not third_started.wait(0.3)  # two run: the third waits for room
    gate.set()
    assert third_started.wait(WAIT_S)
    caller.join(WAIT_S)
    # the third starts once one of the two has finished: the other may still be finishing, so wait for it
    assert [_finished(pipeline, p, 1) for p in ("p0", "p1")] == [[1], [2]]


def test_a_failed_batch_raises_in_the_caller(pipeline: Pipeline) -> None:
    gate, after_it = threading.Event(), threading.Event()

    def fails(after: Future[Any] | None) -> None:
        assert gate.wait(WAIT_S)
        raise RuntimeError("Weaviate stayed down")

    pipeline.start("p0", fails)
    pipeline.start("p0", lambda after: (wait([after]), after_it.set()))
    gate.set()
    assert after_it.wait(WAIT_S)  # the failed batch has ended
    with pytest.raises(RuntimeError, match="stayed down"):
        pipeline.start("p1", lambda after: None)  # at once, whichever partition comes next
    with pytest.raises(RuntimeError, match="stayed down"):
        list(pipeline.finished("p0"))


def test_a_partition_is_new_once(pipeline: Pipeline) -> None:
    assert pipeline.first_sight("p0")
    assert not pipeline.first_sight("p0")
    pipeline.start("p1", lambda after: None)
    assert not pipeline.first_sight("p1")
