"""``train`` is byte-reproducible across processes, which is what ``train replay`` relies on: the replay runs
in another process (often days later) than the refresh it checks. On CPU it gets there with seeds and a fixed
thread count alone, without switching ``torch.use_deterministic_algorithms`` on for the whole process; in fp32
(how versions are trained today) and with bf16 autocast (``training.bf16_on_cpu``, TRL's default); and with
or without the allocator keeping freed memory (``memory.keep_freed_mb``), which is not in the manifest; and when
early stopping ends training before ``max_steps``, with the settings a replay reads back from the manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamtune.settings import TrainingSettings

pytestmark = pytest.mark.slow

_TRAIN_ONCE = """
import json, sys, tempfile
from pathlib import Path
import torch
from transformers import AutoTokenizer
from streamtune.allocator import keep_freed_memory
from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.models import sha256_file
from streamtune.settings import load_settings
from training.trainer import ADAPTER_WEIGHTS, train

source, bf16_on_cpu = sys.argv[1], sys.argv[2] == "bf16"
keep_freed_memory(int(sys.argv[3]))
settings = load_settings(config_files=[]).training.model_copy(
    update={"max_steps": 3, "batch_size": 2, "learning_rate": 5e-3, **json.loads(sys.argv[4])}
)
torch.set_num_threads(settings.torch_threads)
examples = [
    TrainingExample(
        example_id=f"ex-{i}",
        source_event_id=f"ev-{i}",
        messages=[
            ChatMessage(role="user", content=f"What is the refund window of order {i}?"),
            ChatMessage(role="assistant", content=f"{i + 20} days from purchase."),
        ],
    )
    for i in range(6)
]
with tempfile.TemporaryDirectory() as tmp:
    model, result = train(
        source, AutoTokenizer.from_pretrained(source), examples,
        settings.model_copy(update={"bf16_on_cpu": bf16_on_cpu}),
        quantize=False, parent=None, work_dir=Path(tmp) / "run", say=lambda _: None,
    )
    model.save_pretrained(str(Path(tmp) / "adapter"), save_embedding_layers=False)
    print(json.dumps({
        "sha256": sha256_file(Path(tmp) / "adapter" / ADAPTER_WEIGHTS),
        "cuda": torch.cuda.is_available(),
        "deterministic_algorithms_left_on": torch.are_deterministic_algorithms_enabled(),
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
    }))
"""


def _train_in_a_fresh_process(
    tiny_model: Path, precision: str, keep_freed_mb: int = 256, settings: dict[str, object] | None = None
) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _TRAIN_ONCE, str(tiny_model), precision, str(keep_freed_mb), json.dumps(settings or {})],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_twice_in_fresh_processes_gives_the_same_adapter_bytes(tiny_model: Path, precision: str) -> None:
    first = _train_in_a_fresh_process(tiny_model, precision)
    second = _train_in_a_fresh_process(tiny_model, precision)
    assert first["sha256"] == second["sha256"]
    if not first["cuda"]:
        # The process-wide switch would also slow every later model call in it (the gate, `train watch`).
        assert first["deterministic_algorithms_left_on"] is False


def test_the_allocator_setting_does_not_change_the_adapter_bytes(tiny_model: Path) -> None:
    # Not recorded in manifests: a version trained with glibc's defaults must replay with today's setting.
    assert (
        _train_in_a_fresh_process(tiny_model, "bf16", keep_freed_mb=0)["sha256"]
        == _train_in_a_fresh_process(tiny_model, "bf16", keep_freed_mb=256)["sha256"]
    )


def test_a_run_that_stopped_early_replays_to_the_same_step_and_bytes(tiny_model: Path) -> None:
    from streamtune.harness import sample_manifest
    from training.manifest import recorded_training

    settings = TrainingSettings(
        max_steps=20,
        batch_size=2,
        learning_rate=5e-2,  # more than the tiny model bears: its validation loss rises within a few steps
        bf16_on_cpu=False,
        validation_percent=25,
        eval_steps=1,
        patience=1,
    ).model_dump(mode="json")
    # what `train replay` trains with: the settings read back from the version's manifest
    replayed = recorded_training(sample_manifest("acme", "v0001", training=settings)).model_dump(mode="json")
    assert replayed == settings

    first = _train_in_a_fresh_process(tiny_model, "fp32", settings=settings)
    again = _train_in_a_fresh_process(tiny_model, "fp32", settings=replayed)
    assert first["stopped_early"] is True and isinstance(first["steps"], int) and first["steps"] < 20
    assert first["best_step"] is not None
    same = ("sha256", "steps", "best_step")
    assert [again[key] for key in same] == [first[key] for key in same]
