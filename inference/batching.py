"""Continuous (iteration-level) batching on the model's own forward pass and KV cache.

A running batch decodes one token per row per ``step``. A row that ends (its end-of-sequence token, a stop
sequence or its token budget) leaves at once and frees its slot; rows that arrive meanwhile are ``add``-ed
between two steps: they are prefilled together (one forward over the prompts of each group of similar length,
``prefill_groups``), their first token comes out of that prefill, and their KV cache joins the running one, so
they decode in the very next step beside rows that started earlier. Rows of different tenants use different
LoRA adapters in the same forward: each row's adapter is added by ``grouped_lora`` (two matrix products per layer
for the whole batch) on PEFT's layers and weights, ``"__base__"`` for the base model.

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

The prompts' shared beginning (``shared_prefix``: ``serve``'s chat template up to the user's turn, 87 of the
bench's 233 tokens a prompt on average) is prefilled once per adapter and its KV cache reused: a row whose prompt
starts with it is prefilled from there on (its cache is ``[prefix][padding][the rest]``; the padding in the middle
is masked like any other and the positions stay the row's own). Its keys and values are what prefilling the whole
prompt computes for those positions (up to float rounding): a causal model's first positions never see the later
ones.

Attention reads the model's few key/value heads directly (``grouped_query_attention``) instead of copying them to
every query head per layer and step, which transformers' ``sdpa`` does whenever a padding mask is passed.

Each row brings its own generation controls (the query's): a token budget, stop sequences, and its
``Sampling``. Rows with different controls share every forward pass; only the choice of the next token is per
row. A greedy row takes the argmax, exactly as before; a sampling row scales its logits by its temperature,
keeps its nucleus (transformers' ``TemperatureLogitsWarper`` and ``TopPLogitsWarper``) and draws with a
``torch.Generator`` of its own, seeded with its seed, so that its draws never depend on the other rows: the same
seed, prompt and adapter give the same tokens in any batch (up to the float rounding above). A stop sequence is
looked for in the row's decoded text after each token; the row ends at the token that completes one, and
``Row.stop_at`` says where in the text it begins (the text up to there is the answer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from inference.grouped_lora import GroupedLora

if TYPE_CHECKING:
    from streamtune.contracts import Query

__all__ = ["Batcher", "Row", "Sampling", "TokenEvent", "find_stop", "grouped_query_attention", "prefill_groups"]


@dataclass(frozen=True)
class Sampling:
    """How a row picks its next token (the query's ``temperature``, ``top_p`` and ``seed``)."""

    temperature: float | None = None
    """None or 0: greedy (the most likely token; ``top_p`` and ``seed`` do not matter then)."""
    top_p: float | None = None
    """Sample only among the most likely tokens whose probabilities add up to ``top_p`` (None or 1: all)."""
    seed: int | None = None
    """Seed of the row's own generator (None: a random one)."""

    @property
    def greedy(self) -> bool:
        return not self.temperature

    @classmethod
    def of(cls, query: Query) -> Sampling:
        return cls(query.temperature, query.top_p, query.seed)


_GREEDY = Sampling()


@dataclass
class Row:
    """One answer being generated."""

    key: Any
    """The caller's handle (``serve``: the query being answered)."""
    prompt_ids: list[int]
    adapter: str
    """The adapter's name on the PEFT model (``AdapterCache.name``), ``"__base__"`` for none."""
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    """Sequences that end the row where one first appears in its decoded text (``Batcher.decode`` decodes)."""
    sampling: Sampling = _GREEDY
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    """``stop`` (end of sequence or a stop sequence) or ``length`` (``max_new_tokens`` reached), once finished."""
    stop_at: int | None = None
    """Where the stop sequence that ended the row begins in the decoded text of ``generated`` (None: none did)."""
    _pending: int | None = None  # the last token generated, fed at the next step
    _generator: Any = None  # the row's torch.Generator, made at its first sampled token

    @classmethod
    def of(cls, key: Any, prompt_ids: list[int], adapter: str, query: Query, max_new_tokens: int) -> Row:
        """A row with ``query``'s controls; its budget is the query's ``max_tokens`` capped by ``max_new_tokens``."""
        budget = min(query.max_tokens or max_new_tokens, max_new_tokens)
        return cls(key, prompt_ids, adapter, budget, stop=tuple(query.stop or ()), sampling=Sampling.of(query))

    def take(self, token: int, eos_ids: Container[int], decode: Callable[[list[int]], str] | None) -> bool:
        """Record ``token`` as the row's next; True when it ends the row: an end-of-sequence token (not kept), a
        completed stop sequence (``decode`` turns the tokens into text), or the budget reached. The one rule for
        every path, the static one (``Answerer._generate_group``) included."""
        if token in eos_ids:
            self.finish_reason = "stop"
            return True
        self.generated.append(token)
        self._pending = token
        if self.stop and decode is not None:
            self.stop_at = find_stop(decode(self.generated), self.stop)
            if self.stop_at is not None:
                self.finish_reason = "stop"
                return True
        if len(self.generated) >= self.max_new_tokens:
            self.finish_reason = "length"
            return True
        return False


@dataclass(frozen=True)
class TokenEvent:
    row: Row
    token: int | None
    """The token generated (None: the row ended on its end-of-sequence token, which is not part of the text)."""


class Batcher:
    """The running batch of one model (see the module docstring).

    ``model`` is read through ``get_model`` at each forward, since ``AdapterCache`` may wrap the base model in a
    PEFT model when the first adapter loads. ``mixed_adapters()`` says whether to pass ``adapter_names``.
    ``decode`` (token ids to text) is needed for rows with stop sequences. ``shared_prefix``: token ids that most
    prompts begin with, prefilled once per adapter (see the module docstring; empty: none).
    """

    def __init__(
        self,
        get_model: Callable[[], Any],
        *,
        eos_ids: Sequence[int],
        pad_id: int,
        mixed_adapters: Callable[[], bool],
        decode: Callable[[list[int]], str] | None = None,
        shared_prefix: Sequence[int] = (),
    ) -> None:
        self.get_model = get_model
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.mixed_adapters = mixed_adapters
        self.decode = decode
        self.rows: list[Row] = []
        self._cache: Any = None
        self._mask: Any = None  # [rows, length]: 1 for a real token, 0 for padding
        self._lengths: list[int] = []  # real tokens of each row in the cache
        self.shared_prefix = list(shared_prefix)
        self._prefixes: OrderedDict[str, list[tuple[Any, Any]]] = OrderedDict()  # adapter -> per layer (keys, values)
        self._lora = GroupedLora()

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[Row]) -> list[TokenEvent]:
        """Prefill ``rows`` and join them to the running batch; returns their first tokens. Rows of similar
        prompt length are prefilled together (``prefill_groups``), so that padding costs little compute."""
        if not rows:
            return []
        if self.decode is None and any(r.stop for r in rows):
            raise ValueError("rows with stop sequences need the Batcher's decode (token ids to text)")
        events: list[TokenEvent] = []
        shared = len(self.shared_prefix)
        reuses = {id(r) for r in rows if shared and _starts_with(r.prompt_ids, self.shared_prefix)}
        prefixed = [r for r in rows if id(r) in reuses]
        whole = [r for r in rows if id(r) not in reuses]
        for skip, part in ((shared, prefixed), (0, whole)):
            for group in prefill_groups(part, skip):
                logits = self._prefill(group, skip)
                events += self._advance(group, logits[:, -1, :])
        return events

    def _prefill(self, rows: list[Row], skip: int = 0) -> Any:
        """One forward over ``rows``' prompts (left-padded to the longest) after their first ``skip`` tokens (the
        shared prefix, whose cache is reused), their cache joined to the running one; the logits of each row's
        last position only (``logits_to_keep``: the language-model head over every prompt position would cost a
        fifth of the prefill and a [rows, length, vocabulary] tensor)."""
        import torch
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) - skip for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids) + skip :] = torch.tensor(row.prompt_ids[skip:], dtype=torch.long)
            mask[i, width - len(row.prompt_ids) + skip :] = 1
        positions = skip + (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        if skip:
            prefixes = self._prefix_caches([r.adapter for r in rows])
            for index, per_row in enumerate(zip(*(prefixes[r.adapter] for r in rows), strict=True)):
                if len(prefixes) == 1:  # one adapter: its prefix seen once per row, not copied
                    keys, values = (t.expand(len(rows), -1, -1, -1) for t in per_row[0])
                else:
                    keys, values = torch.cat([k for k, _ in per_row]), torch.cat([v for _, v in per_row])
                cache.update(keys, values, index)
            mask = torch.cat([torch.ones((len(rows), skip), dtype=torch.long), mask], dim=1)
        logits = self._forward(ids, mask, positions, cache, [r.adapter for r in rows], past=skip, last_only=True)
        self._join(cache, mask, [len(r.prompt_ids) for r in rows], rows)
        return logits

    def _prefix_caches(self, adapters: list[str]) -> dict[str, list[tuple[Any, Any]]]:
        """The shared prefix's cache for each of ``adapters`` (an adapter changes every layer's keys and values),
        computed in one forward for those not yet cached; the least recently used beyond ``PREFIX_CACHES`` go. Kept
        by name: an adapter's name (``AdapterCache.name``) names a published version, whose weights never change."""
        import torch
        from transformers import DynamicCache

        wanted = list(dict.fromkeys(adapters))
        missing = [a for a in wanted if a not in self._prefixes]
        if missing:
            ids = torch.tensor([self.shared_prefix] * len(missing), dtype=torch.long)
            mask = torch.ones_like(ids)
            positions = torch.arange(ids.shape[1], dtype=torch.long).expand(len(missing), -1)
            cache: Any = DynamicCache()  # its layers' keys and values, read below as _join reads them
            self._forward(ids, mask, positions, cache, missing, past=0, last_only=True)
            for i, adapter in enumerate(missing):
                self._prefixes[adapter] = [
                    (layer.keys[i : i + 1].clone(), layer.values[i : i + 1].clone()) for layer in cache.layers
                ]
        for adapter in wanted:
            self._prefixes.move_to_end(adapter)
        while len(self._prefixes) > max(PREFIX_CACHES, len(wanted)):
            self._prefixes.popitem(last=False)
        return {a: self._prefixes[a] for a in wanted}

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
    def _forward(
        self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str], past: int, last_only: bool = False
    ) -> Any:
        import torch

        kwargs: dict[str, Any] = {}
        if last_only:
            kwargs["logits_to_keep"] = 1
        cache_position = torch.arange(past, past + ids.shape[1], dtype=torch.long)
        model = self.get_model()
        mixed = self.mixed_adapters()
        with torch.no_grad(), self._lora.rows(model, adapters if mixed else []) as names:
            if mixed:
                kwargs["adapter_names"] = names
            out = model(
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
        tokens = last_logits.argmax(dim=-1).tolist()  # the greedy rows' choice, as it has always been
        events, finished = [], set()
        for index, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if not row.sampling.greedy:
                token = _sample(row, last_logits[index])
            if row.take(int(token), self.eos_ids, self.decode):
                finished.add(id(row))
            events.append(TokenEvent(row, None if token in self.eos_ids else int(token)))
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
        # the columns only padding fills once the longest rows are gone (in front, or after a shared prefix)
        used = self._mask.bool().any(0)
        columns = used.nonzero().squeeze(1) if not bool(used.all()) else None
        if columns is not None:
            self._mask = self._mask[:, columns]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index] if columns is None else layer.keys[index][:, :, columns]
            layer.values = layer.values[index] if columns is None else layer.values[index][:, :, columns]


PADDING_SLACK = 0.25
"""How much padding a prefill group may add to its rows' real tokens (a quarter more compute at most)."""

PREFIX_CACHES = 16
"""Adapters whose shared-prefix cache is kept (each about 4 MB for SmolLM2-135M's 87-token prefix)."""


def prefill_groups(rows: Sequence[Row], skip: int = 0) -> list[list[Row]]:
    """``rows`` in groups to prefill together, longest prompts first: a group takes the next row while its
    padded size (rows x its longest prompt) stays within ``PADDING_SLACK`` of its real tokens. On a CPU, one
    forward over many short rows costs what it costs over the same tokens in fewer rows, so padding a 100-token
    prompt to 400 would be pure waste; grouping keeps the one forward per group that batching is for. ``skip``:
    the leading tokens not prefilled (a shared prefix whose cache is reused) do not count."""
    ordered = sorted(rows, key=lambda r: len(r.prompt_ids), reverse=True)
    groups: list[list[Row]] = []
    for row in ordered:
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(len(r.prompt_ids) - skip for r in group) + len(row.prompt_ids) - skip
            if (len(group) + 1) * (len(group[0].prompt_ids) - skip) <= (1 + PADDING_SLACK) * real:
                group.append(row)
                continue
        groups.append([row])
    return groups


def grouped_query_attention(model: Any) -> None:
    """Make ``model`` (on a CPU, with ``sdpa`` attention) let torch's SDPA read its key/value heads as they are
    (``enable_gqa``) when a padding mask is passed, instead of copying them to every query head first.

    transformers' ``sdpa`` copies them (``repeat_kv``) whenever there is a mask (``use_gqa_in_sdpa``, from
    transformers PR #39412), a rule for CUDA's flash kernel, which takes no mask; torch's CPU kernels take both,
    and give the same values (a test checks the tokens). A batch with padding always has a mask, so that copy
    was a fifth of a 24-row decoding step here (py-spy). Registered through transformers' own attention and mask
    interfaces under ``_GQA_ATTENTION``; this can go once ``use_gqa_in_sdpa`` allows a mask on a CPU."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if model.config._attn_implementation != "sdpa" or model.device.type != "cpu":
        return
    AttentionInterface.register(_GQA_ATTENTION, _sdpa_with_gqa)
    AttentionMaskInterface.register(_GQA_ATTENTION, sdpa_mask)
    model.set_attn_implementation(_GQA_ATTENTION)


_GQA_ATTENTION = "sdpa_cpu_gqa"


def _sdpa_with_gqa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' ``sdpa_attention_forward``, except that a masked call with grouped key/value heads passes
    ``enable_gqa`` rather than copying the heads (with a mask, ``sdpa`` is never causal: the mask is)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (
        attention_mask is None
        or getattr(module, "num_key_value_groups", 1) == 1
        or kwargs.get("position_bias") is not None
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def _starts_with(ids: Sequence[int], prefix: Sequence[int]) -> bool:
    """Whether ``ids`` begin with ``prefix`` and go on after it (the prefill needs a token of the row's own)."""
    return len(ids) > len(prefix) and list(ids[: len(prefix)]) == list(prefix)


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the first of the ``stop`` sequences to appear in ``text`` begins (None: none appears)."""
    found = [at for at in (text.find(s) for s in stop) if at >= 0]
    return min(found) if found else None


def _sample(row: Row, logits: Any) -> int:
    """``row``'s next token drawn from its ``logits`` ([vocab]) with its temperature, nucleus and own generator."""
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    sampling = row.sampling
    if row._generator is None:
        row._generator = torch.Generator(device=logits.device)
        if sampling.seed is None:
            row._generator.seed()
        else:
            row._generator.manual_seed(sampling.seed % 2**64)  # the contract's seeds are signed 64-bit
    scores = logits.float().unsqueeze(0)
    scores = TemperatureLogitsWarper(float(sampling.temperature or 1.0))(None, scores)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        scores = TopPLogitsWarper(float(sampling.top_p))(None, scores)
    # The row's own generator: no other row shifts its random stream. And multinomial draws a fixed count of
    # random values per call, whatever the probabilities: a float rounding difference never shifts later draws.
    return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=row._generator).item())


def _left_pad(tensor: Any, count: int, dim: int = 1) -> Any:
    """``tensor`` with ``count`` zeros in front along ``dim`` (masked positions: their values never count)."""
    import torch

    if count == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = count
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)
