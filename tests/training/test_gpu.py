"""The QLoRA path on CUDA: bitsandbytes 4-bit with bf16 compute. Skipped where there is no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.settings import TrainingSettings
from training.trainer import evaluate, load_model, train

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_qlora_trains_and_evaluates_on_cuda(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    settings = TrainingSettings(max_steps=20, learning_rate=5e-3, batch_size=4)
    examples = [
        TrainingExample(
            example_id=f"g-{i}",
            source_event_id=f"g-{i}",
            messages=[
                ChatMessage(role="user", content=f"Refund window {i}?"),
                ChatMessage(role="assistant", content="30 days."),
            ],
        )
        for i in range(16)
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model, result = train(
        str(tiny_model),
        tokenizer,
        examples,
        settings,
        quantize=True,
        parent=None,
        work_dir=tmp_path / "work",
        say=lambda _: None,
    )
    assert next(model.parameters()).device.type == "cuda"
    assert result.steps == 20 and result.losses[-1][1] < result.losses[0][1]
    model.save_pretrained(str(tmp_path / "adapter"))
    base = load_model(str(tiny_model), settings, quantize=True, adapter=None, trainable=False)
    tuned = load_model(str(tiny_model), settings, quantize=True, adapter=tmp_path / "adapter", trainable=False)
    assert evaluate(tuned, tokenizer, examples[:4], 4).loss < evaluate(base, tokenizer, examples[:4], 4).loss
