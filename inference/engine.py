"""Answering a batch of queries: embed them together, retrieve each tenant's top-k chunks, prompt with the
numbered context cut to a token budget, and generate in one batch even across tenants and adapters (PEFT's
mixed-adapter batches; the base model for tenants without one).

Only hits whose cosine similarity to the question reaches ``retrieval.min_similarity`` are put in the prompt
and cited (``PromptFormat.admits``, the filter training and the gate render with too). An answer with such
hits is ``grounded``; a question with none is answered per ``inference.no_context``: ``abstain`` replies
``inference.abstain_reply`` without generating, ``answer`` generates without context; either answer says
``grounded: false`` and cites nothing, and is counted (``streamtune_ungrounded_answers_total``).

A query that cannot be answered gets an answer with an error code instead: ``invalid_query`` (service),
``unknown_tenant`` (a tenant with neither documents nor adapters), ``unknown_adapter``, ``question_too_long``,
``retrieval_unavailable`` (Weaviate still failing after ``inference.retrieval_budget_s``), ``internal_error``.
One bad query never fails the others of its batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.adapters import AdapterBook, AdapterCache, Announced
from inference.batching import grouped_query_attention
from inference.metrics import ServeMetrics
from inference.question_drift import QuestionDrift
from retrieval.client import RetrievalError, address, is_transient
from retrieval.store import SearchHit
from streamtune.adapter_store import open_store
from streamtune.contracts import Answer, AnswerError, Citation, Query, Usage
from streamtune.errors import ConfigError, StreamtuneError, UnavailableError
from streamtune.prompt import Passage, PromptFormat, render_prompt
from streamtune.retry import Backoff, retrying
from streamtune.settings import Settings

__all__ = ["AnswerFailure", "Answerer"]

log = logging.getLogger(__name__)
# Chat-template tokens around the system and user messages; checked against the model's context at start-up.
_TEMPLATE_ALLOWANCE = 64


class AnswerFailure(StreamtuneError):
    """A query that gets an error answer; ``code`` is the contract's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Item:
    query: Query
    received: float
    timings: dict[str, float] = field(default_factory=dict)
    adapter: Announced | None = None
    arm: str | None = None
    hits: list[SearchHit] = field(default_factory=list)
    """The hits that count (at or above ``retrieval.min_similarity``): the prompt's context and the citations."""
    grounded: bool | None = None
    abstained: bool = False
    """No hit counted and ``inference.no_context`` is ``abstain``: answered with the reply, nothing generated."""
    prompt: str = ""
    text: str = ""
    failure: AnswerFailure | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    pieces: int = 0
    """The pieces of a streamed answer published before it (``Answer.pieces``)."""


class Answerer:
    def __init__(self, settings: Settings, metrics: ServeMetrics | None = None) -> None:
        import torch

        from retrieval import Retriever
        from retrieval.client import connect_when_ready
        from streamtune.models import load_base_model, prepare_torch

        prepare_torch(settings.inference.torch_threads, settings.memory)
        self.settings = settings
        self.metrics = metrics or ServeMetrics()
        waiting = self.metrics.waiting.labels("weaviate")
        client = connect_when_ready(settings.weaviate, give_up=False, on_wait=lambda now: waiting.set(int(now)))
        self.retriever = Retriever(settings, client=client)
        self._own_client = self.retriever.client
        self.tokenizer, model = load_base_model(settings, dtype=torch.float32)
        model.eval()
        grouped_query_attention(model)
        self.tokenizer.padding_side = "left"  # decoder-only models generate a batch from left-padded prompts
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_name = settings.models.base_model
        self.form = PromptFormat.of(settings)
        self.book = AdapterBook(
            open_store(settings),
            settings.models.base_model,
            on_refusal=lambda check: self.metrics.refused.labels(check).inc(),
        )
        self.cache = AdapterCache(model, settings.inference.max_loaded_adapters, on_load=self.metrics.adapter_loaded)
        self.cache.on_evict = lambda tenant: self.metrics.adapter_evictions.labels(tenant).inc()
        self._embedding = threading.Lock()  # the drift references are embedded in a thread of their own
        self.drift = QuestionDrift(settings, self.metrics.registry, self._embed_texts)
        self._check_context_window(model)
        self.prompt_prefix = self._prompt_prefix()

    def _prompt_prefix(self) -> list[int]:
        """The tokens every prompt begins with, whose cache the batcher computes once (``Batcher.shared_prefix``):
        what two prompts of different questions and passages share, cut back to just after its last special
        token (``<|im_start|>``), where the text that follows can never merge into the tokens before it. A prompt
        that does not begin with them after all is simply prefilled whole (the batcher compares the tokens)."""
        first = self._encode(render_prompt(self.tokenizer, self.form, "Where?", []))
        second = self._encode(render_prompt(self.tokenizer, self.form, "How long?", [Passage("A", "Text.", None)]))
        common = 0
        while common < min(len(first), len(second)) and first[common] == second[common]:
            common += 1
        special = set(self.tokenizer.all_special_ids)
        while common and first[common - 1] not in special:
            common -= 1
        return first[:common]

    def _check_context_window(self, model: Any) -> None:
        """A prompt can never outgrow the model: system prompt + context budget + longest question + answer."""
        inference = self.settings.inference
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        system = len(self._encode(inference.system_prompt))
        needed = system + inference.context_tokens + inference.max_question_tokens + inference.max_new_tokens
        if limit and needed + _TEMPLATE_ALLOWANCE > limit:
            raise ConfigError(
                "inference.context_tokens",
                inference.context_tokens,
                f"system prompt ({system}) + context_tokens + max_question_tokens ({inference.max_question_tokens}) "
                f"+ max_new_tokens ({inference.max_new_tokens}) + {_TEMPLATE_ALLOWANCE} exceeds the model's "
                f"{limit}-token context; lower them",
            )

    def close(self) -> None:
        self.retriever.close()
        self._own_client.close()

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def answer(self, query: Query) -> Answer:
        return self.answer_batch([query])[0]

    def answer_batch(self, queries: Sequence[Query], received: Sequence[float] | None = None) -> list[Answer]:
        """One answer per query, in order, generated as one static batch (``generate``: every row runs until the
        longest ends); ``received`` (monotonic times) gives the queued stage. ``serve`` batches continuously
        instead (``inference.scheduler``); this is the in-process path and the benchmarks' yardstick."""
        items = self.prepare(queries, received)
        self._stage(items, "generate", self._generate)
        self.metrics.batch_size.observe(len(items))
        return self.finish(items)

    def prepare(self, queries: Sequence[Query], received: Sequence[float] | None = None) -> list[_Item]:
        """Everything before generation, for a batch of queries: adapter, embedding, retrieval, prompt (a
        failure is recorded on its item)."""
        now = time.monotonic()
        items = [_Item(q, received[i] if received else now) for i, q in enumerate(queries)]
        for item in items:
            item.timings["queued"] = (now - item.received) * 1000
        self._stage(items, "adapter", self._resolve)
        self._stage(items, "embed", self._embed_and_retrieve)
        return items

    def refuse(self, queries: Sequence[Query], failure: AnswerFailure) -> list[Answer]:
        """Error answers for ``queries``, nothing prepared or generated for them."""
        now = time.monotonic()
        return self.finish([_Item(q, now, failure=failure) for q in queries])

    def finish(self, items: Sequence[_Item]) -> list[Answer]:
        """The items' answers (counted and timed in the metrics)."""
        answers = [self._answer(item) for item in items]
        for item, answer in zip(items, answers, strict=True):
            code = answer.error.code if answer.error else "ok"
            self.metrics.answers.labels(item.query.tenant, code).inc()
            for stage, ms in answer.timings_ms.items():
                self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
        return answers

    def _stage(self, items: list[_Item], name: str, step: Any) -> None:
        live = [item for item in items if item.failure is None]
        if not live:
            return
        begin = time.perf_counter()
        try:
            step(live)
        except AnswerFailure as failure:
            for item in live:
                item.failure = item.failure or failure
        except Exception as exc:
            log.exception("serve: %s failed for a batch of %d", name, len(live))
            for item in live:
                item.failure = item.failure or AnswerFailure("internal_error", f"{type(exc).__name__}: {exc}")
        elapsed = (time.perf_counter() - begin) * 1000
        for item in live:
            item.timings.setdefault(name, elapsed)

    def _resolve(self, items: list[_Item]) -> None:
        limit = self.settings.inference.max_question_tokens
        for item in items:
            query = item.query
            try:
                item.adapter, item.arm = self.book.route(query.tenant, query.adapter, query.query_id)
            except KeyError:
                item.failure = AnswerFailure(
                    "unknown_adapter", f"tenant {query.tenant} has no announced adapter version {query.adapter!r}"
                )
                continue
            if len(self._encode(query.question)) > limit:
                item.failure = AnswerFailure("question_too_long", f"the question is over {limit} tokens")

    def _embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        with self._embedding:
            return self.retriever.embed(texts)

    def _embed_and_retrieve(self, items: list[_Item]) -> None:
        begin = time.perf_counter()
        vectors = self._embed_texts([item.query.question for item in items])
        embedded = (time.perf_counter() - begin) * 1000
        for item, vector in zip(items, vectors, strict=True):
            self.drift.observe(item.query.tenant, vector)  # the vector made for retrieval: drift costs no embedding
        inference = self.settings.inference
        deadline = time.monotonic() + inference.retrieval_budget_s
        for item, vector in zip(items, vectors, strict=True):
            item.timings["embed"] = embedded
            mark = time.perf_counter()
            try:
                hits = self._retrieve(item.query, vector, deadline)
                if not hits and item.adapter is None and not self.retriever.store.has_tenant(item.query.tenant):
                    item.failure = AnswerFailure(
                        "unknown_tenant", f"tenant {item.query.tenant} has neither documents nor adapters"
                    )
            except UnavailableError as exc:
                item.failure = AnswerFailure("retrieval_unavailable", str(exc))
                deadline = time.monotonic()  # the rest of the batch fails fast: Weaviate is down
                hits = []
            except RetrievalError as exc:  # a tenant lookup failing: the next query retries within the budget
                item.failure = AnswerFailure("retrieval_unavailable", str(exc))
                hits = []
            item.timings["retrieve"] = (time.perf_counter() - mark) * 1000
            if item.failure is None:
                self._ground(item, hits)

    def _ground(self, item: _Item, hits: list[SearchHit]) -> None:
        """Keep the hits that count; then the prompt, or the abstention when none does."""
        item.hits = [h for h in hits if self.form.admits(h.similarity)]
        item.grounded = bool(item.hits)
        inference = self.settings.inference
        if not item.grounded:
            self.metrics.ungrounded.labels(item.query.tenant, inference.no_context).inc()
            if inference.no_context == "abstain":
                item.abstained = True
                item.text = inference.abstain_reply.replace("{tenant}", item.query.tenant)
                item.finish_reason = "stop"
                return
        item.prompt = self._prompt(item)

    def _retrieve(self, query: Query, vector: list[float], deadline: float) -> list[SearchHit]:
        weaviate = self.settings.weaviate
        remaining = max(deadline - time.monotonic(), 0.0)
        if remaining <= 0:
            raise RetrievalError(f"Weaviate at {address(weaviate)} is unavailable")
        backoff = Backoff(weaviate.retry_initial_s, weaviate.retry_max_s, remaining, weaviate.status_interval_s)

        def search() -> list[SearchHit]:
            self.retriever.check_ready()  # fails fast while Weaviate is down, within the retrieval budget
            return self.retriever.search_with(query.tenant, query.question, vector, query.top_k)

        result: list[SearchHit] = retrying(
            search,
            transient=is_transient,
            backoff=backoff,
            what=f"Weaviate at {address(weaviate)}",
            fix="Queries get error answers (retrieval_unavailable) until it is back.",
            log=log,
        )
        return result

    def _prompt(self, item: _Item) -> str:
        # The one renderer that training and the gate use too: an adapter answers in the format it learnt.
        passages = [Passage(h.title, h.text, h.similarity) for h in item.hits]
        return render_prompt(self.tokenizer, self.form, item.query.question, passages)

    def _generate(self, items: list[_Item]) -> None:
        """Generate every prompt (not the abstentions), in groups of at most ``max_loaded_adapters`` adapters."""
        capacity = self.settings.inference.max_loaded_adapters
        groups: list[list[_Item]] = []
        for item in sorted((i for i in items if not i.abstained), key=lambda i: AdapterCache.name(i.adapter)):
            names = {AdapterCache.name(i.adapter) for i in groups[-1]} if groups else set()
            if not groups or len(names | {AdapterCache.name(item.adapter)}) > capacity:
                groups.append([])
            groups[-1].append(item)
        for group in groups:
            self._generate_group(group)

    def _generate_group(self, items: list[_Item]) -> None:
        """Generate one group's answers, each with its query's controls (``max_tokens``, ``stop``, sampling).

        The greedy rows go through one ``generate``, as always (the benchmarks' yardstick): it runs to the
        largest budget of the group, and each row's tokens then pass through ``Row.take``, the rule ``serve``'s
        batcher applies token by token (its own budget, its first stop sequence): for greedy decoding that is
        what generating the row alone with its controls gives. The sampling rows go through a ``Batcher`` of
        their own (``_sample_rows``), because ``generate`` draws a whole batch from one random stream: a seed
        could not make a row's text independent of the rest of its batch. A row cut short (its budget, or
        ``generate``'s time bound) finishes with ``length``."""
        import torch

        from inference.batching import Row

        adapters = {AdapterCache.name(i.adapter): i.adapter for i in items if i.adapter is not None}
        try:
            self.cache.ensure(list(adapters.values()))
        except ValueError as exc:
            for item in items:
                if item.adapter is not None:
                    item.failure = AnswerFailure("unknown_adapter", str(exc))
            items = [i for i in items if i.failure is None]
            if not items:
                return
        self.metrics.adapters_loaded.set(len(self.cache.loaded))
        inference = self.settings.inference
        # a batch must finish well inside the consumer's max.poll.interval, or the group drops this process
        deadline = time.monotonic() + inference.max_poll_interval_s / 2
        rows = [Row.of(i, [], AdapterCache.name(i.adapter), i.query, inference.max_new_tokens) for i in items]
        greedy = [row for row in rows if row.sampling.greedy]
        if greedy:
            encoded = self.tokenizer(
                [row.key.prompt for row in greedy], return_tensors="pt", padding=True, add_special_tokens=False
            )
            kwargs: dict[str, Any] = {
                "max_new_tokens": max(row.max_new_tokens for row in greedy),
                "do_sample": False,
                "pad_token_id": self.tokenizer.pad_token_id,
                "max_time": inference.max_poll_interval_s / 2,
            }
            if self.cache.loaded:
                kwargs["adapter_names"] = [row.adapter for row in greedy]
            with torch.no_grad():
                output = self.cache.model.generate(**encoded, **kwargs)
            width = encoded["input_ids"].shape[1]
            ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
            for index, row in enumerate(greedy):
                row.prompt_ids = encoded["input_ids"][index][-int(encoded["attention_mask"][index].sum()) :].tolist()
                for token in output[index][width:].tolist():
                    if row.take(int(token), ends, self._decode):
                        break
                else:
                    row.finish_reason = "length"  # generate stopped first: its time bound
        self._sample_rows([row for row in rows if not row.sampling.greedy], deadline)
        for row in rows:
            item = row.key
            item.text = self._decode(row.generated)[: row.stop_at].strip()
            item.prompt_tokens = len(row.prompt_ids)
            item.completion_tokens = len(row.generated)
            item.finish_reason = row.finish_reason

    def _sample_rows(self, rows: list[Any], deadline: float) -> None:
        """Generate sampling ``Row``s in a ``Batcher`` (one prefill, shared steps; each row draws from its own
        generator, as in ``serve``) until ``deadline`` (monotonic), the group's time bound."""
        from inference.batching import Batcher

        if not rows:
            return
        batcher = Batcher(
            lambda: self.cache.model,
            eos_ids=[self.tokenizer.eos_token_id],
            pad_id=self.tokenizer.pad_token_id,
            mixed_adapters=lambda: bool(self.cache.loaded),
            decode=self._decode,
            shared_prefix=self.prompt_prefix,
        )
        for row in rows:
            row.prompt_ids = self._encode(row.key.prompt)
        batcher.add(rows)
        while len(batcher) and time.monotonic() < deadline:
            batcher.step()
        for row in batcher.drop(lambda _: False):
            row.finish_reason = "length"  # out of time

    def _answer(self, item: _Item) -> Answer:
        query = item.query
        timings = {k: round(v, 1) for k, v in item.timings.items()}
        # the stages in sequence; the first token is a moment inside `generate`, not a stage of its own
        timings["total"] = round(sum(v for k, v in item.timings.items() if k not in ("queued", "first_token")), 1)
        if item.failure is not None:
            return Answer(
                query_id=query.query_id,
                tenant=query.tenant,
                model=self.model_name,
                timings_ms=timings,
                error=AnswerError(code=item.failure.code, message=item.failure.message),
            )
        return Answer(
            query_id=query.query_id,
            tenant=query.tenant,
            answer=item.text,
            citations=[
                Citation(doc_id=h.doc_id, chunk_id=h.chunk_id, score=round(h.score, 4), similarity=h.similarity)
                for h in item.hits
            ],
            adapter_version=item.adapter.version if item.adapter else None,
            model=self.model_name,
            timings_ms=timings,
            arm=item.arm,
            usage=Usage(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens),
            finish_reason=item.finish_reason,
            grounded=item.grounded,
            pieces=item.pieces,
        )
