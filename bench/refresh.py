"""Training benchmark: tokens/s of the refresh job's trainer ÷ a plain TRL ``SFTTrainer`` run, and what each
of our differences from that plain run costs.

    OMP_WAIT_POLICY=PASSIVE .venv/ml/bin/python bench/refresh.py [--steps 10] [--rounds 3] [--ablate all] [--no-fp32]

Same base model (the configured one, SmolLM2-135M-Instruct by default), same data (the bundled demo QA pairs,
``conversation_rows``), same steps, batch size, learning rate, LoRA and 4-bit settings. The yardstick is the
plain run (TRL's documented QLoRA recipe, nothing of ours). Every run is a process of its own, so its peak
resident memory (``ru_maxrss``) is its own and no global state (``torch.use_deterministic_algorithms``, the
RNG, the allocator) leaks from one run into the next. The variants run in alternating order over ``--rounds``
rounds (forward, backward, forward, ...) and the figures are medians, because the machine is shared.

Variants: ``plain`` (the yardstick), ``ours`` (``training.trainer.train`` as the refresh calls it, with the
configured settings: on a CPU with bf16 instructions that is bf16 autocast, ``training.bf16_on_cpu``'s
default), ``ours+fp32`` (the same with ``bf16_on_cpu = false``: how every version was trained before
its default became "auto"), and the plain run with ONE of our differences switched on (``--ablate``):

- ``determinism``: ``set_seed(seed, deterministic=True)`` before loading and ``full_determinism=True``, i.e.
  ``torch.use_deterministic_algorithms(True)`` (what ``train`` did up to 2026-11-22),
- ``seeding``: ``set_seed(seed)`` before loading, so that the LoRA initialisation is seeded (what ``train``
  keeps on CPU),
- ``masking``: ``completion_only_loss=True`` set explicitly (TRL's default for prompt/completion rows anyway),
- ``collation``: our data-loading settings (``data_seed``, ``dataloader_num_workers=0``, linear schedule
  without warm-up: TRL's defaults, spelt out),
- ``evaluation``: our progress callback in place of TRL's printer (``train`` runs no evaluation loop; the
  refresh's gate evaluates after training, outside the measured time),
- ``loading``: our ``load_model`` (``prepare_model_for_kbit_training``, LoRA wrapped before the trainer),
- ``precision``: fp32 throughout (``bf16=False``), where TRL's ``SFTConfig`` defaults to bf16 autocast, on CPU
  too; ``train`` trains in fp32 on CPU where ``training.bf16_on_cpu`` resolves to false (variant
  ``ours+fp32``),
- ``allocator``: glibc's allocator keeps freed memory for reuse (``memory.keep_freed_mb``, which
  ``train_candidate`` applies through ``prepare_torch``; ``streamtune.allocator``).

Each run also reports the sha256 of the adapter weights it trained: a variant whose runs in separate
processes agree on it is byte-reproducible here; and its page faults (``ru_minflt``), which the allocator
setting is about.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import demo_examples

from streamtune.models import base_model_source, sha256_file
from streamtune.settings import MemorySettings, Settings, TrainingSettings, load_settings

DIFFERENCES = ("determinism", "seeding", "masking", "collation", "evaluation", "loading", "precision", "allocator")
"""Our differences from the plain recipe, each measured alone on top of it."""


def plain_trl(
    source: str,
    rows: list[dict[str, Any]],
    settings: TrainingSettings,
    quantize: bool,
    out: Path,
    difference: str | None = None,
) -> tuple[Any, float, float]:
    """The yardstick: TRL's documented QLoRA recipe, nothing of ours but ``difference`` (one of DIFFERENCES).

    Returns the trained PEFT model, the tokens trained on and the seconds it took."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        PrinterCallback,
        TrainerCallback,
        set_seed,
    )
    from trl import SFTConfig, SFTTrainer

    from training.trainer import load_model

    if difference == "determinism":
        set_seed(settings.seed, deterministic=True)
    elif difference == "seeding":
        set_seed(settings.seed)
    extra: dict[str, Any] = {}
    if difference == "determinism":
        extra = {"full_determinism": True}
    elif difference == "masking":
        extra = {"completion_only_loss": True}
    elif difference == "precision":
        extra = {"bf16": False}
    elif difference == "collation":
        extra = {"data_seed": settings.seed, "dataloader_num_workers": 0, "lr_scheduler_type": "linear"}
        extra["warmup_steps"] = 0

    peft_config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    if difference == "loading":
        model = load_model(source, settings, quantize=quantize, adapter=None, trainable=True)
        peft: Any = None
    else:
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if quantize:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32,
            )
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        peft = peft_config

    class Progress(TrainerCallback):  # the shape of train()'s callback: one line every 10 steps
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            if logs and "loss" in logs and (state.global_step % 10 == 0 or state.global_step == state.max_steps):
                print(
                    f"    step {state.global_step}/{state.max_steps}  loss {float(logs['loss']):.3f}", file=sys.stderr
                )

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
            use_cpu=not torch.cuda.is_available(),
            max_length=settings.max_length,
            gradient_checkpointing=False,
            disable_tqdm=True,
            seed=settings.seed,
            **extra,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(source),
        peft_config=peft,
        callbacks=[Progress()] if difference == "evaluation" else None,
    )
    if difference == "evaluation":
        trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    tokens = max(float(h.get("num_tokens", 0)) for h in trainer.state.log_history)
    return trainer.model, tokens, float(output.metrics["train_runtime"])


def _settings(steps: int) -> tuple[Settings, TrainingSettings]:
    base = load_settings()
    return base, base.training.model_copy(update={"max_steps": steps})


def run_one(variant: str, steps: int) -> dict[str, Any]:
    """One variant, in this process (meant to be the only run in it): tokens/s, adapter sha256, peak memory."""
    from transformers import AutoTokenizer

    from streamtune.models import prepare_torch
    from training.trainer import ADAPTER_WEIGHTS, conversation_rows, quantization_support, train

    base, settings = _settings(steps)
    # as train_candidate does; the plain recipe and the other differences with glibc's defaults
    keeps_freed = variant in ("ours", "ours+fp32", "allocator")
    prepare_torch(settings.torch_threads, base.memory if keeps_freed else MemorySettings(keep_freed_mb=0))
    quantize = settings.quantize_4bit and quantization_support()[0]
    source = base_model_source(base)
    examples = demo_examples()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if variant in ("ours", "ours+fp32"):
            model, result = train(
                source,
                AutoTokenizer.from_pretrained(source),
                examples,
                settings.model_copy(update={"bf16_on_cpu": False}) if variant == "ours+fp32" else settings,
                quantize=quantize,
                parent=None,
                work_dir=Path(tmp) / "run",
                say=lambda _: None,
            )
            tokens, seconds = float(result.tokens), result.seconds
        else:
            rows = conversation_rows(examples)
            difference = None if variant in ("plain", "allocator") else variant
            model, tokens, seconds = plain_trl(source, rows, settings, quantize, Path(tmp) / "run", difference)
        model.save_pretrained(str(Path(tmp) / "adapter"), save_embedding_layers=False)
        sha256 = sha256_file(Path(tmp) / "adapter" / ADAPTER_WEIGHTS)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "variant": variant,
        "tokens_per_s": tokens / seconds,
        "tokens": tokens,
        "seconds": seconds,
        "adapter_sha256": sha256,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "page_faults": usage.ru_minflt,
        "quantization": "nf4+double-quant" if quantize else "none",
        "load_average": [load, os.getloadavg()[0]],
    }


def _spawn(variant: str, steps: int) -> dict[str, Any]:
    """Runs one variant in a fresh interpreter; its last stdout line is its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--steps", str(steps)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds; figures are medians.")
    parser.add_argument(
        "--ablate",
        default="all",
        help=f"Differences to measure alone on the plain run, comma-separated ({','.join(DIFFERENCES)}), all, none.",
    )
    parser.add_argument(
        "--fp32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also run ours+fp32 (--no-fp32: plain and ours only, for more rounds in the same time).",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.steps)), flush=True)
        return

    chosen = {"all": list(DIFFERENCES), "none": []}.get(args.ablate, [d for d in args.ablate.split(",") if d])
    unknown = sorted(set(chosen) - set(DIFFERENCES))
    if unknown:
        parser.error(f"--ablate: unknown difference(s) {unknown}; valid: {', '.join(DIFFERENCES)}, all, none")
    variants = ["plain", "ours", *(["ours+fp32"] if args.fp32 else []), *chosen]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    begin = time.monotonic()
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for variant in order:
            result = _spawn(variant, args.steps)
            runs[variant].append(result)
            print(
                f"round {round_ + 1}/{args.rounds} {variant:12} {result['tokens_per_s']:6.1f} tokens/s "
                f"({result['tokens']:.0f} in {result['seconds']:.1f} s)  "
                f"peak {result['peak_rss_mb']:5.0f} MB  {result['page_faults'] / 1e6:.2f}M page faults  "
                f"load {result['load_average'][0]:.1f}",
                flush=True,
            )

    def median(variant: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[variant])

    from training.trainer import cpu_has_bf16

    yardstick = median("plain", "tokens_per_s")
    loads = [x for rs in runs.values() for r in rs for x in r["load_average"]]
    base, settings = _settings(args.steps)
    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
                "load_average_1min": [round(min(loads), 2), round(statistics.median(loads), 2), round(max(loads), 2)],
                "base_model": base.models.base_model,
                "quantization": runs["plain"][0]["quantization"],
                "cpu_bf16_instructions": cpu_has_bf16(),
                "steps": args.steps,
                "batch_size": settings.batch_size,
                "torch_threads": settings.torch_threads,
                "rounds": args.rounds,
                "minutes": round((time.monotonic() - begin) / 60, 1),
                "plain_trl_tokens_per_s": round(yardstick, 1),
                "variants": {
                    v: {
                        "tokens_per_s_median": round(median(v, "tokens_per_s"), 1),
                        "tokens_per_s_runs": [round(r["tokens_per_s"], 1) for r in runs[v]],
                        "ratio_to_plain": round(median(v, "tokens_per_s") / yardstick, 3),
                        # Against the plain run of the same round: less exposed to the load drifting over a run.
                        "ratio_per_round": [
                            round(r["tokens_per_s"] / p["tokens_per_s"], 3)
                            for r, p in zip(runs[v], runs["plain"], strict=True)
                        ],
                        "peak_rss_mb_median": round(median(v, "peak_rss_mb")),
                        "page_faults_median": round(median(v, "page_faults")),
                        "adapter_sha256": sorted({r["adapter_sha256"][:12] for r in runs[v]}),
                    }
                    for v in variants
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
