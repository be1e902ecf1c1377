"""`serve`'s continuous batching: queries join the running batch between decoding steps and leave it when done.

``admit`` prepares arriving queries (adapter, embedding, retrieval, prompt: ``Answerer.prepare``) and starts
those that fit into the running batch (``inference.max_batch`` rows, the adapters of all running rows within
``inference.max_loaded_adapters``); the rest wait in arrival order for a free slot. ``step`` decodes one token
of every running row (``inference.batching.Batcher``) and returns the answers of the rows that ended. A
query whose ``deadline`` passed before its generation starts is answered ``deadline_exceeded`` at once,
without generating, and counted; a row whose deadline passes while it generates is stopped at the next step
and answered the same (``streamtune_generation_cut_total``).

Each row generates with its query's controls (``Row.of``): ``max_tokens`` capped by ``inference.max_new_tokens``,
``stop`` sequences (the answer ends where one first appears, without it) and its ``Sampling`` (``temperature``,
``top_p``, ``seed``); rows with different controls share the batch.

While a row generates, its text goes to ``on_delta`` as it grows, for a query that asked to ``stream``:
decoded from all of the row's tokens so far (a character split across tokens is held back until whole), and
without trailing whitespace, so that the pieces concatenate to exactly the answer's final text. A tail of the
text that a stop sequence could begin with is held back too: no piece ever holds text that turns out to be
(part of) a stop sequence.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inference.adapters import AdapterCache, Announced
from inference.batching import Batcher, Row, TokenEvent
from inference.engine import Answerer, AnswerFailure
from streamtune.contracts import Answer, Query

__all__ = ["Scheduler"]

Delta = Callable[[Query, int, str], None]
"""(query, sequence number, text): a piece of a streamed answer."""


@dataclass
class _Running:
    item: Any  # engine._Item
    started: float
    emitted: str = ""
    seq: int = 0


class Scheduler:
    def __init__(self, answerer: Answerer, on_delta: Delta | None = None) -> None:
        self.answerer = answerer
        self.on_delta = on_delta or (lambda query, seq, text: None)
        tokenizer = answerer.tokenizer
        self.batcher = Batcher(
            lambda: answerer.cache.model,
            eos_ids=[tokenizer.eos_token_id],
            pad_id=tokenizer.pad_token_id,
            mixed_adapters=lambda: bool(answerer.cache.loaded),
            decode=answerer._decode,
            shared_prefix=answerer.prompt_prefix,
        )
        self.waiting: deque[Any] = deque()
        self.running: dict[int, _Running] = {}  # id(row) -> what it answers

    @property
    def busy(self) -> bool:
        return bool(self.batcher.rows or self.waiting)

    @property
    def free(self) -> int:
        """Slots for more queries (the running batch's and the waiting line's)."""
        return max(self.answerer.settings.inference.max_batch - len(self.batcher) - len(self.waiting), 0)

    def admit(self, queries: Sequence[Query], received: Sequence[float]) -> list[Answer]:
        """Prepare ``queries`` and start those that fit; returns the answers already known (errors). With
        ``inference.batching = "static"``, the whole batch is answered here (``Answerer.answer_batch``)."""
        if self.answerer.settings.inference.batching == "static":
            late = [q for q in queries if _expired(q)]
            for query in late:
                self.answerer.metrics.deadline_exceeded.labels(query.tenant).inc()
            live = [q for q in queries if not _expired(q)]
            refused = self.answerer.refuse(late, _DEADLINE_PASSED)
            return refused + (self.answerer.answer_batch(live, [time.monotonic()] * len(live)) if live else [])
        items = self.answerer.prepare(queries, received)
        done = []
        for item in items:
            if item.failure is None and not item.abstained:
                self.waiting.append(item)
            else:
                done.append(item)
        return self.answerer.finish(done) + self._start()

    def step(self) -> list[Answer]:
        """One decoding step of the running batch; the answers of the rows that ended, then start waiting ones.
        Rows whose deadline passed while they generated stop first: nobody waits for them any more."""
        cut = self._cut_expired()
        if self.batcher.rows:
            self.answerer.metrics.batch_size.observe(len(self.batcher))
        finished = self._events(self.batcher.step())
        return cut + finished + self._start()

    # -- internals --------------------------------------------------------------------------------
    def _cut_expired(self) -> list[Answer]:
        """Take the rows whose query's deadline has passed out of the batch, answered ``deadline_exceeded`` (its
        asker has gone: the gateway answered it 503 at its timeout), so that no more tokens are spent on them."""
        now = datetime.now(UTC)  # once per step, not once per row
        gone = self.batcher.drop(lambda row: not _expired(row.key.query, now))
        items = []
        for row in gone:
            item = self.running.pop(id(row)).item
            item.failure = AnswerFailure(
                "deadline_exceeded",
                f"the query's deadline passed during its generation; stopped after {len(row.generated)} tokens",
            )
            self.answerer.metrics.deadline_exceeded.labels(item.query.tenant).inc()
            self.answerer.metrics.generation_cut.labels(item.query.tenant).inc()
            items.append(item)
        return self.answerer.finish(items)

    def _start(self) -> list[Answer]:
        """Start waiting items while there are slots and room for their adapters; the expired are answered."""
        inference = self.answerer.settings.inference
        expired: list[Any] = []
        starting: list[Any] = []
        in_use = {AdapterCache.name(r.item.adapter): r.item.adapter for r in self.running.values()}
        while self.waiting and len(self.batcher) + len(starting) < inference.max_batch:
            item = self.waiting[0]
            if _expired(item.query):
                self.waiting.popleft()
                expired.append(_late(item, self.answerer))
                continue
            name = AdapterCache.name(item.adapter)
            if name not in in_use and len(in_use) >= inference.max_loaded_adapters:
                break  # its adapter waits for a running one to finish (arrival order is kept)
            in_use[name] = item.adapter
            starting.append(self.waiting.popleft())
        answers = self.answerer.finish(expired)
        if not starting:
            return answers
        try:
            self.answerer.cache.ensure([a for a in in_use.values() if isinstance(a, Announced)])
        except ValueError as exc:  # a file changed after its announcement: those queries fail, the rest go on
            for item in starting:
                if item.adapter is not None:
                    item.failure = AnswerFailure("unknown_adapter", str(exc))
            answers += self.answerer.finish([i for i in starting if i.failure is not None])
            starting = [i for i in starting if i.failure is None]
        self.answerer.metrics.adapters_loaded.set(len(self.answerer.cache.loaded))
        rows = []
        now = time.perf_counter()
        for item in starting:
            ids = self.answerer._encode(item.prompt)
            item.prompt_tokens = len(ids)
            row = Row.of(item, ids, AdapterCache.name(item.adapter), item.query, inference.max_new_tokens)
            self.running[id(row)] = _Running(item, now)
            rows.append(row)
        return answers + self._events(self.batcher.add(rows))

    def _events(self, events: list[TokenEvent]) -> list[Answer]:
        finished = []
        for event in events:
            row = event.row
            running = self.running[id(row)]
            item = running.item
            if "first_token" not in item.timings:
                item.timings["first_token"] = (time.perf_counter() - running.started) * 1000
            if row.finish_reason is None:
                if item.query.stream and event.token is not None:
                    text = _stable(_held(self.answerer._decode(row.generated), row.stop))
                    if len(text) > len(running.emitted) and text.startswith(running.emitted):
                        self.on_delta(item.query, running.seq, text[len(running.emitted) :])
                        running.seq += 1
                        running.emitted = text
            else:
                del self.running[id(row)]
                item.text = self.answerer._decode(row.generated)[: row.stop_at].strip()
                item.completion_tokens = len(row.generated)
                item.finish_reason = row.finish_reason
                item.timings["generate"] = (time.perf_counter() - running.started) * 1000
                if (
                    item.query.stream
                    and len(item.text) > len(running.emitted)
                    and item.text.startswith(running.emitted)
                ):
                    self.on_delta(item.query, running.seq, item.text[len(running.emitted) :])
                    running.seq += 1
                item.pieces = running.seq
                finished.append(item)
        return self.answerer.finish(finished)


_DEADLINE_PASSED = AnswerFailure("deadline_exceeded", "the query's deadline passed before its generation started")


def _late(item: Any, answerer: Answerer) -> Any:
    item.failure = _DEADLINE_PASSED
    answerer.metrics.deadline_exceeded.labels(item.query.tenant).inc()
    return item


def _held(text: str, stop: Sequence[str]) -> str:
    """``text`` without its longest tail that a stop sequence begins with: the next tokens may complete it."""
    longest = max(map(len, stop), default=0)
    for start in range(max(len(text) - longest, 0), len(text)):
        if any(s.startswith(text[start:]) for s in stop):
            return text[:start]
    return text


def _stable(text: str) -> str:
    """What of a row's text so far can be sent without being taken back: without leading or trailing whitespace
    (the answer is stripped), and, while it ends in a character split across tokens (U+FFFD), only up to the
    last whitespace (as transformers' TextStreamer holds back a word)."""
    text = text.lstrip()
    if text.endswith("\ufffd"):
        cut = max(text.rfind(" "), text.rfind("\n"))
        text = text[:cut] if cut > 0 else ""
    return text.rstrip()


def _expired(query: Query, now: datetime | None = None) -> bool:
    return query.deadline is not None and (now or datetime.now(UTC)) >= query.deadline
