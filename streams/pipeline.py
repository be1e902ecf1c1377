"""Batches of a keyed stream worked on a few at a time, their results taken in the order they started.

The ingest operator hands each full batch to a ``Pipeline`` so that the next batch is planned and encoded
while one is written to Weaviate. The promise: at most ``limit`` batches run at once (``start`` waits for
room, which is the job's backpressure); a partition's results come out in the order its batches started, and
only once every earlier batch of that partition is done; each batch's work is handed the batch of its
partition started before it (``after``), so that it can wait for it before the steps that must keep the
stream's order (Weaviate's writes); a batch that failed raises its exception in the caller, at the next
``start`` or when its results are taken. Free of Flink: what is in flight is the caller's to checkpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

__all__ = ["Pipeline"]

Work = Callable[["Future[Any] | None"], Any]


class Pipeline:
    def __init__(self, limit: int, thread_name_prefix: str) -> None:
        self.limit = limit
        self._executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=thread_name_prefix)
        self._batches: dict[Hashable, deque[Future[Any]]] = {}

    def first_sight(self, partition: Hashable) -> bool:
        """True the first time ``partition`` is named: batches the caller holds for it were not started here
        (a restart restored them), and it should start them again before new ones."""
        if partition in self._batches:
            return False
        self._batches[partition] = deque()
        return True

    def start(self, partition: Hashable, work: Work) -> None:
        """Run ``work(after)`` once fewer than ``limit`` batches run; ``after`` is the partition's batch started
        before this one (None if none is in flight)."""
        self._make_room()
        batches = self._batches.setdefault(partition, deque())
        batches.append(self._executor.submit(work, batches[-1] if batches else None))

    def finished(self, partition: Hashable) -> Iterator[Any]:
        """The results of the partition's batches that are done, oldest first, up to the first still running."""
        batches = self._batches.get(partition, deque())
        while batches and batches[0].done():
            yield batches.popleft().result()

    def in_flight(self, partition: Hashable) -> int:
        """How many of the partition's batches have started and not yet been taken by ``finished``."""
        return len(self._batches.get(partition, ()))

    def close(self) -> None:
        """Start nothing more; running work is left to end on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _make_room(self) -> None:
        while True:
            started = [batch for batches in self._batches.values() for batch in batches]
            for batch in started:
                if batch.done() and batch.exception() is not None:
                    batch.result()  # fail now, not when its partition is next seen
            running = [batch for batch in started if not batch.done()]
            if len(running) < self.limit:
                return
            wait(running, return_when=FIRST_COMPLETED)
