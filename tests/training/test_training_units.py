from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.settings import TrainingSettings
from training.data import load_anchor, replay_sample, split
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


def _write(files: dict[str, str]) -> object:
    def write(target: Path) -> None:
        for name, text in files.items():
            (target / name).write_text(text)

    return write


def test_registry_publishes_atomically_and_immutably(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    assert registry.current() is None and registry.next_name() == "v0001"
    manifest = json.dumps({"data": {"new_examples": 1}})
    registry.publish("v0001", _write({"manifest.json": manifest}), "promoted")  # type: ignore[arg-type]
    registry.publish("v0002", _write({"manifest.json": manifest}), "rejected")  # type: ignore[arg-type]
    assert registry.current().name == "v0001"  # type: ignore[union-attr]
    assert [(v.name, v.status) for v in registry.versions()] == [("v0001", "promoted"), ("v0002", "rejected")]
    with pytest.raises(RegistryError, match="immutable"):
        registry.publish("v0001", _write({"manifest.json": manifest}), "promoted")  # type: ignore[arg-type]

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
    manifest = json.dumps({"data": {}})
    for name, status in (("v0001", "promoted"), ("v0002", "rejected")):
        registry.publish(name, _write({"manifest.json": manifest}), status)  # type: ignore[arg-type]
    assert registry.promote("v0002").name == "v0002"
    assert registry.current().name == "v0002"  # type: ignore[union-attr]
    assert registry.rollback().name == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    with pytest.raises(RegistryError, match="no adapter version 'v0009'"):
        registry.get("v0009")
