"""OpenAI chat JSONL in and out: every bad line refused with its line number and class, the valid ones published
as qa.recorded events, and a version's examples exported as the same JSONL (import ∘ export round-trips)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from streamtune.cli import examples as examples_cli
from streamtune.contracts import ChatMessage, QaRecorded, TrainingExample, decode_event
from streamtune.kafka import committed_end_offsets, producer, read_range
from streamtune.prompt import PromptFormat
from streamtune.settings import Settings, TrainingSettings, load_settings
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name
from training.jsonl import (
    ERROR_CLASSES,
    Exchange,
    LineProblem,
    check_lines,
    event_id,
    example_line,
    export_version,
    import_jsonl,
    parse_line,
    token_counter,
)
from training.registry import RegistryError


def chat(*turns: tuple[str, object], **extra: object) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra})


VALID = [
    chat(("user", f"How long is the refund window for order {i}?"), ("assistant", f"{30 + i} days.")) for i in range(8)
]
# line number (1-based) -> (error class, raw line); the valid lines fill the remaining numbers
BAD: dict[int, tuple[str, str]] = {
    2: ("invalid_json", '{"messages": [{"role": "user", "content": "hi"}'),
    4: ("not_an_object", '["user", "hi"]'),
    5: ("missing_messages", '{"prompt": "hi", "completion": "there"}'),
    7: ("missing_messages", '{"messages": []}'),
    8: ("invalid_message", '{"messages": ["hi", {"role": "assistant", "content": "there"}]}'),
    10: (
        "unrecognized_key",
        '{"messages": [{"role": "user", "content": "hi", "tool_calls": []}, '
        '{"role": "assistant", "content": "there"}]}',
    ),
    11: ("unknown_role", chat(("customer", "hi"), ("assistant", "there"))),
    13: ("unknown_role", '{"messages": [{"content": "hi"}, {"role": "assistant", "content": "there"}]}'),
    14: ("missing_content", '{"messages": [{"role": "user"}, {"role": "assistant", "content": "there"}]}'),
    15: ("missing_content", chat(("user", "hi"), ("assistant", None))),
    17: ("missing_content", chat(("user", "   "), ("assistant", "there"))),
    18: ("no_assistant_last", chat(("assistant", "hello"), ("user", "hi"))),
    19: ("no_assistant_last", chat(("system", "be brief"), ("user", "hi"))),
    21: ("unsupported_turns", chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))),
    22: ("unsupported_turns", chat(("user", "a"), ("system", "b"), ("assistant", "c"))),
    23: ("unsupported_turns", chat(("user", "a"), ("user", "b"), ("assistant", "c"))),
    25: ("contract_refused", chat(("user", "q"), ("assistant", "x" * 20_001))),
}
SYSTEM_LINE = chat(("system", "You are terse."), ("user", "Do you ship to Norway?"), ("assistant", "Yes."))
PII_LINE = chat(("user", "Who handles refunds?"), ("assistant", "Write to jane.doe@example.com within 30 days."))
PARTS_LINE = json.dumps(
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Open on "}, {"type": "text", "text": "Sundays?"}]},
            {"role": "assistant", "content": "No.", "weight": 1},
        ]
    }
)


def sample_file() -> tuple[list[str], dict[int, str]]:
    """The lines of a file, and per valid line number its line; duplicates and a blank line included."""
    extras = [SYSTEM_LINE, PII_LINE, PARTS_LINE, VALID[0]]  # VALID[0] again: a duplicate
    good = iter([*VALID, *extras])
    lines: list[str] = []
    valid: dict[int, str] = {}
    total = max(BAD) + len(VALID) + len(extras) + 1
    for number in range(1, total + 1):
        if number in BAD:
            lines.append(BAD[number][1])
        elif number == 20:
            lines.append("   ")  # blank: skipped, counted, not an error
        else:
            line = next(good, None)
            if line is None:
                break
            lines.append(line)
            valid[number] = line
    return lines, valid


# -- the checks, pure ------------------------------------------------------------------------------------------


def test_every_bad_line_is_refused_with_its_line_number_and_class() -> None:
    lines, valid = sample_file()
    report = check_lines(lines)
    assert [(p.line, p.error_class) for p in report.refused] == [(n, c) for n, (c, _) in sorted(BAD.items())]
    assert [e.line for e in report.valid] == sorted(valid)
    assert report.blank == 1 and report.lines == len(lines) - 1
    assert report.lines == len(report.valid) + len(report.refused)  # every non-blank line has one outcome
    assert {c for c, _ in BAD.values()} <= set(ERROR_CLASSES)
    warnings = {(p.line, p.error_class) for p in report.warnings}
    system_line = next(n for n, line in valid.items() if line == SYSTEM_LINE)
    duplicate = max(n for n, line in valid.items() if line == VALID[0])
    assert warnings == {(system_line, "system_dropped"), (duplicate, "duplicate")}
    assert len(report.unique) == len(report.valid) - 1
    assert report.counts()["missing_content"] == sum(1 for c, _ in BAD.values() if c == "missing_content")


def test_refusals_say_precisely_where_and_why() -> None:
    def refused(raw: bytes | str) -> LineProblem:
        parsed = parse_line(raw, 7)
        assert isinstance(parsed, LineProblem), parsed
        assert parsed.line == 7
        return parsed

    assert "column" in refused(BAD[2][1]).message
    assert refused(BAD[11][1]).message.startswith('messages[0] role is "customer"')
    assert refused(BAD[13][1]).message.startswith("messages[0] has no role")
    assert "'tool_calls'" in refused(BAD[10][1]).message
    assert "messages[1] (assistant)" in refused(BAD[15][1]).message
    assert "user → assistant → user → assistant" in refused(BAD[21][1]).message
    assert refused(BAD[25][1]).message.startswith("answer:")
    assert refused(chat(("user", "q"), ("assistant", "a")).replace('"a"}', '"a", "weight": 0}')).error_class == (
        "no_assistant_last"
    )
    assert refused(b'{"messages": "\xff"}').error_class == "invalid_json"


def test_a_valid_line_maps_to_one_exchange_and_leading_system_messages_are_dropped() -> None:
    assert parse_line(SYSTEM_LINE, 3) == Exchange(3, "Do you ship to Norway?", "Yes.", system_dropped=True)
    assert parse_line(PARTS_LINE, 4) == Exchange(4, "Open on Sundays?", "No.")
    # the same exchange gets the same event id (a re-import duplicates nothing); another tenant another one
    assert event_id("acme", "q", "a") == event_id("acme", "q", "a") != event_id("other", "q", "a")


def test_exported_lines_import_back_as_the_same_exchanges() -> None:
    example = TrainingExample(
        example_id="x",
        messages=[
            ChatMessage(role="user", content="Ünïcode ok?\u2028yes"),
            ChatMessage(role="assistant", content="Ja."),
        ],
        source_event_id="e",
    )
    line = example_line(example)
    assert parse_line(line, 1) == Exchange(1, "Ünïcode ok?\u2028yes", "Ja.")
    assert check_lines([line.encode() + b"\r"]).valid == [Exchange(1, "Ünïcode ok?\u2028yes", "Ja.")]


@pytest.mark.slow
def test_too_long_is_measured_as_the_trainer_renders_it(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from training.trainer import conversation_rows

    settings = load_settings(config_files=[], models={"base_model": str(tiny_model)})
    count = token_counter(settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    form = PromptFormat.of(settings)
    short, long = ("Refund window?", "30 days."), ("Refund window? " * 20, "Thirty days from delivery. " * 20)

    def trainer_tokens(question: str, answer: str) -> int:
        example = TrainingExample(
            example_id="x",
            messages=[ChatMessage(role="user", content=question), ChatMessage(role="assistant", content=answer)],
            source_event_id="e",
        )
        row = conversation_rows([example], form, tokenizer)[0]
        text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert count(*short) == trainer_tokens(*short)
    assert count(*long) == trainer_tokens(*long) > count(*short)
    limit = (count(*short) + count(*long)) // 2
    lines = [chat(("user", short[0]), ("assistant", short[1])), chat(("user", long[0]), ("assistant", long[1]))]
    report = check_lines(lines, count_tokens=count, max_length=limit)
    assert [e.line for e in report.valid] == [1]
    assert [(p.line, p.error_class) for p in report.refused] == [(2, "too_long")]
    assert f"{count(*long)} tokens" in report.refused[0].message and f"max_length={limit}" in report.refused[0].message


# -- on the real Kafka, through a real refresh -----------------------------------------------------------------


@pytest.fixture
def jsonl_settings(trainer_settings: Settings) -> Settings:
    """The refresh tests' deployment (tests/training/conftest.py), with a shorter refresh and the default
    learning rate and replay sample: these tests are about what goes in and comes out, not what is learnt."""
    defaults = TrainingSettings()
    training = trainer_settings.training.model_copy(
        update={
            "max_steps": 4,
            "eval_max_new_tokens": 4,
            "learning_rate": defaults.learning_rate,
            "replay_sample": defaults.replay_sample,
        }
    )
    return trainer_settings.model_copy(update={"training": training})


def ingest_qa(settings: Settings) -> int:
    """What the ingest job does with qa.recorded events, without Flink and Weaviate: its per-record logic
    (``streams.processing.plan_batch``: contract, PII scrubbing, example ids) with an empty context lookup,
    written to training-examples. The job itself is tested in tests/streams."""
    from transformers import AutoTokenizer

    from streams.chunking import Chunker
    from streams.processing import RawRecord, add_context, plan_batch

    source = topic_name(DOMAIN_EVENTS, settings.topics)
    ends = committed_end_offsets(settings.kafka, source)
    records = [
        RawRecord(m.key(), m.value(), source, m.partition() or 0, m.offset() or 0)
        for m in read_range(settings.kafka, source, {p: (0, e) for p, e in ends.items()})
    ]
    chunker = Chunker(AutoTokenizer.from_pretrained(settings.models.base_model), 64, 8)
    result = plan_batch(records, settings.streams, chunker)
    add_context(result, lambda requests: [[] for _ in requests])
    assert not result.dead_letters, [d.error_message for d in result.dead_letters]
    out = producer(settings.kafka)
    for example in result.examples:
        out.produce(
            topic_name(TRAINING_EXAMPLES, settings.topics),
            key=example.example_id.encode(),
            value=TRAINING_EXAMPLES.encode(example),
        )
    assert out.flush(15) == 0
    return len(result.examples)


@pytest.mark.integration
@pytest.mark.slow
def test_import_reports_publishes_valid_lines_and_export_returns_them(
    jsonl_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.processing import scrubber_for
    from training.refresh import refresh

    settings = jsonl_settings
    lines, valid = sample_file()
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # the CLI: the report names every refused line with its class, and says what was published
    args = argparse.Namespace(file=path, tenant="acme", check_length=True, dry_run=False, source=None)
    assert examples_cli.import_file(settings, args) == 1  # some lines were refused
    printed = capsys.readouterr().out
    unique = len(valid) - 1
    events_topic = topic_name(DOMAIN_EVENTS, settings.topics)
    assert printed.splitlines()[0] == (
        f"{path}: {len(lines) - 1} lines (1 blank skipped), {len(valid)} valid (1 duplicate published once), "
        f"{len(BAD)} refused; {unique} qa.recorded events published to {events_topic} for tenant acme"
    )
    for number, (error_class, _) in BAD.items():
        assert any(line.split()[:3] == ["line", str(number), error_class] for line in printed.splitlines()), number

    # exactly the valid exchanges are on domain-events, as qa.recorded events of the tenant
    ends = committed_end_offsets(settings.kafka, events_topic)
    records = read_range(settings.kafka, events_topic, {p: (0, e) for p, e in ends.items()})
    events = [decode_event(m.value() or b"") for m in records]
    assert len(events) == unique
    assert all(isinstance(e, QaRecorded) and e.tenant == "acme" for e in events)
    parsed = [parse_line(line, n) for n, line in valid.items()]
    exchanges = {(x.question, x.answer) for x in parsed if isinstance(x, Exchange)}
    assert len(exchanges) == unique
    assert {(e.data.question, e.data.answer) for e in events if isinstance(e, QaRecorded)} == exchanges

    # importing the same file again publishes the same event ids: training reads each example once
    again = import_jsonl(settings, path, "acme", check_length=False)
    assert again.published == unique

    assert ingest_qa(settings) == 2 * unique
    outcome = refresh(settings, "acme", say=lambda _: None)
    assert outcome.manifest is not None, (outcome.status, outcome.reason)
    assert outcome.manifest.data.new_examples == unique

    # export: exactly the imported valid exchanges (PII scrubbed by the job), count-exact
    scrub = scrubber_for(settings.streams)
    expected = sorted(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": scrub.scrub(q)[0]},
                    {"role": "assistant", "content": scrub.scrub(a)[0]},
                ]
            },
            ensure_ascii=False,
        )
        for q, a in exchanges
    )
    assert main_export(settings, tmp_path / "out.jsonl", version=outcome.version, part="all") == expected
    assert not any("jane.doe@example.com" in line for line in expected)  # the scrubbing applied
    exported = export_version(settings, "acme", outcome.version)
    assert len(export_version(settings, "acme", outcome.version, "train").examples) == outcome.manifest.data.train
    assert len(export_version(settings, "acme", outcome.version, "held-out").examples) == outcome.manifest.data.held_out

    # import ∘ export: the exported file imports back as the same exchanges, all valid
    back = check_lines(exported.lines())
    assert not back.refused and not back.warnings
    assert sorted(example_line_of(e) for e in back.valid) == expected

    with pytest.raises(RegistryError, match="no adapter version 'v9999'"):
        export_version(settings, "acme", "v9999")
    with pytest.raises(RegistryError, match="no current adapter version"):
        export_version(settings, "nobody")


def example_line_of(exchange: Exchange) -> str:
    messages = [{"role": "user", "content": exchange.question}, {"role": "assistant", "content": exchange.answer}]
    return json.dumps({"messages": messages}, ensure_ascii=False)


def main_export(settings: Settings, out: Path, *, version: str | None, part: str) -> list[str]:
    args = argparse.Namespace(tenant="acme", version=version, split=part, out=out)
    assert examples_cli.export(settings, args) == 0
    return sorted(out.read_text(encoding="utf-8").splitlines())


@pytest.mark.integration
def test_dry_run_publishes_nothing(jsonl_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(VALID[:3]) + "\n" + BAD[2][1] + "\n", encoding="utf-8")
    report = import_jsonl(jsonl_settings, path, "acme", check_length=False, dry_run=True)
    assert (len(report.valid), len(report.refused), report.published) == (3, 1, 0)
    ends = committed_end_offsets(jsonl_settings.kafka, topic_name(DOMAIN_EVENTS, jsonl_settings.topics))
    assert sum(ends.values()) == 0
