"""Continuous (iteration-level) batching on the model's own forward pass and KV cache.

A running batch decodes one token per row per ``step``. A row that ends (its end-of-sequence token, a stop
sequence or its token budget) leaves at once and frees its slot; rows that arrive meanwhile are ``add``-ed
between two steps: they are prefilled together (one forward over their prompts), their first token comes out
of that prefill, and their KV cache joins the running one, so they decode in the very next step beside rows
that started earlier. Rows of different tenants use different LoRA adapters in the same forward (PEFT's
``adapter_names``, ``"__base__"`` for the base model).

Why not the library's: transformers' ``ContinuousBatchingManager`` schedules at the iteration level with a
paged cache, but takes no adapter per request, and serving many tenants' adapters in one batch is what
``serve`` is for; vLLM (multi-LoRA) is the engine for GPUs and does not run on these CPU machines. So this
module builds the scheduler on ``model.forward`` with a ``DynamicCache``, whose per-layer tensors
(``[batch, kv_heads, length, head_dim]``) are concatenated, left-padded and indexed by batch row here.

How rows of different lengths share one cache: every row is left-padded to the batch's length and the padding
is masked out (``attention_mask``); each row's positions are its own (``position_ids``): keys are stored after
the rotary embedding, so padding never shifts a row's positions. When rows leave, the columns that only
padding still fills are cut off. Greedy decoding in a batch gives the tokens that decoding each row alone
gives (a test checks it on the tiny model), up to float rounding, as with any batched generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher", "Row", "TokenEvent"]


@dataclass
class Row:
    """One answer being generated."""

    key: Any
    """The caller's handle (``serve``: the query being answered)."""
    prompt_ids: list[int]
    adapter: str
    """The adapter's name on the PEFT model (``AdapterCache.name``), ``"__base__"`` for none."""
    max_new_tokens: int
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    """``stop`` (end of sequence) or ``length`` (``max_new_tokens`` reached), once finished."""
    _pending: int | None = None  # the last token generated, fed at the next step


@dataclass(frozen=True)
class TokenEvent:
    row: Row
    token: int | None
    """The token generated (None: the row ended on its end-of-sequence token, which is not part of the text)."""


class Batcher:
    """The running batch of one model (see the module docstring).

    ``model`` is read through ``get_model`` at each forward, since ``AdapterCache`` may wrap the base model in a
    PEFT model when the first adapter loads. ``mixed_adapters()`` says whether to pass ``adapter_names``.
    """

    def __init__(
        self,
        get_model: Callable[[], Any],
        *,
        eos_ids: Sequence[int],
        pad_id: int,
        mixed_adapters: Callable[[], bool],
    ) -> None:
        self.get_model = get_model
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.mixed_adapters = mixed_adapters
        self.rows: list[Row] = []
        self._cache: Any = None
        self._mask: Any = None  # [rows, length]: 1 for a real token, 0 for padding
        self._lengths: list[int] = []  # real tokens of each row in the cache

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[Row]) -> list[TokenEvent]:
        """Prefill ``rows`` together and join them to the running batch; returns their first tokens."""
        import torch
        from transformers import DynamicCache

        if not rows:
            return []
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids, dtype=torch.long)
            mask[i, width - len(row.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache, [r.adapter for r in rows], past=0)
        self._join(cache, mask, [len(r.prompt_ids) for r in rows], list(rows))
        return self._advance(list(rows), logits[:, -1, :])

    def step(self) -> list[TokenEvent]:
        """One decoding step of every running row; finished rows leave the batch."""
        import torch

        if not self.rows:
            return []
        ids = torch.tensor([[r._pending] for r in self.rows], dtype=torch.long)
        past = int(self._mask.shape[1])
        self._mask = torch.cat([self._mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        positions = torch.tensor([[n] for n in self._lengths], dtype=torch.long)
        logits = self._forward(ids, self._mask, positions, self._cache, [r.adapter for r in self.rows], past=past)
        self._lengths = [n + 1 for n in self._lengths]
        return self._advance(list(self.rows), logits[:, -1, :])

    def drop(self, keep: Callable[[Row], bool]) -> list[Row]:
        """Take the rows ``keep`` refuses out of the batch (e.g. an answer nobody waits for); returns them."""
        gone = [r for r in self.rows if not keep(r)]
        if gone:
            self._remove(set(map(id, gone)))
        return gone

    # -- internals --------------------------------------------------------------------------------
    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str], past: int) -> Any:
        import torch

        kwargs: dict[str, Any] = {}
        if self.mixed_adapters():
            kwargs["adapter_names"] = adapters
        cache_position = torch.arange(past, past + ids.shape[1], dtype=torch.long)
        with torch.no_grad():
            out = self.get_model()(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                cache_position=cache_position,
                use_cache=True,
                **kwargs,
            )
        return out.logits

    def _advance(self, rows: list[Row], last_logits: Any) -> list[TokenEvent]:
        tokens = last_logits.argmax(dim=-1).tolist()
        events, finished = [], set()
        for row, token in zip(rows, tokens, strict=True):
            if token in self.eos_ids:
                row.finish_reason = "stop"
                events.append(TokenEvent(row, None))
                finished.add(id(row))
                continue
            row.generated.append(int(token))
            row._pending = int(token)
            events.append(TokenEvent(row, int(token)))
            if len(row.generated) >= row.max_new_tokens:
                row.finish_reason = "length"
                finished.add(id(row))
        if finished:
            self._remove(finished)
        return events

    def _join(self, cache: Any, mask: Any, lengths: list[int], rows: list[Row]) -> None:
        import torch

        if self._cache is None or not self.rows:
            self._cache, self._mask, self._lengths, self.rows = cache, mask, lengths, rows
            return
        old, new = int(self._mask.shape[1]), int(mask.shape[1])
        width = max(old, new)
        self._mask = torch.cat([_left_pad(self._mask, width - old), _left_pad(mask, width - new)], dim=0)
        for ours, theirs in zip(self._cache.layers, cache.layers, strict=True):
            ours.keys = torch.cat(
                [_left_pad(ours.keys, width - old, dim=2), _left_pad(theirs.keys, width - new, dim=2)]
            )
            ours.values = torch.cat(
                [_left_pad(ours.values, width - old, dim=2), _left_pad(theirs.values, width - new, dim=2)]
            )
        self.rows += rows
        self._lengths += lengths

    def _remove(self, gone: set[int]) -> None:
        import torch

        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if not keep:
            self.rows, self._lengths, self._cache, self._mask = [], [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[i] for i in keep]
        self._lengths = [self._lengths[i] for i in keep]
        self._mask = self._mask[index]
        # the columns only padding fills once the longest rows are gone
        lead = int((self._mask.cumsum(-1) == 0).sum(-1).min())
        self._mask = self._mask[:, lead:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index][:, :, lead:]
            layer.values = layer.values[index][:, :, lead:]


def _left_pad(tensor: Any, count: int, dim: int = 1) -> Any:
    """``tensor`` with ``count`` zeros in front along ``dim`` (masked positions: their values never count)."""
    import torch

    if count == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = count
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)
