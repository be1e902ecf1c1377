"""Every row's own LoRA adapter in one batch, two matrix products per layer (a grouped LoRA for CPUs).

PEFT mixes adapters in a batch (``adapter_names``) by looping, in each of the model's LoRA layers, over the
batch's adapters: it gathers each adapter's rows, runs its two small products and adds the result back by index.
On a CPU that loop costs more than the LoRA arithmetic itself: one forward of 24 rows of one token over four
rank-16 adapters on SmolLM2-135M (2 threads) took 495 ms with PEFT's mixing, 175 ms grouped as below, and 132 ms
for the base model alone. vLLM's punica kernels group LoRA on a GPU; PEFT has none for a CPU, so it is done here,
on PEFT's own modules and weights.

How: the batch's adapters' ``A`` matrices are stacked, ``[sum of ranks, in]``, and their ``B`` matrices, each
scaled by its adapter's ``scaling``, ``[out, sum of ranks]``. Each row takes ``x @ A_all.T``, keeps only its own
adapter's columns (a 0/1 mask), and adds ``(that) @ B_all.T``: the sum PEFT computes for the row, in two dense
products for the whole batch. A row of the base model (``"__base__"``) keeps no column. The extra arithmetic is
the other adapters' columns, which the mask zeroes.

The model's forward is still PEFT's, with every row named ``"__base__"`` so that PEFT adds nothing itself; a
forward hook on each LoRA layer adds the grouped sum while ``rows`` is active, in the thread that entered it.
Stacks are kept per set of adapters (``STACKS``, least recently used out): an adapter's name names a published
version whose weights never change, so a stack stays right after its adapter is evicted and loaded again (and
holds at most ``STACKS`` sets' copies meanwhile). They are of one model: ``rows`` with another drops them and
the old model's hooks. Adapters that are not plain linear LoRA (a LoRA bias, a ``lora_variant``, an embedding or
convolution layer) are left to PEFT's own mixing, as before: ``rows`` then yields the adapters themselves (and
PEFT refuses what it cannot mix either, such as DoRA, with its own error).

Dropout is not applied: serving runs the model in eval mode, where LoRA's dropout is the identity.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BASE", "GroupedLora"]

BASE = "__base__"
STACKS = 4
"""Sets of adapters whose stacked weights are kept (a set changes as rows of other tenants join and leave)."""


@dataclass(frozen=True)
class _Stack:
    a: Any  # [sum of ranks, in]
    b: Any  # [out, sum of ranks], each adapter's columns times its scaling
    spans: tuple[tuple[str, int, int], ...]  # (adapter, first column, end column)


class GroupedLora:
    """The grouped LoRA of one PEFT model's layers (see the module docstring)."""

    def __init__(self) -> None:
        self._model: weakref.ref[Any] | None = None  # the model the stacks and hooks below are of
        self._hooked: dict[int, Any] = {}  # id(layer) -> the hook's handle
        self._stacks: OrderedDict[tuple[str, ...], dict[int, _Stack | None]] = OrderedDict()
        self._local = threading.local()  # .active: this thread's (stacks, masks) while ``rows`` is active

    @staticmethod
    def layers(model: Any) -> list[Any]:
        from peft.tuners.lora import LoraLayer

        return [m for m in model.modules() if isinstance(m, LoraLayer)]

    @contextlib.contextmanager
    def rows(self, model: Any, adapters: Sequence[str]) -> Iterator[list[str]]:
        """While active, each LoRA layer adds row ``i``'s adapter ``adapters[i]``; yields the ``adapter_names`` to
        pass to PEFT's forward: every row ``"__base__"``, so that PEFT adds nothing itself, or ``adapters`` as they
        are where one of them is not plain linear LoRA (PEFT mixes those itself)."""
        import torch

        if self._model is None or self._model() is not model:  # another model: its layers are other objects
            self._stacks.clear()
            for handle in self._hooked.values():
                handle.remove()
            self._hooked.clear()
            self._model = weakref.ref(model)
        distinct = tuple(dict.fromkeys(a for a in adapters if a != BASE))
        stacks = self._stacks_of(model, distinct) if distinct else {}
        if stacks is None:
            yield list(adapters)
            return
        masks: dict[tuple[tuple[str, int, int], ...], Any] = {}
        for stack in stacks.values():
            if stack is not None and stack.spans not in masks:
                width = stack.a.shape[0]
                mask = torch.zeros((len(adapters), width), dtype=stack.a.dtype, device=stack.a.device)
                where = {name: (begin, end) for name, begin, end in stack.spans}
                for i, adapter in enumerate(adapters):
                    if adapter in where:
                        mask[i, where[adapter][0] : where[adapter][1]] = 1
                masks[stack.spans] = mask
        self._local.active = (stacks, masks)
        try:
            yield [BASE] * len(adapters)
        finally:
            self._local.active = None

    def _stacks_of(self, model: Any, distinct: tuple[str, ...]) -> dict[int, _Stack | None] | None:
        """Each LoRA layer's stack of ``distinct`` (None for a layer that holds none of them); None when one of
        them is not plain linear LoRA somewhere."""
        import torch

        if distinct in self._stacks:
            self._stacks.move_to_end(distinct)
            return self._stacks[distinct]
        layers = self.layers(model)
        if not all(_plain(layer, distinct) for layer in layers):
            return None
        stacks: dict[int, _Stack | None] = {}
        for layer in layers:
            if id(layer) not in self._hooked:
                self._hooked[id(layer)] = layer.register_forward_hook(self._add)
            held = [a for a in distinct if a in layer.lora_A]
            if not held:
                stacks[id(layer)] = None
                continue
            spans, begin = [], 0
            for adapter in held:
                rank = int(layer.lora_A[adapter].weight.shape[0])
                spans.append((adapter, begin, begin + rank))
                begin += rank
            with torch.no_grad():
                a = torch.cat([layer.lora_A[adapter].weight for adapter in held])
                b = torch.cat([layer.lora_B[adapter].weight * layer.scaling[adapter] for adapter in held], dim=1)
            stacks[id(layer)] = _Stack(a.contiguous(), b.contiguous(), tuple(spans))
        self._stacks[distinct] = stacks
        while len(self._stacks) > STACKS:
            self._stacks.popitem(last=False)
        return stacks

    def _add(self, layer: Any, args: tuple[Any, ...], output: Any) -> Any:
        import torch.nn.functional as F

        active = getattr(self._local, "active", None)
        if active is None:  # another thread's forward, or one outside ``rows``
            return None
        stacks, masks = active
        stack = stacks.get(id(layer))
        if stack is None:
            return None
        x = args[0].to(stack.a.dtype)
        low = F.linear(x, stack.a)  # [rows, tokens, sum of ranks]
        low *= masks[stack.spans].unsqueeze(1) if low.dim() == 3 else masks[stack.spans]
        output = output.contiguous()  # a no-op for a linear layer's fresh output; ``view`` below needs it
        flat = output.view(-1, output.shape[-1])
        flat.addmm_(low.view(-1, low.shape[-1]).to(output.dtype), stack.b.t().to(output.dtype))
        return output


def _plain(layer: Any, adapters: tuple[str, ...]) -> bool:
    """Whether ``layer`` holds each of ``adapters`` as plain linear LoRA, or not at all."""
    import torch

    if set(adapters) & set(getattr(layer, "lora_embedding_A", {})):
        return False
    held = set(adapters) & set(layer.lora_A.keys())
    return not (
        held & set(getattr(layer, "lora_variant", {}))
        or any(getattr(layer, "lora_bias", {}).get(a, False) for a in held)
        or not all(isinstance(layer.lora_A[a], torch.nn.Linear) for a in held)
    )
