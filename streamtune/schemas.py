"""The wire contract as JSON Schema, one file per topic and ``schema_version``, generated from the pydantic
models in ``streamtune/contracts.py`` (the one source of truth), and the check that a change keeps a version
compatible.

The files are checked in under ``docs/schemas/`` (``<topic>.v<schema_version>.json``), so that producers in
other languages can validate against them. Within a ``schema_version`` the contract may change only by adding
optional fields (DESIGN.md, "Wire contract"); ``breaking_changes`` lists everything else: a field removed, a
field added as required, an optional field made required (or the reverse), and any change of a type or a
constraint, narrowing or widening (a consumer validating against the old file would refuse the new
messages, or the reverse). Titles, descriptions and examples are documentation and may change freely.

``domain-events.dlq`` has no schema: its values are the original bytes of the refused event, and what the
dead letter adds rides in headers (docs/contract.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from streamtune.contracts import SCHEMA_VERSION, DomainEvent
from streamtune.topics import ALL_TOPICS, DOMAIN_EVENTS, TopicSpec

__all__ = [
    "DIALECT",
    "SchemaDrift",
    "breaking_changes",
    "compare",
    "render",
    "topic_schemas",
    "write_schemas",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_ANNOTATIONS = frozenset({"title", "description", "examples", "$comment"})
"""Documentation only: a change to these never breaks a producer or a consumer."""


def _version(spec: TopicSpec[Any]) -> int:
    if spec.value is None:
        return SCHEMA_VERSION
    return int(spec.value.model_fields["schema_version"].default)


def _schema(spec: TopicSpec[Any]) -> dict[str, Any] | None:
    if spec is DOMAIN_EVENTS:
        schema: dict[str, Any] = TypeAdapter(DomainEvent).json_schema()
    elif spec.value is not None and issubclass(spec.value, BaseModel):
        schema = spec.value.model_json_schema()
    else:
        return None  # raw bytes (dead letters)
    _require_version(schema)
    version = _version(spec)
    return {
        "$schema": DIALECT,
        **schema,
        "title": f"{spec.name} v{version}",
        "description": (
            f"The value of a `{spec.name}` record, schema_version {version} (key: {spec.key}). Generated from "
            "streamtune/contracts.py by `streamtune contracts schemas`; do not edit by hand."
        ),
    }


def _require_version(schema: dict[str, Any]) -> None:
    """Mark ``schema_version`` required where the decoder requires it: on the message itself, and on each
    event of the ``domain-events`` union. The models give it a default (for constructing messages in Python),
    but ``contracts.decode``/``decode_event`` refuse a record without it (``UnsupportedSchemaVersion``)."""
    defs = schema.get("$defs", {})
    variants = [defs[ref["$ref"].removeprefix("#/$defs/")] for ref in schema.get("oneOf", []) if "$ref" in ref]
    for node in [schema, *variants]:
        if "schema_version" in node.get("properties", {}):
            node["required"] = ["schema_version", *[r for r in node.get("required", []) if r != "schema_version"]]


def topic_schemas() -> dict[str, dict[str, Any]]:
    """File name (``<topic>.v<version>.json``) → JSON Schema, for every topic that carries JSON."""
    out = {}
    for spec in ALL_TOPICS:
        schema = _schema(spec)
        if schema is not None:
            out[f"{spec.name}.v{_version(spec)}.json"] = schema
    return out


def render(schema: Mapping[str, Any]) -> str:
    """The exact text of a schema file (stable: sorted keys, two-space indent, final newline)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(out: Path) -> list[Path]:
    """Write every topic's schema into ``out`` (created if missing); return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in topic_schemas().items():
        path = out / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


# -- compatibility ---------------------------------------------------------------------------------------------


def _inline(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every local ``$ref`` replaced by its definition (a recursive one stays a named ref) and
    the discriminator's mapping reduced to its keys, so that renaming a model is not a change."""
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/$defs/"):
        name = node["$ref"].removeprefix("#/$defs/")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if name in seen or name not in defs:
            return {"$ref": name, **_inline(siblings, defs, seen)}
        return _inline({**defs[name], **siblings}, defs, (*seen, name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {prop: _inline(schema, defs, seen) for prop, schema in value.items()}
        elif key == "discriminator" and isinstance(value, dict):
            out[key] = {"propertyName": value.get("propertyName"), "mapping": sorted(value.get("mapping", {}))}
        else:
            out[key] = _inline(value, defs, seen)
    return out


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _diff(old: Any, new: Any, at: str, found: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        _diff_schema(old, new, at, found)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{at}[{i}]", found)
    elif old != new:
        found.append(f"{at}: changed from {_shown(old)} to {_shown(new)}")


def _diff_schema(old: dict[str, Any], new: dict[str, Any], at: str, found: list[str]) -> None:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
    for name in sorted(old_props):
        where = f"{at}.{name}"
        if name not in new_props:
            found.append(f"{where}: field removed")
            continue
        if name in new_req and name not in old_req:
            found.append(f"{where}: optional field became required")
        elif name in old_req and name not in new_req:
            found.append(f"{where}: required field became optional (consumers rely on it being there)")
        _diff(old_props[name], new_props[name], where, found)
    for name in sorted(set(new_props) - set(old_props)):
        if name in new_req:
            found.append(f"{at}.{name}: required field added (old producers do not send it)")
    # Required names that are not properties (pydantic does not write these, but a hand-made schema may).
    for name in sorted((old_req ^ new_req) - set(old_props) - set(new_props)):
        found.append(f"{at}: `required` changed for {name!r}")
    keys = (set(old) | set(new)) - _ANNOTATIONS - {"properties", "required"}
    for key in sorted(keys):
        if key not in new:
            found.append(f"{at}: `{key}` removed (was {_shown(old[key])})")
        elif key not in old:
            found.append(f"{at}: `{key}` added ({_shown(new[key])})")
        else:
            _diff(old[key], new[key], f"{at}/{key}", found)


def breaking_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every difference between two schemas of one ``schema_version`` that is not an added optional field (or a
    documentation change), one line each naming where; empty when ``new`` is compatible with ``old``."""
    found: list[str] = []
    _diff(_inline(dict(old), old.get("$defs", {})), _inline(dict(new), new.get("$defs", {})), "$", found)
    return found


class SchemaDrift:
    """How a folder of schema files compares with the ones the models generate now."""

    def __init__(self) -> None:
        self.breaking: dict[str, list[str]] = {}
        """File → its breaking changes."""
        self.stale: list[str] = []
        """Files that differ compatibly (added optional fields, documentation): regenerate them."""
        self.missing: list[str] = []
        """Generated files the folder lacks (a new topic or a new ``schema_version``)."""

    @property
    def clean(self) -> bool:
        return not (self.breaking or self.stale or self.missing)

    def describe(self, folder: Path) -> str:
        lines = []
        for name, changes in sorted(self.breaking.items()):
            lines.append(f"{folder / name}: {len(changes)} breaking change(s) for its schema_version:")
            lines.extend(f"  {change}" for change in changes)
        if self.breaking:
            lines.append(
                "Within a schema_version only optional fields may be added: make the field optional, or add a "
                "new schema_version (DESIGN.md, 'Wire contract')."
            )
        lines.extend(f"{folder / name}: missing" for name in self.missing)
        lines.extend(f"{folder / name}: out of date (compatible)" for name in self.stale)
        if self.stale or self.missing:
            lines.append(f"Regenerate: streamtune contracts schemas --out {folder}")
        return "\n".join(lines) or f"{folder}: up to date"


def compare(folder: Path, generated: Mapping[str, Mapping[str, Any]] | None = None) -> SchemaDrift:
    """Compare the schema files in ``folder`` with ``generated`` (default: what the models generate now)."""
    drift = SchemaDrift()
    for name, schema in (generated or topic_schemas()).items():
        path = folder / name
        if not path.is_file():
            drift.missing.append(name)
            continue
        text = path.read_text(encoding="utf-8")
        changes = breaking_changes(json.loads(text), schema)
        if changes:
            drift.breaking[name] = changes
        elif text != render(schema):
            drift.stale.append(name)
    return drift
