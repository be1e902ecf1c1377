from __future__ import annotations

import pytest

from streamtune.contracts import Query
from streamtune.errors import ContractError
from streamtune.prompt import chat_messages, numbered_context, trimmed_context
from streamtune.topics import DOMAIN_EVENTS, QUERIES, TRAINING_EXAMPLES


def test_the_prompt_numbers_the_context_and_cuts_each_passage() -> None:
    context = numbered_context([("Hours", "We open at 9."), ("", "y" * 50)], context_chars=10)
    messages = chat_messages("Answer from the context.", "When?", context)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "Answer from the context.\n\nContext:\n[1] Hours: We open at\n[2] yyyyyyyyyy"
    assert messages[1]["content"] == "When?"
    assert chat_messages("S", "Q", "")[0]["content"].endswith("Context:\n(none)")


def _chars(text: str) -> list[int]:  # one "token" per character: easy to count by eye
    return [ord(c) for c in text]


def _text(ids: list[int]) -> str:
    return "".join(map(chr, ids))


def test_the_context_is_cut_to_the_token_budget_titles_included() -> None:
    passages = [("Title", "abcdef"), ("Long title " * 10, "x" * 100), ("Third", "never reached")]
    whole = numbered_context(passages, 1000)
    assert trimmed_context(passages, 1000, 10_000, _chars, _text) == whole
    cut = trimmed_context(passages, 1000, 40, _chars, _text)
    assert len(_chars(cut)) <= 40
    assert cut.startswith("[1] Title: abcdef\n[2] Long title") and "Third" not in cut
    assert trimmed_context(passages, 1000, 5, _chars, _text) == "[1]"


def test_a_topic_encodes_and_decodes_its_own_model() -> None:
    query = Query(query_id="q-1", tenant="acme", question="Refund window?")
    assert QUERIES.decode(QUERIES.encode(query)) == query
    with pytest.raises(TypeError, match="carries Query"):
        QUERIES.encode(TRAINING_EXAMPLES.value.model_construct())  # type: ignore[union-attr]
    with pytest.raises(ContractError):
        QUERIES.decode(b'{"schema_version": 1, "query_id": "q"}')
    with pytest.raises(TypeError, match="raw bytes"):
        DOMAIN_EVENTS.decode(b"{}")
