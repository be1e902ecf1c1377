from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from streamtune.contracts import ChatMessage, ContextPassage, TrainingExample
from streamtune.errors import ContractError
from streamtune.harness import sample_manifest
from streamtune.settings import TrainingSettings, load_settings
from training.data import NewExamples, Window, excluded_ids, load_anchor, plan_split, replay_sample, split
from training.registry import AdapterRegistry, RegistryError
from training.trainer import bnb_config, lora_config, token_f1


def examples(n: int, prefix: str = "x") -> list[TrainingExample]:
    return [
        TrainingExample(
            example_id=f"{prefix}-{i}",
            messages=[ChatMessage(role="user", content=f"q{i}"), ChatMessage(role="assistant", content=f"a{i}")],
            source_event_id=f"e-{i}",
        )
        for i in range(n)
    ]


def test_split_is_deterministic_by_example_id_and_holds_out_at_least_one() -> None:
    data = examples(50)
    train, held = split(data, 20, seed=1)
    assert {e.example_id for e in train} | {e.example_id for e in held} == {e.example_id for e in data}
    assert not {e.example_id for e in train} & {e.example_id for e in held}
    assert 3 <= len(held) <= 20
    _, again_held = split(list(reversed(data)), 20, seed=1)  # order does not matter
    assert {e.example_id for e in again_held} == {e.example_id for e in held}
    assert len(split(examples(2), 1, seed=1)[1]) == 1


def test_replay_sample_is_deterministic_and_bounded() -> None:
    earlier = examples(40, "old")
    first = replay_sample(earlier, 5, seed=3)
    assert len(first) == 5
    assert replay_sample(list(reversed(earlier)), 5, seed=3) == first
    assert replay_sample(earlier, 100, seed=3) == replay_sample(earlier, 40, seed=3)


def test_earlier_held_out_examples_are_kept_out_of_the_replay_sample_for_the_gate() -> None:
    settings = load_settings(config_files=[], training={"held_out_percent": 20, "replay_sample": 200, "seed": 5})
    new, earlier = examples(10, "new"), examples(60, "old")
    span = Window({0: (60, 70)}, {0: (0, 60)})
    data = plan_split(span, NewExamples(new, [], 0, 0), earlier, settings)
    held = {e.example_id for e in data.earlier_held_out}
    # the same hash rule as the new slice's split
    assert held == {e.example_id for e in split(earlier, 20, seed=5)[1]} and 3 <= len(held) <= 30
    assert data.replay_excludes_held_out
    assert not held & {e.example_id for e in data.replay}  # never trained on: evidence for later gates
    assert {e.example_id for e in data.replay} == {e.example_id for e in earlier} - held
    assert (data.train, data.held_out) == split(new, 20, seed=5)
    # an older version replays as it was made: its sample drew from every earlier example
    legacy = plan_split(span, NewExamples(new, [], 0, 0), earlier, settings, replay_excludes_held_out=False)
    assert not legacy.replay_excludes_held_out
    assert legacy.replay == replay_sample(earlier, 200, seed=5)


def test_bundled_anchor_set_loads() -> None:
    anchor = load_anchor(None)
    assert len(anchor) >= 5
    assert all(e.messages[-1].role == "assistant" for e in anchor)


def test_token_f1() -> None:
    assert token_f1("30 days.", "30 days") == 1.0
    assert token_f1("within 30 days", "30 days") == pytest.approx(0.8)
    assert token_f1("no", "30 days") == 0.0


def test_quantization_and_lora_configs_follow_the_settings() -> None:
    settings = TrainingSettings(lora_r=4, lora_alpha=8, lora_dropout=0.0)
    bnb = bnb_config(settings)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    lora = lora_config(settings)
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (4, 8, "all-linear")


def _write(files: dict[str, str]) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        for name, text in files.items():
            (target / name).write_text(text)

    return write


def _version(name: str, *, promoted: bool = True) -> Callable[[Path], None]:
    """A version directory's writer: a valid manifest of acme's ``name`` whose gate said ``promoted``."""
    return _write({"manifest.json": sample_manifest("acme", name, gate={"promoted": promoted}).to_json()})


def test_registry_publishes_atomically_and_immutably(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    assert registry.current() is None and registry.next_name() == "v0001"
    registry.publish("v0001", _version("v0001"), "promoted")
    registry.publish("v0002", _version("v0002", promoted=False), "rejected")
    assert registry.current().name == "v0001"  # type: ignore[union-attr]
    assert [(v.name, v.status) for v in registry.versions()] == [("v0001", "promoted"), ("v0002", "rejected")]
    rejected = sample_manifest("acme", "v0002", gate={"promoted": False})
    assert registry.get("v0002").manifest == rejected  # read back through the type
    assert registry.get("v0002").tenant == "acme"
    with pytest.raises(RegistryError, match="immutable"):
        registry.publish("v0001", _version("v0001"), "promoted")

    def broken(target: Path) -> None:
        (target / "half.bin").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        registry.publish("v0003", broken, "promoted")
    assert not (tmp_path / "acme" / "v0003").exists()
    assert not list((tmp_path / "acme").glob(".partial-*"))
    assert registry.next_name() == "v0003"


def test_promote_and_rollback(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    for name, status in (("v0001", "promoted"), ("v0002", "rejected")):
        registry.publish(name, _version(name), status)
    assert registry.promote("v0002").name == "v0002"
    assert registry.current().name == "v0002"  # type: ignore[union-attr]
    assert registry.rollback().name == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    with pytest.raises(RegistryError, match="no adapter version 'v0009'"):
        registry.get("v0009")


def test_a_manifest_that_does_not_match_the_type_is_never_published_nor_read(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    with pytest.raises(ContractError, match="tenant"):
        registry.publish("v0001", _write({"manifest.json": '{"data": {"new_examples": 1}}'}), "promoted")
    assert registry.versions() == [] and not list((tmp_path / "acme").glob("*/manifest.json"))

    registry.publish("v0001", _version("v0001"), "promoted")
    (tmp_path / "acme" / "v0001" / "manifest.json").write_text("{}")  # tampered with after publishing
    with pytest.raises(ContractError, match=r"v0001/manifest\.json: tenant: Field required"):
        registry.get("v0001")


def _relying_on(example_id: str, *doc_ids: str) -> TrainingExample:
    return TrainingExample(
        example_id=example_id,
        tenant="acme",
        source_event_id=f"e-{example_id}",
        messages=[ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a")],
        context_doc_ids=list(doc_ids) or None,
    )


def test_examples_relying_on_a_missing_document_are_excluded_in_order() -> None:
    data = [
        _relying_on("a", "gone"),
        _relying_on("b"),
        _relying_on("c", "kept", "gone"),
        _relying_on("d", "kept"),
    ]
    asked: list[tuple[str, set[str]]] = []

    def missing(tenant: str, doc_ids: set[str]) -> set[str]:
        asked.append((tenant, doc_ids))
        return doc_ids & {"gone", "never-named"}

    assert excluded_ids("acme", data, missing) == ["a", "c"]
    assert asked == [("acme", {"gone", "kept"})]  # once, with every document named
    assert excluded_ids("acme", data, None) == []  # nothing handed in: nothing excluded


def test_examples_whose_stored_context_came_from_a_missing_document_are_excluded() -> None:
    def passage(doc_id: str) -> ContextPassage:
        return ContextPassage(doc_id=doc_id, chunk_id=f"{doc_id}#0", title="", text="text")

    retrieved = _relying_on("r").model_copy(update={"context": [passage("kept"), passage("gone")]})
    named = _relying_on("n", "kept").model_copy(update={"context": [passage("kept")]})
    asked: list[set[str]] = []

    def missing(tenant: str, doc_ids: set[str]) -> set[str]:
        asked.append(doc_ids)
        return doc_ids & {"gone"}

    assert excluded_ids("acme", [retrieved, named], missing) == ["r"]  # its prompt would hold deleted text
    assert asked == [{"kept", "gone"}]


def test_the_index_is_not_asked_when_no_example_names_a_document() -> None:
    def missing(tenant: str, doc_ids: set[str]) -> set[str]:
        raise AssertionError("asked without any document ids")

    assert excluded_ids("acme", [_relying_on("a"), _relying_on("b")], missing) == []


def test_the_progress_line_reports_records_that_were_not_counted() -> None:
    ranges = {0: (3, 9), 1: (0, 4)}
    assert NewExamples([], [], 0, 0).describe(ranges) == "0 new examples in p0 [3, 9), p1 [0, 4)"
    assert NewExamples([], [], 1, 0).describe(ranges).endswith("(1 invalid record skipped)")
    assert NewExamples([], [], 2, 3).describe({}) == (
        "0 new examples in no partitions (2 invalid records skipped, 3 duplicate ids)"
    )


# -- crash repair and the single-writer lock (fault tests that kill a real trainer: test_faults.py) --------------
def _orphan(root: Path, name: str, *, promoted: bool = True) -> None:
    """A version directory renamed into place by a writer killed before it wrote the index."""
    (root / "acme" / name).mkdir(parents=True)
    _version(name, promoted=promoted)(root / "acme" / name)


def test_a_version_left_out_of_the_index_is_adopted_and_a_newer_promoted_one_becomes_current(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    registry.publish("v0001", _version("v0001"), "promoted")
    _orphan(tmp_path, "v0002")
    assert registry.next_name() == "v0003"  # the orphan's name is never given twice, even before the repair
    with registry.writing():
        pass
    assert [(v.name, v.status) for v in registry.versions()] == [("v0001", "promoted"), ("v0002", "promoted")]
    assert registry.current().name == "v0002"  # type: ignore[union-attr]
    assert registry.rollback().name == "v0001"  # it entered the history as a promotion does
    assert registry.repaired == []  # the rollback's opening found nothing left to repair
    assert any("repaired: adopted v0002 (promoted)" in m and "current now (was v0001)" in m for m in caplog.messages)


def test_an_adopted_version_keeps_its_gate_verdict_and_an_older_one_does_not_take_over(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    _orphan(tmp_path, "v0001", promoted=False)
    registry.publish("v0003", _version("v0003"), "promoted")  # opening it for writing adopts v0001 first
    _orphan(tmp_path, "v0002")  # promoted by its gate, but older than the current v0003
    registry.publish("v0004", _version("v0004", promoted=False), "rejected")
    assert [(v.name, v.status) for v in registry.versions()] == [
        ("v0001", "rejected"),
        ("v0002", "promoted"),
        ("v0003", "promoted"),
        ("v0004", "rejected"),
    ]
    assert registry.current().name == "v0003"  # type: ignore[union-attr]


def test_half_written_leftovers_are_removed_and_each_repair_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    registry.publish("v0001", _version("v0001"), "promoted")
    (tmp_path / "acme" / ".partial-v0002-4242").mkdir()
    (tmp_path / "acme" / ".partial-v0002-4242" / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / "acme" / "registry.json.4242").write_text('{"current": "v0002"')
    _orphan(tmp_path, "v0007")
    (tmp_path / "acme" / "v0007" / "manifest.json").write_text("{}")  # changed by hand: cannot be adopted
    with registry.writing():
        assert sorted(registry.repaired) == [
            "removed the half-written .partial-v0002-4242",
            "removed the unfinished index registry.json.4242",
        ]
    assert sorted(p.name for p in (tmp_path / "acme").iterdir()) == [".lock", "registry.json", "v0001", "v0007"]
    assert [v.name for v in registry.versions()] == ["v0001"] and registry.current().name == "v0001"  # type: ignore[union-attr]
    assert registry.next_name() == "v0008"  # the directory it could not adopt keeps its name
    assert sum("repaired:" in m for m in caplog.messages) == 2
    assert any("v0007 is not in registry.json and cannot be adopted" in m for m in caplog.messages)


def test_nested_writers_in_one_thread_share_the_lock(tmp_path: Path) -> None:
    outer = AdapterRegistry(tmp_path, "acme", lock_timeout_s=0.2)
    with outer.writing():
        AdapterRegistry(tmp_path, "acme", lock_timeout_s=0.2).publish("v0001", _version("v0001"), "promoted")
        outer.publish("v0002", _version("v0002"), "promoted")
    assert outer.current().name == "v0002"  # type: ignore[union-attr]


_HOLD_THE_LOCK = """
import sys
from pathlib import Path
from training.registry import AdapterRegistry

with AdapterRegistry(Path(sys.argv[1]), "acme").writing():
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_waits_then_names_the_holder_and_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme", lock_timeout_s=0.5)
    registry.publish("v0001", _version("v0001"), "promoted")
    registry.publish("v0002", _version("v0002"), "promoted")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        who = rf"tenant acme: .*{re.escape(str(tmp_path / 'acme' / '.lock'))} \(pid {holder.pid} on host "
        for write in (
            lambda: registry.publish("v0003", _version("v0003"), "promoted"),
            lambda: registry.promote("v0001"),
            registry.rollback,
        ):
            with pytest.raises(RegistryError, match=who):
                write()
        assert registry.current().name == "v0002" and registry.next_name() == "v0003"  # type: ignore[union-attr]
    finally:
        holder.kill()  # SIGKILL: no chance to release; the kernel drops the lock with the process
        holder.wait()
    assert registry.rollback().name == "v0001"
