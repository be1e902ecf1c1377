"""The router's ordering of a streamed answer's pieces and its answer, which two topics deliver apart: records
handed to it as its consumer thread would (no broker: the thread is never started)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from inference import routing
from inference.routing import BlockingWaiter, QueryRouter, unsent
from streamtune.contracts import Answer, AnswerDelta
from streamtune.settings import Settings
from streamtune.topics import ANSWER_DELTAS, ANSWERS


class _Record:
    def __init__(self, topic: str, query_id: str, value: bytes) -> None:
        self._topic, self._key, self._value = topic, query_id.encode(), value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


@pytest.fixture
def router() -> Any:
    made = QueryRouter(Settings())
    yield made
    made._stop.set()  # never started: nothing to join


def _waiting(router: QueryRouter, query_id: str) -> BlockingWaiter:
    waiter = BlockingWaiter()
    with router._lock:
        router._waiting[query_id] = waiter
    return waiter


def _piece(router: QueryRouter, query_id: str, seq: int, text: str) -> Any:
    delta = AnswerDelta(query_id=query_id, seq=seq, text=text)
    return _Record(router.topics[1], query_id, ANSWER_DELTAS.encode(delta))


def _answer(router: QueryRouter, query_id: str, text: str, pieces: int) -> Any:
    return _Record(router.topics[0], query_id, ANSWERS.encode(Answer(query_id=query_id, answer=text, pieces=pieces)))


def _events(waiter: BlockingWaiter) -> list[str]:
    found = []
    while not waiter.events.empty():
        event = waiter.events.get_nowait()
        if isinstance(event, Answer):
            found.append(f"answer:{event.answer}")
        elif isinstance(event, AnswerDelta):
            found.append(f"piece:{event.text}")
    return found


def test_an_answer_that_overtakes_its_pieces_is_held_until_they_come(router: QueryRouter) -> None:
    waiter = _waiting(router, "q-1")
    router._take(_piece(router, "q-1", 0, "We"))
    router._take(_answer(router, "q-1", "We open at 9.", pieces=3))
    assert _events(waiter) == ["piece:We"]  # the answer waits for its two other pieces
    router._take(_piece(router, "q-1", 1, " open"))
    router._take(_piece(router, "q-1", 2, " at 9."))
    assert _events(waiter) == ["piece: open", "piece: at 9.", "answer:We open at 9."]
    assert not router._held and not router._pieces and "q-1" not in router._waiting  # nothing left behind


def test_a_held_answer_goes_out_after_the_grace_without_a_lost_piece(
    router: QueryRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routing, "_PIECES_GRACE_S", 0.05)
    waiter = _waiting(router, "q-2")
    router._take(_answer(router, "q-2", "Closed.", pieces=1))
    router._release_held()
    assert _events(waiter) == []
    time.sleep(0.06)  # the grace is the behaviour under test
    router._release_held()
    assert _events(waiter) == ["answer:Closed."]
    router._take(_piece(router, "q-2", 0, "Closed."))
    assert _events(waiter) == []  # a piece after its answer is dropped


def test_an_answer_not_streamed_or_after_all_its_pieces_goes_out_at_once(router: QueryRouter) -> None:
    plain, streamed = _waiting(router, "q-3"), _waiting(router, "q-4")
    router._take(_answer(router, "q-3", "Yes.", pieces=0))
    router._take(_piece(router, "q-4", 0, "No."))
    router._take(_answer(router, "q-4", "No.", pieces=1))
    assert _events(plain) == ["answer:Yes."]
    assert _events(streamed) == ["piece:No.", "answer:No."]


def test_a_streaming_caller_owes_only_what_the_pieces_lacked() -> None:
    answer = Answer(query_id="q-9", answer="Open until 18:00.")
    assert unsent(answer, "") == "Open until 18:00."  # every piece lost
    assert unsent(answer, "Open until") == " 18:00."  # the last pieces lost
    assert unsent(answer, "Open until 18:00.") == ""  # all came
    assert unsent(answer, "Closed") == ""  # pieces that do not begin the answer: nothing can be appended


def test_a_forgotten_query_drops_its_held_answer(router: QueryRouter) -> None:
    waiter = _waiting(router, "q-5")
    router._take(_answer(router, "q-5", "Late.", pieces=2))
    router.forget("q-5")
    router._release_held()
    assert _events(waiter) == [] and not router._held


def test_queries_are_not_mixed_up(router: QueryRouter) -> None:
    a, b = _waiting(router, "q-a"), _waiting(router, "q-b")
    router._take(_answer(router, "q-a", "A", pieces=1))
    router._take(_piece(router, "q-b", 0, "B"))  # b's piece does not release a's answer
    assert _events(a) == [] and _events(b) == ["piece:B"]
