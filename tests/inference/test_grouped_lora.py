"""The grouped LoRA (``inference.grouped_lora``) on the tiny model: a batch whose rows use different adapters gives
the logits PEFT's own mixed batch gives, including adapters of different ranks and target modules and rows of the
base model; adapters it cannot group are left to PEFT; outside ``rows`` it adds nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from inference.grouped_lora import BASE, GroupedLora


def _save(source: str, folder: Path, seed: int, config: LoraConfig) -> None:
    torch.manual_seed(seed)
    get_peft_model(AutoModelForCausalLM.from_pretrained(source), config).save_pretrained(folder)


@pytest.fixture(scope="module")
def peft(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Three adapters that differ in rank, alpha and the layers they wrap (c only the attention's q and v)."""
    folder = tmp_path_factory.mktemp("adapters")
    source = str(tiny_model)
    _save(source, folder / "a", 1, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    _save(source, folder / "b", 2, LoraConfig(r=8, lora_alpha=4, target_modules="all-linear", init_lora_weights=False))
    _save(source, folder / "c", 3, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source), str(folder / "a"), "a")
    model.load_adapter(str(folder / "b"), adapter_name="b")
    model.load_adapter(str(folder / "c"), adapter_name="c")
    return model.eval()


def _logits(model: Any, ids: Any, names: list[str]) -> Any:
    with torch.no_grad():
        return model(input_ids=ids, adapter_names=names).logits


@pytest.mark.parametrize("tokens", [1, 7])  # a decoding step and a prefill
def test_a_mixed_batch_gives_the_logits_of_peft_mixing_it(peft: Any, tokens: int) -> None:
    torch.manual_seed(0)
    adapters = ["a", "b", BASE, "c", "a", "b", "c", BASE]
    ids = torch.randint(0, 200, (len(adapters), tokens))
    expected = _logits(peft, ids, adapters)
    grouped = GroupedLora()
    with grouped.rows(peft, adapters) as names:
        assert names == [BASE] * len(adapters)  # PEFT adds nothing itself; the hooks add each row's adapter
        got = _logits(peft, ids, names)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    base = _logits(peft, ids, [BASE] * len(adapters))
    for row, adapter in enumerate(adapters):  # the adapters do change the rows they serve, and only those
        assert bool((got[row] - base[row]).abs().max() > 1e-3) == (adapter != BASE), (row, adapter)
    # the same set again reuses its stacks; another subset gets its own
    expected = _logits(peft, ids[:2], ["c", "a"])
    with grouped.rows(peft, ["c", "a"]) as names:
        torch.testing.assert_close(_logits(peft, ids[:2], names), expected, rtol=1e-4, atol=1e-5)
    assert set(grouped._stacks) == {("a", "b", "c"), ("c", "a")}


def test_outside_rows_or_in_another_thread_the_hooks_add_nothing(peft: Any) -> None:
    ids = torch.randint(0, 200, (2, 3))
    with torch.no_grad(), peft.disable_adapter():
        base = peft(input_ids=ids).logits
    grouped = GroupedLora()
    with grouped.rows(peft, ["a", "b"]) as names:
        assert not torch.allclose(_logits(peft, ids, names), base)  # the hooks are there and act inside
    torch.testing.assert_close(_logits(peft, ids, [BASE, BASE]), base)
    seen: list[Any] = []
    with grouped.rows(peft, ["a", "b"]):
        thread = threading.Thread(target=lambda: seen.append(_logits(peft, ids, [BASE, BASE])))
        thread.start()
        thread.join()
    torch.testing.assert_close(seen[0], base)


# the tiny model's layers have no bias, and PEFT's save takes the LoRA biases for unsaved shards: both as meant
@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed", "ignore:Adapter 'default'.*invalid shape")
def test_an_adapter_it_cannot_group_is_left_to_peft(tiny_model: Path, tmp_path: Path, peft: Any) -> None:
    """A LoRA with a bias of its own is not plain LoRA: ``rows`` yields the adapters as they are, adds nothing, and
    PEFT mixes them."""
    config = LoraConfig(r=4, lora_bias=True, target_modules="all-linear", init_lora_weights=False)
    _save(str(tiny_model), tmp_path / "d", 4, config)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(tmp_path / "d"), "d")
    model.load_adapter(str(tmp_path / "d"), adapter_name="e")
    model.eval()
    ids = torch.randint(0, 200, (3, 4))
    adapters = ["d", BASE, "e"]
    grouped = GroupedLora()
    with grouped.rows(model, adapters) as names:
        assert names == adapters
        got = _logits(model, ids, names)
    torch.testing.assert_close(got, _logits(model, ids, adapters))
    assert not grouped._stacks


def test_the_same_grouping_follows_another_model(tiny_model: Path, tmp_path: Path, peft: Any) -> None:
    """``serve`` wraps its base model in a PEFT model at the first load: the stacks and hooks of a model that is no
    longer the one passed are dropped, and the new model's rows get their own adapters."""
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    _save(str(tiny_model), tmp_path / "x", 5, config)
    _save(str(tiny_model), tmp_path / "y", 6, config)
    other = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(tmp_path / "x"), "a")
    other.load_adapter(str(tmp_path / "y"), adapter_name="b")  # the same names as the first model's, other weights
    other.eval()
    ids = torch.randint(0, 200, (2, 3))
    grouped = GroupedLora()
    for model in (peft, other, peft):
        expected = _logits(model, ids, ["a", "b"])
        with grouped.rows(model, ["a", "b"]) as names:
            torch.testing.assert_close(_logits(model, ids, names), expected, rtol=1e-4, atol=1e-5)
