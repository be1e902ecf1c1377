"""Ratings of completions (``POST /v1/feedback``): the completions a gateway returned, remembered so that a rating
can be published as ``feedback.recorded`` with its question and answer."""

from __future__ import annotations

import dataclasses
import threading

__all__ = ["CompletionMemory"]


@dataclasses.dataclass
class _Completion:
    tenant: str
    question: str
    answer: str
    rated: bool = False


class CompletionMemory:
    """The last ``http.feedback_memory`` completions this gateway returned, by id, so that a rating can be
    published with the question and the answer it rates (``feedback.recorded`` carries both). Bounded: the
    oldest are forgotten first; a completion forgotten, or returned by another gateway replica, cannot be
    rated here (404 says so), and its rating can still be published as an event by whoever holds it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: dict[str, _Completion] = {}  # insertion order: the oldest first
        self._lock = threading.Lock()

    def remember(self, query_id: str, tenant: str, question: str, answer: str) -> None:
        with self._lock:
            self._items[query_id] = _Completion(tenant, question, answer)
            while len(self._items) > self.capacity:
                del self._items[next(iter(self._items))]

    def get(self, query_id: str) -> _Completion | None:
        with self._lock:
            return self._items.get(query_id)

    def claim(self, query_id: str) -> bool:
        """Mark it rated; False when it already was (one rating per completion)."""
        with self._lock:
            item = self._items.get(query_id)
            if item is None or item.rated:
                return False
            item.rated = True
            return True

    def release(self, query_id: str) -> None:
        """Its rating could not be published: it may be rated again."""
        with self._lock:
            if query_id in self._items:
                self._items[query_id].rated = False
