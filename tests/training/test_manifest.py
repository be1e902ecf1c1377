"""Manifests: the ones written before the type existed still load; a newer writer's extra keys warn, not
crash; what ``build_manifest`` writes reads back the same, in the same JSON shape as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.errors import ContractError
from streamtune.manifest import EvalEvidence, EvalScores, SideScores
from streamtune.prompt import PromptFormat
from streamtune.settings import Settings, TrainingSettings, load_settings
from training.data import NewExamples, TrainingData, Window
from training.gate import decide
from training.manifest import Manifest, build_manifest, recorded_training
from training.trainer import ADAPTER_WEIGHTS, Candidate, TrainResult, cpu_has_bf16, resolved_precision

# Written by the refresh before the manifest was a type (json.dumps of a dict, sort_keys, indent 2),
# verbatim but for the shortened hashes: partition keys are strings and ranges are lists.
OLD_MANIFEST = """{
  "adapter": {"sha256": "9f2c51d0a7e3"},
  "base_model": {
    "setting": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "sha256": {"model.safetensors": "5af571cbf074"},
    "source": "/home/ops/.cache/streamtune/models/SmolLM2-135M-Instruct"
  },
  "code": {"git": "be6b4c0e1f2a", "streamtune": "0.1.0", "training_sha256": "c0ffee"},
  "created_at": "2025-06-01T12:00:00.123456+00:00",
  "data": {
    "excluded_example_ids": ["fjordline-qa-7"],
    "held_out": 3,
    "new_examples": 16,
    "ranges": {"0": [0, 9], "1": [0, 7]},
    "replay": 0,
    "replay_ranges": {"0": [0, 0], "1": [0, 0]},
    "topic": "training-examples",
    "train": 13
  },
  "gate": {
    "anchor_tolerance": 0.05,
    "compared_with": "base model",
    "promoted": true,
    "reason": "held-out loss 1.2345 < 2.3456 and anchor within tolerance"
  },
  "libraries": {"peft": "0.17.1", "python": "3.11.9", "torch": "2.8.0", "transformers": "4.56.1", "trl": "0.23.0"},
  "metrics": {
    "candidate": {
      "anchor": {"examples": 8, "exact_match": 0.0, "loss": 2.01, "token_f1": 0.21},
      "held_out": {"examples": 3, "exact_match": 0.33, "loss": 1.2345, "token_f1": 0.5}
    },
    "current": {
      "anchor": {"examples": 8, "exact_match": 0.0, "loss": 2.0, "token_f1": 0.2},
      "held_out": {"examples": 3, "exact_match": 0.0, "loss": 2.3456, "token_f1": 0.1}
    },
    "train": {"final_loss": 1.1, "seconds": 41.234, "steps": 24, "tokens": 9000, "tokens_per_second": 218.3}
  },
  "parent": null,
  "quantization": "nf4+double-quant",
  "schema_version": 1,
  "split": {"held_out_percent": 20, "seed": 42},
  "tenant": "fjordline",
  "training": {
    "adapters_dir": null, "anchor_file": null, "anchor_tolerance": 0.05, "batch_size": 4,
    "eval_max_new_tokens": 48, "held_out_percent": 20, "learning_rate": 0.0003, "lora_alpha": 32,
    "lora_dropout": 0.05, "lora_r": 16, "max_length": 512, "max_steps": 24, "min_examples": 2,
    "quantize_4bit": true, "replay_sample": 32, "seed": 42, "torch_threads": 2,
    "watch_min_examples": 20, "watch_minutes": 10.0
  },
  "version": "v0001"
}
"""


def test_a_manifest_written_before_the_type_existed_loads(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(OLD_MANIFEST)
    manifest = Manifest.load(tmp_path)  # a version directory, as the registry passes it
    assert (manifest.tenant, manifest.version, manifest.parent) == ("fjordline", "v0001", None)
    assert manifest.data.ranges == {0: (0, 9), 1: (0, 7)}
    assert manifest.data.trained_up_to() == {0: 9, 1: 7}
    assert manifest.data.excluded_example_ids == ["fjordline-qa-7"]
    assert manifest.metrics.candidate.held_out.loss == 1.2345
    assert manifest.metrics.current.anchor.loss == 2.0
    assert manifest.gate.promoted and manifest.gate.compared_with == "base model"
    assert manifest.adapter.sha256 == "9f2c51d0a7e3"
    assert manifest.base_model.sha256 == {"model.safetensors": "5af571cbf074"}
    # trained before `bf16_on_cpu`, `validation_percent` and `preference_steps` existed, i.e. in fp32 on CPU,
    # without a validation slice or a preference step: replayed so, whatever today's defaults
    assert recorded_training(manifest) == TrainingSettings(
        max_steps=24, learning_rate=3e-4, bf16_on_cpu=False, validation_percent=0, preference_steps=0
    )
    # before examples carried context: bare turns, a replay sample from every earlier example, no evidence record
    assert manifest.prompt is None and not manifest.data.replay_excludes_held_out
    assert manifest.data.evaluation is None and manifest.gate.quality_tolerance is None
    assert "fjordline v0001" in manifest.summary()
    assert Manifest.load(tmp_path / "manifest.json") == manifest


def test_a_manifest_with_keys_from_a_newer_writer_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    newer = json.loads(OLD_MANIFEST)
    newer["signature"] = {"by": "a later streamtune"}
    newer["training"]["gradient_accumulation_steps"] = 4
    (tmp_path / "manifest.json").write_text(json.dumps(newer))
    with caplog.at_level(logging.WARNING):
        manifest = Manifest.load(tmp_path / "manifest.json")
    assert manifest.version == "v0001"
    assert any("signature" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.manifest"):
        recorded = recorded_training(manifest)  # replay drops the setting it does not know, and says so
    assert recorded.max_steps == 24
    assert any("gradient_accumulation_steps" in m for m in caplog.messages)


def test_a_manifest_that_does_not_match_the_type_is_refused_naming_the_field(tmp_path: Path) -> None:
    broken = json.loads(OLD_MANIFEST)
    del broken["adapter"]
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ContractError, match="adapter"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ContractError, match="not a readable manifest"):
        Manifest.load(tmp_path)


def _example(i: int) -> TrainingExample:
    return TrainingExample(
        example_id=f"ex-{i}",
        tenant="acme",
        source_event_id=f"e-{i}",
        messages=[ChatMessage(role="user", content=f"q{i}"), ChatMessage(role="assistant", content=f"a{i}")],
    )


def test_build_manifest_records_the_refresh_and_reads_back_in_the_old_shape(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"base weights")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / ADAPTER_WEIGHTS).write_bytes(b"adapter weights")
    settings: Settings = load_settings(config_files=[], models={"base_model": str(base)})
    examples = [_example(i) for i in range(6)]
    window = Window({0: (4, 10), 1: (2, 2)}, {0: (0, 4), 1: (0, 2)})
    data = TrainingData(window, NewExamples(examples, ["ex-9"], 1, 0), examples[:5], examples[5:], [])
    form = PromptFormat.of(settings)
    candidate = Candidate(
        adapter, str(base), None, False, "none (disabled by setting)", TrainResult(3, 120, 1.23456, [(1, 2.0)]), form
    )
    evidence = EvalEvidence(minimum=3, new_held_out=1, earlier_held_out=2, earlier_example_ids=["old-1", "old-2"])
    scores = SideScores(
        held_out=EvalScores(loss=1.0, exact_match=0.0, token_f1=0.5, examples=1),
        anchor=EvalScores(loss=2.0, exact_match=0.0, token_f1=0.2, examples=8),
    )
    verdict = decide(
        scores, scores, settings.training.anchor_tolerance, quality_tolerance=0.05, compared_with="base model"
    )

    manifest = build_manifest(
        settings,
        tenant="acme",
        version="v0001",
        parent=None,
        data=data,
        candidate=candidate,
        scores=(scores, scores),
        verdict=verdict,
        evidence=evidence,
    )
    assert manifest.data.ranges == window.ranges and manifest.data.replay_ranges == window.replay_ranges
    assert (manifest.data.new_examples, manifest.data.train, manifest.data.held_out) == (6, 5, 1)
    assert manifest.data.excluded_example_ids == ["ex-9"]
    assert manifest.base_model.sha256 == {"model.safetensors": _sha256(b"base weights")}
    assert manifest.adapter.sha256 == _sha256(b"adapter weights")
    assert manifest.metrics.train.seconds == 1.235 and manifest.metrics.train.final_loss == 2.0
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes", "python"} <= set(manifest.libraries)
    # the precision as this machine resolved it, never "decide again at replay time"
    assert settings.training.bf16_on_cpu is None
    assert manifest.training["bf16_on_cpu"] is cpu_has_bf16()
    assert recorded_training(manifest) == settings.training.model_copy(update={"bf16_on_cpu": cpu_has_bf16()})
    assert not manifest.gate.promoted  # the same scores on both sides: not better
    assert manifest.gate.quality_tolerance == 0.05
    assert manifest.prompt == form  # what replay renders in, whatever the settings say by then
    assert manifest.data.evaluation == evidence and manifest.data.replay_excludes_held_out

    (tmp_path / "manifest.json").write_text(manifest.to_json())
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["data"]["ranges"] == {"0": [4, 10], "1": [2, 2]}  # as every earlier manifest has it
    assert Manifest.load(tmp_path) == manifest


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_the_cpu_precision_is_decided_once_and_an_explicit_choice_stands() -> None:
    assert resolved_precision(TrainingSettings()).bf16_on_cpu is cpu_has_bf16()
    for choice in (True, False):
        assert resolved_precision(TrainingSettings(bf16_on_cpu=choice)).bf16_on_cpu is choice
