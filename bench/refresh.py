"""Training benchmark: tokens/s of the refresh job's trainer ÷ a plain TRL ``SFTTrainer`` run.

    .venv/ml/bin/python bench/refresh.py [--steps 10]

Same base model (the configured one, SmolLM2-135M-Instruct by default), same data (the bundled demo
QA pairs), same steps, batch size, learning rate, LoRA and 4-bit settings. The yardstick is the plain
run, measured in the same process before and after ours (their mean is the denominator).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.models import base_model_source
from streamtune.settings import load_settings


def plain_trl(source: str, rows: list[dict[str, Any]], settings: Any, quantize: bool, out: Path) -> float:
    """The yardstick: TRL's documented QLoRA recipe, nothing of ours."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out),
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            max_length=settings.max_length,
            gradient_checkpointing=False,
            disable_tqdm=True,
            seed=settings.seed,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(source),
        peft_config=LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    output = trainer.train()
    tokens = max(float(h.get("num_tokens", 0)) for h in trainer.state.log_history)
    return tokens / float(output.metrics["train_runtime"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from training.trainer import conversation_rows, quantization_support, train

    base = load_settings()
    settings = base.training.model_copy(update={"max_steps": args.steps})
    torch.set_num_threads(settings.torch_threads)
    quantize = settings.quantize_4bit and quantization_support()[0]
    source = base_model_source(base)
    pairs = [
        json.loads(line) for line in files("streamtune").joinpath("data", "demo_qa.jsonl").read_text().splitlines()
    ]
    examples = [
        TrainingExample(
            example_id=f"bench-{i}",
            source_event_id=f"bench-{i}",
            messages=[
                ChatMessage(role="user", content=p["question"]),
                ChatMessage(role="assistant", content=p["answer"]),
            ],
        )
        for i, p in enumerate(pairs)
    ]
    rows = conversation_rows(examples)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with tempfile.TemporaryDirectory() as tmp:
        before = plain_trl(source, rows, settings, quantize, Path(tmp) / "plain1")
        print(f"yardstick (plain TRL SFTTrainer), first run: {before:.1f} tokens/s", flush=True)
        _, ours = train(
            source,
            tokenizer,
            examples,
            settings,
            quantize=quantize,
            parent=None,
            work_dir=Path(tmp) / "ours",
            say=lambda _: None,
        )
        print(f"refresh trainer: {ours.tokens_per_second:.1f} tokens/s", flush=True)
        after = plain_trl(source, rows, settings, quantize, Path(tmp) / "plain2")
        print(f"yardstick (plain TRL SFTTrainer), second run: {after:.1f} tokens/s", flush=True)
    yardstick = (before + after) / 2
    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}",
                "base_model": base.models.base_model,
                "quantization": "nf4+double-quant" if quantize else "none",
                "steps": args.steps,
                "batch_size": settings.batch_size,
                "torch_threads": settings.torch_threads,
                "plain_trl_tokens_per_s": round(yardstick, 1),
                "refresh_tokens_per_s": round(ours.tokens_per_second, 1),
                "ratio": round(ours.tokens_per_second / yardstick, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
