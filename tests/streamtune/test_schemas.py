"""The contract as JSON Schema: the checked-in files follow the models, no change breaks a schema_version, the
compatibility checker catches every kind of break, and the files accept what the decoder accepts."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from streamtune.cli.main import main
from streamtune.contracts import ChatMessage, Query, TrainingExample, decode_event, encode
from streamtune.schemas import breaking_changes, compare, render, topic_schemas, write_schemas

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "schemas"
REGENERATE = "regenerate with: streamtune contracts schemas --out docs/schemas"


def test_every_json_topic_has_a_checked_in_schema_per_version() -> None:
    assert sorted(topic_schemas()) == sorted(p.name for p in CHECKED_IN.glob("*.json")), REGENERATE
    assert "domain-events.v1.json" in topic_schemas()
    assert not any(name.startswith("domain-events.dlq") for name in topic_schemas())  # raw bytes: no schema


@pytest.mark.parametrize("name", sorted(topic_schemas()))
def test_no_change_breaks_the_checked_in_schema_version(name: str) -> None:
    """A model change that does more than add an optional field fails here, naming each break."""
    path = CHECKED_IN / name
    assert path.is_file(), f"{path} missing: a new topic or schema_version; {REGENERATE}"
    changes = breaking_changes(json.loads(path.read_text()), topic_schemas()[name])
    assert not changes, f"{name} would break schema_version readers:\n" + "\n".join(changes)


@pytest.mark.parametrize("name", sorted(topic_schemas()))
def test_checked_in_schemas_are_not_stale(name: str) -> None:
    assert (CHECKED_IN / name).read_text() == render(topic_schemas()[name]), f"{name} is out of date; {REGENERATE}"


# -- the checker on crafted pairs ------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "$defs": {
        "Citation": {
            "properties": {"doc_id": {"type": "string", "title": "Doc Id"}, "score": {"type": "number"}},
            "required": ["doc_id", "score"],
            "type": "object",
        }
    },
    "properties": {
        "schema_version": {"const": 1, "type": "integer"},
        "query_id": {"type": "string", "minLength": 1, "maxLength": 512},
        "kind": {"enum": ["a", "b"], "type": "string"},
        "top_k": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None},
        "citations": {"items": {"$ref": "#/$defs/Citation"}, "type": "array"},
    },
    "required": ["schema_version", "query_id"],
    "type": "object",
}


def changed(edit: Any) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    edit(new)
    return new


def test_identical_and_documentation_changes_are_compatible() -> None:
    assert breaking_changes(BASE, copy.deepcopy(BASE)) == []

    def document(s: dict[str, Any]) -> None:
        s["description"] = "new words"
        s["properties"]["query_id"]["title"] = "The query"
        s["$defs"]["Citation"]["description"] = "a source"

    assert breaking_changes(BASE, changed(document)) == []


def test_added_optional_fields_are_compatible_even_nested_and_with_new_definitions() -> None:
    def add(s: dict[str, Any]) -> None:
        s["properties"]["adapter"] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
        s["$defs"]["Citation"]["properties"]["chunk_id"] = {"type": "string"}
        s["$defs"]["Timing"] = {"properties": {"ms": {"type": "number"}}, "required": ["ms"], "type": "object"}
        s["properties"]["timing"] = {"anyOf": [{"$ref": "#/$defs/Timing"}, {"type": "null"}], "default": None}

    assert breaking_changes(BASE, changed(add)) == []


def test_a_renamed_definition_is_not_a_change() -> None:
    def rename(s: dict[str, Any]) -> None:
        s["$defs"]["Source"] = s["$defs"].pop("Citation")
        s["properties"]["citations"]["items"] = {"$ref": "#/$defs/Source"}

    assert breaking_changes(BASE, changed(rename)) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s["properties"].pop("top_k"), "$.top_k: field removed"),
        (lambda s: s["required"].remove("query_id"), "$.query_id: required field became optional"),
        (lambda s: s["required"].append("top_k"), "$.top_k: optional field became required"),
        (
            lambda s: (s["properties"].update(tenant={"type": "string"}), s["required"].append("tenant")),
            "$.tenant: required field added",
        ),
        (lambda s: s["properties"]["query_id"].update(type="integer"), '$.query_id/type: changed from "string"'),
        (lambda s: s["properties"]["query_id"].update(maxLength=64), "$.query_id/maxLength: changed from 512 to 64"),
        (lambda s: s["properties"]["query_id"].update(pattern="^q-"), "$.query_id: `pattern` added"),
        (lambda s: s["properties"]["kind"].update(enum=["a"]), "$.kind/enum: changed"),
        (lambda s: s["properties"]["top_k"]["anyOf"].pop(), "$.top_k/anyOf: changed"),
        (lambda s: s["properties"]["top_k"]["anyOf"][0].update(minimum=5), "$.top_k/anyOf[0]/minimum: changed"),
        (lambda s: s["properties"]["top_k"].update(default=4), "$.top_k/default: changed from null to 4"),
        (lambda s: s["properties"]["schema_version"].update(const=2), "$.schema_version/const: changed from 1 to 2"),
        (lambda s: s["$defs"]["Citation"]["properties"].pop("score"), "$.citations/items.score: field removed"),
        (
            lambda s: s["$defs"]["Citation"]["properties"]["score"].update(type="integer"),
            "$.citations/items.score/type: changed",
        ),
        (lambda s: s["$defs"]["Citation"].update(additionalProperties=False), "`additionalProperties` added"),
    ],
    ids=[
        "field removed",
        "required became optional",
        "optional became required",
        "required field added",
        "type changed",
        "max length narrowed",
        "pattern added",
        "enum value removed",
        "union narrowed",
        "minimum raised",
        "default changed",
        "const changed",
        "nested field removed",
        "nested type changed",
        "extra fields refused",
    ],
)
def test_breaking_changes_are_each_caught_and_named(edit: Any, expected: str) -> None:
    changes = breaking_changes(BASE, changed(edit))
    assert changes, "a breaking change passed the checker"
    assert any(c.startswith(expected) or expected in c for c in changes), changes


def test_the_real_contract_checker_catches_a_field_removed_from_a_generated_schema(tmp_path: Path) -> None:
    """On the generated files themselves: drop a field from the checked-in domain-events union, and the
    comparison (as the test above and `contracts schemas --check` run it) reports it."""
    schemas = topic_schemas()
    shrunk = copy.deepcopy(schemas)
    del shrunk["domain-events.v1.json"]["$defs"]["QaRecordedData"]["properties"]["context_doc_ids"]
    for name, schema in shrunk.items():
        (tmp_path / name).write_text(render(schema))
    # the files hold the smaller schema; the models now generate one with an extra optional field: compatible
    drift = compare(tmp_path, schemas)
    assert not drift.breaking and drift.stale == ["domain-events.v1.json"]
    # the other way round: the files have the field, the "models" lost it: breaking
    write_schemas(tmp_path)
    drift = compare(tmp_path, shrunk)
    assert list(drift.breaking) == ["domain-events.v1.json"]
    assert any("context_doc_ids: field removed" in c for c in drift.breaking["domain-events.v1.json"])


def test_cli_refuses_to_overwrite_with_a_breaking_change_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["contracts", "schemas", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(topic_schemas())
    assert main(["contracts", "schemas", "--out", str(tmp_path), "--check"]) == 0
    widened = json.loads((tmp_path / "queries.v1.json").read_text())
    widened["properties"]["question"]["maxLength"] = 10  # the files say 10; the model has no limit: a change
    (tmp_path / "queries.v1.json").write_text(render(widened))
    capsys.readouterr()
    assert main(["contracts", "schemas", "--out", str(tmp_path), "--check"]) == 1
    assert main(["contracts", "schemas", "--out", str(tmp_path)]) == 1  # refused: nothing written
    assert json.loads((tmp_path / "queries.v1.json").read_text())["properties"]["question"]["maxLength"] == 10
    assert "question: `maxLength` removed" in capsys.readouterr().out
    assert main(["contracts", "schemas", "--out", str(tmp_path), "--allow-breaking"]) == 0
    assert main(["contracts", "schemas", "--out", str(tmp_path), "--check"]) == 0


# -- the files accept what the decoder accepts -----------------------------------------------------------------


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((CHECKED_IN / name).read_text()))


def test_checked_in_schemas_validate_real_messages_and_refuse_what_the_decoder_refuses() -> None:
    event = {
        "schema_version": 1,
        "event_id": "e-1",
        "type": "qa.recorded",
        "tenant": "acme",
        "occurred_at": "2026-11-21T10:00:00Z",
        "data": {"question": "Refund window?", "answer": "30 days."},
    }
    decode_event(json.dumps(event).encode())  # the decoder takes it ...
    events = _validator("domain-events.v1.json")
    assert list(events.iter_errors(event)) == []  # ... and so does the schema
    for bad in (
        {k: v for k, v in event.items() if k != "schema_version"},  # the decoder refuses a missing version
        {**event, "type": "qa.forgotten"},
        {**event, "data": {"question": "Refund window?"}},
        {**event, "tenant": "no spaces allowed"},
    ):
        assert list(events.iter_errors(bad)), bad
    example = TrainingExample(
        example_id="x-1",
        tenant="acme",
        messages=[ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a")],
        source_event_id="e-1",
        created_at=datetime(2026, 11, 21, tzinfo=UTC),
    )
    assert list(_validator("training-examples.v1.json").iter_errors(json.loads(encode(example)))) == []
    query = json.loads(encode(Query(query_id="q-1", question="Refund window?")))
    assert list(_validator("queries.v1.json").iter_errors(query)) == []
    assert list(_validator("queries.v1.json").iter_errors({**query, "top_k": 0}))
