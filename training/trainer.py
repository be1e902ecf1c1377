"""QLoRA training and evaluation with transformers, peft, bitsandbytes and TRL.

Two small pure functions turn settings into ``BitsAndBytesConfig`` / ``LoraConfig``; ``train`` runs
TRL's ``SFTTrainer`` on prompt/completion conversations (the model's chat template, loss on the
assistant's tokens only); ``evaluate`` gives loss, exact match and token F1 of generated answers.
Given a ``PromptFormat``, both see each example as ``serve`` would prompt for it: the system prompt and the
example's stored context, numbered and cut by ``streamtune.prompt`` (``conversation_rows``).
With ``training.validation_percent``, ``train`` sets a slice of its examples aside (``validation_slice``),
evaluates on it every ``training.eval_steps``, stops after ``training.patience`` evaluations without
improvement and ends with the best step's adapter: transformers' own ``EarlyStoppingCallback`` and
``load_best_model_at_end``, over checkpoints in its work folder.
``train_candidate`` is the refresh's training step: the configured base model, 4-bit where bitsandbytes
works, the adapter saved to a folder. All heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.manifest import PreferenceFigures
from streamtune.models import sha256_file
from streamtune.prompt import Passage, PromptFormat, conversation
from streamtune.settings import Settings, TrainingSettings
from training.data import split

__all__ = [
    "ADAPTER_WEIGHTS",
    "Candidate",
    "EvalMetrics",
    "TrainResult",
    "bnb_config",
    "conversation_rows",
    "evaluate",
    "fates",
    "lora_config",
    "quantization_support",
    "train",
    "train_candidate",
    "validation_slice",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""The file of a saved PEFT adapter whose sha256 identifies the version."""


def quantization_support() -> tuple[bool, str]:
    """Whether bitsandbytes 4-bit works here, and why not when it does not."""
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from bitsandbytes.functional import quantize_4bit

        quantize_4bit(torch.ones(64, 64), quant_type="nf4")
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def bnb_config(settings: TrainingSettings) -> Any:
    """NF4 with double quantization; computes in bf16 on a GPU, fp32 on CPU."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
    )


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles); elsewhere bf16 is emulated and
    slower than fp32."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own feature probes
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolved_precision(settings: TrainingSettings) -> TrainingSettings:
    """``settings`` with ``bf16_on_cpu`` decided (None: whether this CPU has bf16 instructions), as a manifest
    records it."""
    if settings.bf16_on_cpu is not None:
        return settings
    return settings.model_copy(update={"bf16_on_cpu": cpu_has_bf16()})


def lora_config(settings: TrainingSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def load_model(
    source: str, settings: TrainingSettings, *, quantize: bool, adapter: Path | None, trainable: bool
) -> Any:
    """The base model (4-bit when ``quantize``), wrapped with ``adapter`` or a fresh LoRA when training.

    PEFT wraps the model before its first forward pass: bitsandbytes repacks 4-bit weights at the first
    eval-mode forward, and reading them back afterwards is lossy (DESIGN.md).
    """
    import torch
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}
    if quantize:
        kwargs["quantization_config"] = bnb_config(settings)
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quantize and trainable:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    return get_peft_model(model, lora_config(settings)) if trainable else model


def conversation_rows(
    examples: Sequence[TrainingExample],
    prompt: PromptFormat | None = None,
    tokenizer: Any = None,
    *,
    max_length: int | None = None,
) -> list[dict[str, Any]]:
    """Prompt/completion conversations: the last assistant turn is the completion.

    With ``prompt`` (and the base model's ``tokenizer``), the prompt is the one ``serve`` builds: ``prompt``'s
    system message with the example's stored context, then the question, i.e. the user turn before the answer
    (``streamtune.prompt.conversation``; earlier turns go between the two; ``max_length`` lowers the context
    budget so that the answer is never truncated). The example's own system turns give way to that system
    message, the only one ``serve`` sends. Without ``prompt``: the example's turns as they are, which is how
    versions trained before examples carried context replay. Either way an example that does not end with a
    user turn and its answer is left out (``serve`` could not have been asked it).
    """
    return [row for _, row, _ in _rendered(examples, prompt, tokenizer, max_length) if row is not None]


def _rendered(
    examples: Sequence[TrainingExample], prompt: PromptFormat | None, tokenizer: Any, max_length: int | None
) -> list[tuple[str, dict[str, Any] | None, bool]]:
    """Per example: its id, its row (None: left out) and whether ``max_length`` shortened its context."""
    rendered: list[tuple[str, dict[str, Any] | None, bool]] = []
    for example in examples:
        turns = [m.model_dump() for m in example.messages]
        if turns[-1]["role"] != "assistant":
            rendered.append((example.example_id, None, False))
            continue
        if prompt is None:
            rendered.append((example.example_id, {"prompt": turns[:-1], "completion": turns[-1:]}, False))
            continue
        if tokenizer is None:
            raise ValueError("conversation_rows: rendering in a PromptFormat needs the base model's tokenizer")
        asked = [t for t in turns[:-1] if t["role"] != "system"]
        if not asked or asked[-1]["role"] != "user":
            rendered.append((example.example_id, None, False))
            continue
        passages = [Passage(p.title, p.text, p.similarity) for p in example.context or []]
        question, answer, history = asked[-1]["content"], turns[-1]["content"], asked[:-1]
        before, after = conversation(
            tokenizer, prompt, question, passages, answer, history=history, max_length=max_length
        )
        shortened = (
            max_length is not None
            and bool(passages)
            and before != conversation(tokenizer, prompt, question, passages, answer, history=history)[0]
        )
        rendered.append((example.example_id, {"prompt": before, "completion": after}, shortened))
    return rendered


def fates(
    examples: Sequence[TrainingExample], prompt: PromptFormat | None, tokenizer: Any, max_length: int
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(rows, dropped, truncated): the rows to train on, the ids of the examples that give no row or none the
    trainer keeps (no question and answer at the end, or a prompt that leaves no room for any answer token:
    TRL drops fully masked rows), and those it trains on cut short (context shortened to fit, or the
    sequence cut at ``max_length`` tokens). Counted so that the manifest says so, never silently."""
    rows: list[dict[str, Any]] = []
    dropped: list[str] = []
    truncated: list[str] = []
    for example_id, row, shortened in _rendered(examples, prompt, tokenizer, max_length):
        if row is None:
            dropped.append(example_id)
            continue
        rows.append(row)
        asked = _ids(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True))
        full = _ids(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True))
        if len(asked) >= max_length:
            dropped.append(example_id)
        elif shortened or len(full) > max_length:
            truncated.append(example_id)
    return rows, dropped, truncated


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    losses: list[tuple[int, float]]
    dropped: list[str] = field(default_factory=list)
    """Ids of the examples the trainer could not use (``fates``)."""
    truncated: list[str] = field(default_factory=list)
    """Ids of the examples trained on cut short to ``max_length`` tokens (``fates``)."""
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) at each evaluation; empty without a validation slice."""
    best_step: int | None = None
    """The step whose adapter training ended with (the lowest validation loss); None: no slice, the last."""
    stopped_early: bool = False
    """Whether ``patience`` evaluations without improvement stopped training before ``max_steps``."""
    validation: int = 0
    """Rows in the validation slice (0: none)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


_VALIDATION_SEED = 2
"""Added to ``training.seed`` for the validation slice's ranking. The held-out split ranks example ids by the
seed itself and the replay sample by seed + 1; ranked by the seed, the slice would be the ids ranked like the
held-out ones, which never reach ``train``."""


def progress(say: Callable[[str], None], every: int = 10) -> Any:
    """A ``TrainerCallback`` that says the loss every ``every`` steps and at the last, with the rate so far
    (tokens/s where the trainer counts tokens, as trl's SFT does; else seconds per step), and each validation
    loss."""
    from transformers import TrainerCallback

    begin = time.monotonic()

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            step = f"    step {state.global_step}/{state.max_steps}"
            if logs and "eval_loss" in logs:
                say(f"{step}  validation loss {float(logs['eval_loss']):.3f}")
            if logs and "loss" in logs and (state.global_step % every == 0 or state.global_step == state.max_steps):
                seconds = max(time.monotonic() - begin, 1e-9)
                tokens = float(logs.get("num_tokens", 0))
                rate = f"{tokens / seconds:.0f} tokens/s" if tokens else f"{seconds / state.global_step:.1f} s/step"
                say(f"{step}  loss {float(logs['loss']):.3f}  {rate}")

    return Progress()


def validation_slice(
    examples: Sequence[TrainingExample], settings: TrainingSettings
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(to train on, to validate on): ``settings.validation_percent`` of ``examples`` by a hash of the example
    id, as the held-out split is made (``training.data.split``: stable whatever the order or company the
    examples come in, at least one set aside), in their order. Only what ``train`` is handed is sliced, so the
    gate's held-out examples, which never are, are never in it. Percent 0: nothing set aside."""
    if settings.validation_percent == 0:
        return list(examples), []
    return split(list(examples), settings.validation_percent, settings.seed + _VALIDATION_SEED)


def train(
    source: str,
    tokenizer: Any,
    examples: Sequence[TrainingExample],
    settings: TrainingSettings,
    *,
    quantize: bool,
    parent: Path | None,
    work_dir: Path,
    say: Callable[[str], None] = print,
    prompt: PromptFormat | None = None,
) -> tuple[Any, TrainResult]:
    """Train a LoRA adapter (continuing from ``parent`` when given); returns the PEFT model and figures.

    ``prompt``: the format the examples are rendered in (``conversation_rows``); None: their bare turns.
    With ``settings.validation_percent``: early stopping on ``validation_slice`` (module docstring), unless
    too few rows are usable for it (then every example is trained on, as without it, and ``say`` tells why).
    Precision: bf16 with CUDA; on CPU ``settings.bf16_on_cpu`` (``resolved_precision``; recorded in the
    manifest, so a replay trains in the precision its version was trained in)."""
    import torch
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    # Seeded before loading: the fresh LoRA weights are drawn here. Deterministic algorithms only on CUDA,
    # where cuBLAS and atomic adds need them: CPU kernels give the same bytes for the same thread count
    # (``torch_threads``, in the manifest) without them (the same sha256 as with them; BENCHMARKS.md), while
    # the switch stays set process-wide after training and sets CUDA environment variables.
    deterministic = torch.cuda.is_available()
    set_seed(settings.seed, deterministic=deterministic)
    model = load_model(source, settings, quantize=quantize, adapter=parent, trainable=True)
    rows, eval_rows, dropped, truncated = _rows(examples, settings, prompt, tokenizer, say)
    validating = bool(eval_rows)
    if validating:
        # The Trainer saves checkpoints with PEFT's save_embedding_layers="auto", which looks up the base model
        # the adapter's config names: for a published parent, a portable hub id, asked of the hub at every
        # checkpoint. Name the one loaded instead (train_candidate saves without embeddings either way).
        model.peft_config[model.active_adapter].base_model_name_or_path = source
    config = SFTConfig(
        output_dir=str(work_dir),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=settings.seed,
        data_seed=settings.seed,
        full_determinism=deterministic,
        logging_steps=1,
        **(_early_stopping(settings) if validating else {"save_strategy": "no"}),
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() or bool(resolved_precision(settings).bf16_on_cpu),
        max_length=settings.max_length,
        completion_only_loss=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    early_stopping = [EarlyStoppingCallback(early_stopping_patience=settings.patience)] if validating else []
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if validating else None,
        processing_class=tokenizer,
        callbacks=[progress(say), *early_stopping],
    )
    trainer.remove_callback(PrinterCallback)  # our progress callback reports instead
    output = trainer.train()  # with validation: ends holding the best checkpoint's adapter (load_best_model_at_end)
    state = trainer.state
    history = state.log_history
    losses = [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h]
    evals = [(int(h["step"]), float(h["eval_loss"])) for h in history if "eval_loss" in h]
    tokens = int(max((float(h.get("num_tokens", 0)) for h in history), default=0))
    stopped_early = validating and state.global_step < settings.max_steps
    best_step = int(state.best_global_step) if validating and state.best_global_step else None
    if best_step is not None:
        how = f"stopped early at step {state.global_step}" if stopped_early else f"trained {state.global_step} steps"
        say(f"    {how}; kept step {best_step} (validation loss {dict(evals)[best_step]:.3f})")
    result = TrainResult(
        int(state.global_step),
        tokens,
        float(output.metrics["train_runtime"]),
        losses,
        dropped,
        truncated,
        evals,
        best_step,
        stopped_early,
        len(eval_rows),
    )
    return trainer.model, result


def _rows(
    examples: Sequence[TrainingExample],
    settings: TrainingSettings,
    prompt: PromptFormat | None,
    tokenizer: Any,
    say: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], list[str]]:
    """(rows to train on, rows to validate on, dropped, truncated): ``fates`` of ``validation_slice``'s two
    parts; with too few usable rows for a slice (2 to train on and 1 to validate on), every example is
    trained on, as without one."""
    kept, validation = validation_slice(examples, settings)
    rows, dropped, truncated = fates(kept, prompt, tokenizer, settings.max_length)
    eval_rows, eval_dropped, eval_truncated = fates(validation, prompt, tokenizer, settings.max_length)
    if validation and (len(rows) < 2 or not eval_rows):
        say(
            f"    no validation slice: {len(rows)} rows to train on and {len(eval_rows)} to validate on, fewer than "
            f"2 and 1; training on all {len(examples)} examples without early stopping"
        )
        rows, dropped, truncated = fates(examples, prompt, tokenizer, settings.max_length)
        eval_rows, eval_dropped, eval_truncated = [], [], []
    elif eval_rows:
        say(
            f"    validation: {len(eval_rows)} of {len(rows) + len(eval_rows)} rows set aside, evaluated every "
            f"{settings.eval_steps} steps; stopping after {settings.patience} without improvement"
        )
    # in the examples' order, as the manifest records them
    left_out, cut = {*dropped, *eval_dropped}, {*truncated, *eval_truncated}
    dropped = [e.example_id for e in examples if e.example_id in left_out]
    truncated = [e.example_id for e in examples if e.example_id in cut]
    if dropped or truncated:
        say(
            f"    {len(examples)} examples: {len(dropped)} dropped (no usable question and answer), "
            f"{len(truncated)} truncated to {settings.max_length} tokens (recorded in the manifest)"
        )
    return rows, eval_rows, dropped, truncated


def _early_stopping(settings: TrainingSettings) -> dict[str, Any]:
    """``SFTConfig`` arguments: a validation loss and a checkpoint every ``eval_steps`` (and at the last step),
    ending with the best checkpoint's weights. Checkpoints hold the adapter only."""
    return {
        "eval_strategy": "steps",
        "eval_steps": settings.eval_steps,
        "per_device_eval_batch_size": settings.batch_size,
        "save_strategy": "steps",
        "save_steps": settings.eval_steps,
        "save_total_limit": 1,  # with load_best_model_at_end the best one is kept besides the latest
        "save_only_model": True,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
    }


@dataclass(frozen=True)
class Candidate:
    """A freshly trained adapter, saved in ``adapter_dir``, and what it takes to load it again for the gate."""

    adapter_dir: Path
    source: str
    """The base model that was loaded (a folder or hub id)."""
    tokenizer: Any
    quantize: bool
    quantization: str
    """As the manifest records it: ``nf4+double-quant`` or ``none (<why>)``."""
    result: TrainResult
    prompt: PromptFormat | None = None
    """The format it was trained in; the gate scores both sides in it too."""
    preference: PreferenceFigures | None = None
    """The preference step after SFT, when there was one."""

    @property
    def sha256(self) -> str:
        return sha256_file(self.adapter_dir / ADAPTER_WEIGHTS)


def train_candidate(
    settings: Settings,
    examples: Sequence[TrainingExample],
    parent: Path | None,
    work: Path,
    say: Callable[[str], None] = print,
    prompt: PromptFormat | None = None,
    feedback: Sequence[TrainingExample] = (),
) -> Candidate:
    """Train on ``examples`` rendered in ``prompt`` (continuing from the ``parent`` adapter when given); the
    adapter goes to ``work/adapter``. Falls back to plain LoRA on the full-precision base where 4-bit does not
    work, and says so. ``feedback`` (rated-down answers, ``rating`` and ``preference`` examples): when given,
    the preference step (``prefer``) follows SFT, with the thumbs-up demonstrations among ``examples``."""
    from transformers import AutoTokenizer

    from streamtune.models import base_model_source, prepare_torch

    prepare_torch(settings.training.torch_threads, settings.memory)
    quantize, why_not = quantization_support() if settings.training.quantize_4bit else (False, "disabled by setting")
    if not quantize:
        say(f"    bitsandbytes 4-bit unavailable ({why_not}): training plain LoRA on the full-precision base")
    source = base_model_source(settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model, result = train(
        source,
        tokenizer,
        examples,
        settings.training,
        quantize=quantize,
        parent=parent,
        work_dir=work / "trainer",
        say=say,
        prompt=prompt,
    )
    preference = None
    if feedback:
        liked = [e for e in examples if e.label is True]
        rows = preference_rows([*liked, *feedback], prompt, tokenizer, settings.training.max_length)
        model, preference = prefer(model, tokenizer, rows, settings.training, work_dir=work / "prefer", say=say)
    adapter_dir = work / "adapter"
    # Embeddings are never trained; "auto" would ask the hub about the base model a parent's config names.
    # Only the trained adapter: the preference step's frozen "ref" copy is not part of the version.
    model.save_pretrained(str(adapter_dir), save_embedding_layers=False, selected_adapters=["default"])
    quantization = "nf4+double-quant" if quantize else f"none ({why_not})"
    return Candidate(adapter_dir, source, tokenizer, quantize, quantization, result, prompt, preference)


def preference_rows(
    examples: Sequence[TrainingExample], prompt: PromptFormat | None, tokenizer: Any, max_length: int
) -> list[dict[str, Any]]:
    """KTO's unpaired rows (prompt, completion, label), each prompt rendered as ``serve`` renders it (with the
    example's stored context): a correction gives two rows, the correction desirable and the answer it replaced
    undesirable; a rating gives its answer with its label; a demonstration labelled True, its answer."""
    rows: list[dict[str, Any]] = []
    for example in examples:
        pairs: list[tuple[TrainingExample, bool]] = []
        if example.kind == "preference" and example.rejected:
            served = [*example.messages[:-1], ChatMessage(role="assistant", content=example.rejected)]
            pairs = [(example, True), (example.model_copy(update={"messages": served}), False)]
        elif example.label is not None:
            pairs = [(example, example.label)]
        for variant, label in pairs:
            for row in conversation_rows([variant], prompt, tokenizer, max_length=max_length):
                rows.append({**row, "label": label})
    return rows


def prefer(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    settings: TrainingSettings,
    *,
    work_dir: Path,
    say: Callable[[str], None] = print,
) -> tuple[Any, PreferenceFigures | None]:
    """The preference step: trl's ``KTOTrainer`` on ``rows`` (``preference_rows``), continuing ``model`` (the
    PEFT model SFT just trained). Why KTO and not DPO: most feedback is a thumbs up or down without a
    correction, which DPO cannot use (it needs a chosen and a rejected answer to the same prompt); KTO takes
    each rated answer alone, and a correction as one good and one bad answer.

    The reference is the adapter as SFT left it, with no second copy of the model: given a ``PeftModel``, trl
    copies the trainable adapter into a frozen ``ref`` adapter of the same model (``train_candidate`` saves
    only the trained one). Skipped, and said, when the rows lack either label (KTO's KL estimate needs both)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import KTOConfig, KTOTrainer

    desirable = sum(1 for r in rows if r["label"])
    undesirable = len(rows) - desirable
    if not desirable or not undesirable or len(rows) < 2:
        say(f"    preference step skipped: {desirable} desirable and {undesirable} undesirable rows (needs both)")
        return model, None
    deterministic = torch.cuda.is_available()
    set_seed(settings.seed, deterministic=deterministic)
    config = KTOConfig(
        output_dir=str(work_dir),
        max_steps=settings.preference_steps,
        per_device_train_batch_size=max(2, min(settings.batch_size, len(rows))),  # KTO's KL term needs > 1
        learning_rate=settings.preference_learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        beta=settings.preference_beta,
        seed=settings.seed,
        data_seed=settings.seed,
        full_determinism=deterministic,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        # trl's configs default to bf16 and gradient checkpointing: decided here as for SFT
        bf16=torch.cuda.is_available() or bool(resolved_precision(settings).bf16_on_cpu),
        gradient_checkpointing=False,
        max_length=settings.max_length,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    say(
        f"    preference step (KTO): {config.max_steps} steps on {desirable} desirable + {undesirable} undesirable rows"
    )
    begin = time.monotonic()
    trainer = KTOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer,
        callbacks=[progress(say, every=5)],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    history = trainer.state.log_history
    losses = [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h]
    seconds = time.monotonic() - begin
    say(
        f"    preference step (KTO) done: {trainer.state.global_step} steps, "
        f"loss {losses[-1][1] if losses else float('nan'):.3f}, {seconds:.0f}s"
    )
    trained: Any = trainer.model
    if "ref" in getattr(trained, "peft_config", {}):
        trained.delete_adapter("ref")
    figures = PreferenceFigures(
        method="kto",
        steps=int(trainer.state.global_step),
        desirable=desirable,
        undesirable=undesirable,
        seconds=round(seconds, 3),
        losses=losses,
    )
    return trained, figures


@dataclass(frozen=True)
class EvalMetrics:
    loss: float
    exact_match: float
    token_f1: float
    examples: int

    def as_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "exact_match": self.exact_match,
            "token_f1": self.token_f1,
            "examples": self.examples,
        }


def _normalize(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _normalize(prediction), _normalize(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TrainingExample],
    max_new_tokens: int,
    *,
    generate: bool = True,
    prompt: PromptFormat | None = None,
) -> EvalMetrics:
    """Mean loss over the assistant's tokens, and exact match / token F1 of greedy answers.

    ``prompt``: score in the format ``serve`` prompts in (its full context budget: no training ``max_length``
    applies here); None: the examples' bare turns."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens, exact, f1 = 0.0, 0, 0.0, 0.0
    rows = conversation_rows(examples, prompt, tokenizer)
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
            full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
            prompt_ids, full_ids = _ids(prompt), _ids(full)
            ids = torch.tensor([full_ids], device=device)
            labels = ids.clone()
            labels[0, : len(prompt_ids)] = -100
            counted = int((labels != -100).sum())
            if counted:
                loss = model(input_ids=ids, labels=labels).loss
                total_loss += float(loss) * counted
                total_tokens += counted
            if generate:
                output = model.generate(
                    input_ids=torch.tensor([prompt_ids], device=device),
                    attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
                answer = tokenizer.decode(output[0][len(prompt_ids) :], skip_special_tokens=True).strip()
                reference = row["completion"][0]["content"]
                exact += float(_normalize(answer) == _normalize(reference))
                f1 += token_f1(answer, reference)
    n = max(len(rows), 1)
    loss = total_loss / total_tokens if total_tokens else math.nan
    return EvalMetrics(loss, exact / n if generate else math.nan, f1 / n if generate else math.nan, len(rows))


def _ids(encoded: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)`` returns a list or a BatchEncoding depending on the version."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]
