from __future__ import annotations

import pytest

from streamtune.contracts import Query
from streamtune.errors import ContractError
from streamtune.prompt import chat_messages
from streamtune.topics import DOMAIN_EVENTS, QUERIES, TRAINING_EXAMPLES


def test_the_prompt_numbers_the_context_and_cuts_each_passage() -> None:
    messages = chat_messages(
        "Answer from the context.", "When?", [("Hours", "We open at 9."), ("", "y" * 50)], context_chars=10
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "Answer from the context.\n\nContext:\n[1] Hours: We open at\n[2] yyyyyyyyyy"
    assert messages[1]["content"] == "When?"
    assert chat_messages("S", "Q", [], 10)[0]["content"].endswith("Context:\n(none)")


def test_a_topic_encodes_and_decodes_its_own_model() -> None:
    query = Query(query_id="q-1", tenant="acme", question="Refund window?")
    assert QUERIES.decode(QUERIES.encode(query)) == query
    with pytest.raises(TypeError, match="carries Query"):
        QUERIES.encode(TRAINING_EXAMPLES.value.model_construct())  # type: ignore[union-attr]
    with pytest.raises(ContractError):
        QUERIES.decode(b'{"schema_version": 1, "query_id": "q"}')
    with pytest.raises(TypeError, match="raw bytes"):
        DOMAIN_EVENTS.decode(b"{}")
