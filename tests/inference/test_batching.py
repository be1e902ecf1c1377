"""Continuous batching (``inference.batching``) on the tiny model: rows that join a running batch, leave it
when done, use different adapters per row, or reuse the cache of a shared prompt beginning give the tokens each
prompt gives alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.batching import PADDING_SLACK, Batcher, Row, grouped_query_attention, prefill_groups

PROMPTS = [
    "What is the refund window?",
    "Orders ship from Lisbon within two business days. Where do orders ship from?",
    "Bees make",
    "The capital of France is Paris. A week has seven days. What is the capital of France?",
]


def _alone(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, **kwargs: Any) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, **kwargs
        )
    tokens = out[0][ids["input_ids"].shape[1] :].tolist()
    return [t for t in tokens if t != tokenizer.eos_token_id]


def _run(batcher: Batcher, rows: list[Row], join_at: dict[int, list[Row]]) -> int:
    """Add ``rows`` first, then each of ``join_at[step]`` before that step; returns the largest batch seen."""
    largest = 0
    batcher.add(rows)
    step = 0
    while len(batcher) or any(k >= step for k in join_at):
        batcher.add(join_at.get(step, []))
        largest = max(largest, len(batcher))
        batcher.step()
        step += 1
    return largest


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> tuple[Any, Any]:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_rows_joining_and_leaving_a_running_batch_decode_as_they_would_alone(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    batcher = Batcher(
        lambda: model, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id, mixed_adapters=lambda: False
    )
    budgets = [12, 5, 20, 9]
    rows = [
        Row(i, tokenizer(p, add_special_tokens=False)["input_ids"], "__base__", n)
        for i, (p, n) in enumerate(zip(PROMPTS, budgets, strict=True))
    ]
    largest = _run(batcher, rows[:2], {3: [rows[2]], 7: [rows[3]]})
    assert largest == 3  # rows joined mid-decoding and one left (its budget of 5 ended) before the last joined
    for row, prompt, budget in zip(rows, PROMPTS, budgets, strict=True):
        assert row.generated == _alone(model, tokenizer, prompt, budget), prompt
        assert row.finish_reason in ("stop", "length")
        assert row.finish_reason == "stop" or len(row.generated) == budget
    assert len(batcher) == 0 and batcher._cache is None


def _two_adapters(model: Any, tmp_path: Path) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        lora = get_peft_model(
            AutoModelForCausalLM.from_pretrained(model.name_or_path),
            LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
        )
        lora.save_pretrained(tmp_path / name)
    peft = PeftModel.from_pretrained(base, str(tmp_path / "a"), adapter_name="a").eval()
    peft.load_adapter(str(tmp_path / "b"), adapter_name="b")
    return peft


def test_rows_of_different_adapters_share_a_batch(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    peft = _two_adapters(model, tmp_path)
    batcher = Batcher(
        lambda: peft, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id, mixed_adapters=lambda: True
    )
    plan = [("a", PROMPTS[0]), ("__base__", PROMPTS[0]), ("b", PROMPTS[1]), ("a", PROMPTS[2])]
    rows = [
        Row(i, tokenizer(p, add_special_tokens=False)["input_ids"], adapter, 10) for i, (adapter, p) in enumerate(plan)
    ]
    _run(batcher, rows[:3], {2: [rows[3]]})
    for row, (adapter, prompt) in zip(rows, plan, strict=True):
        assert row.generated == _alone(peft, tokenizer, prompt, 10, adapter_names=[adapter]), (adapter, prompt)
    assert rows[0].generated != rows[1].generated  # the adapter made a difference: same prompt, other tokens


def test_prompts_of_very_different_lengths_are_prefilled_in_groups_and_decode_as_alone(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    batcher = Batcher(
        lambda: model, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id, mixed_adapters=lambda: False
    )
    prompts = [PROMPTS[2], PROMPTS[3] * 4, PROMPTS[0], PROMPTS[3] * 4 + PROMPTS[1]]
    rows = [Row(i, tokenizer(p, add_special_tokens=False)["input_ids"], "__base__", 8) for i, p in enumerate(prompts)]
    groups = prefill_groups(rows)
    assert sorted(id(r) for g in groups for r in g) == sorted(map(id, rows))  # each row once
    assert {r.key for r in groups[0]} == {1, 3}  # the two long prompts first, no short one padded to their length
    for group in groups:
        real = sum(len(r.prompt_ids) for r in group)
        assert len(group) * max(len(r.prompt_ids) for r in group) <= (1 + PADDING_SLACK) * real
    _run(batcher, rows, {})
    for row, prompt in zip(rows, prompts, strict=True):
        assert row.generated == _alone(model, tokenizer, prompt, 8), prompt


def test_rows_reusing_a_shared_prefix_decode_as_they_would_alone(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    peft = _two_adapters(model, tmp_path)
    preamble = "<|im_start|>system: refunds are accepted within thirty days of purchase.<|im_end|><|im_start|>"
    shared = tokenizer(preamble, add_special_tokens=False)["input_ids"]
    batcher = Batcher(
        lambda: peft,
        eos_ids=[tokenizer.eos_token_id],
        pad_id=tokenizer.pad_token_id,
        mixed_adapters=lambda: True,
        shared_prefix=shared,
    )
    plan = [
        ("a", preamble + PROMPTS[0]),
        ("__base__", preamble + PROMPTS[3] * 3),  # long: the others are padded after the prefix, then it leaves
        ("b", preamble + PROMPTS[2]),
        ("a", PROMPTS[1]),  # does not begin with the prefix: prefilled whole, beside the others
        ("b", preamble + PROMPTS[1]),  # joins the running batch later
    ]
    budgets = [10, 3, 12, 10, 8]
    rows = [
        Row(i, tokenizer(p, add_special_tokens=False)["input_ids"], adapter, n)
        for i, ((adapter, p), n) in enumerate(zip(plan, budgets, strict=True))
    ]
    _run(batcher, rows[:4], {2: [rows[4]]})
    for row, (adapter, prompt), budget in zip(rows, plan, budgets, strict=True):
        assert row.generated == _alone(peft, tokenizer, prompt, budget, adapter_names=[adapter]), (adapter, prompt)
    assert set(batcher._prefixes) == {"a", "b", "__base__"}  # one prefix cache per adapter, computed once each
    assert rows[0].generated != _alone(peft, tokenizer, plan[0][1], 10, adapter_names=["b"])  # the adapter counts


def test_a_shared_prefix_leaves_no_padding_column_behind(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    preamble = "user assistant system: refunds are accepted within thirty days of purchase."
    batcher = Batcher(
        lambda: model,
        eos_ids=[tokenizer.eos_token_id],
        pad_id=tokenizer.pad_token_id,
        mixed_adapters=lambda: False,
        shared_prefix=tokenizer(preamble, add_special_tokens=False)["input_ids"],
    )
    long, short = (
        Row(i, tokenizer(preamble + p, add_special_tokens=False)["input_ids"], "__base__", n)
        for i, (p, n) in enumerate(((PROMPTS[3] * 3, 1), (PROMPTS[2], 6)))
    )
    batcher.add([long, short])  # the long row ends at its first token: the short one's padding goes with it
    assert batcher.rows == [short] and "__base__" in batcher._prefixes  # both reused the prefix
    assert bool(batcher._mask.bool().all())
    assert batcher._cache.layers[0].keys.shape[2] == len(short.prompt_ids)


def test_grouped_query_attention_gives_the_tokens_of_the_default_attention(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the tiny model groups its heads
    grouped_query_attention(model)
    assert model.config._attn_implementation != "sdpa"
    batcher = Batcher(
        lambda: model, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id, mixed_adapters=lambda: False
    )
    rows = [Row(i, tokenizer(p, add_special_tokens=False)["input_ids"], "__base__", 10) for i, p in enumerate(PROMPTS)]
    _run(batcher, rows[:3], {2: [rows[3]]})  # padded prompts and a join: every step has a padding mask
    default = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    for row, prompt in zip(rows, PROMPTS, strict=True):
        assert row.generated == _alone(default, tokenizer, prompt, 10), prompt
