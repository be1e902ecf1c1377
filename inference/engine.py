"""Answering a batch of queries: embed them together, retrieve each tenant's top-k chunks, prompt with the
numbered context cut to a token budget, and generate in one batch even across tenants and adapters (PEFT's
mixed-adapter batches; the base model for tenants without one).

A query that cannot be answered gets an answer with an error code instead: ``invalid_query`` (service),
``unknown_adapter``, ``question_too_long``, ``retrieval_unavailable`` (Weaviate still failing after
``inference.retrieval_budget_s``), ``internal_error``. One bad query never fails the others of its batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.adapters import AdapterBook, AdapterCache, Announced
from inference.metrics import ServeMetrics
from retrieval.client import RetrievalError, address, is_transient
from retrieval.store import SearchHit
from streamtune.contracts import Answer, AnswerError, Citation, Query, Usage
from streamtune.errors import ConfigError, StreamtuneError, UnavailableError
from streamtune.prompt import PromptFormat, render_prompt
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
    prompt: str = ""
    text: str = ""
    failure: AnswerFailure | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class Answerer:
    def __init__(self, settings: Settings, metrics: ServeMetrics | None = None) -> None:
        import torch

        from retrieval import Retriever
        from retrieval.client import connect_when_ready
        from streamtune.models import load_base_model, prepare_torch

        prepare_torch(settings.inference.torch_threads, settings.memory)
        self.settings = settings
        self.metrics = metrics or ServeMetrics()
        self.retriever = Retriever(settings, client=connect_when_ready(settings.weaviate, give_up=False))
        self._own_client = self.retriever.client
        self.tokenizer, model = load_base_model(settings, dtype=torch.float32)
        model.eval()
        self.tokenizer.padding_side = "left"  # decoder-only models generate a batch from left-padded prompts
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_name = settings.models.base_model
        self.book = AdapterBook(
            settings.adapters_dir,
            settings.models.base_model,
            on_refusal=lambda check: self.metrics.refused.labels(check).inc(),
        )
        self.cache = AdapterCache(model, settings.inference.max_loaded_adapters, on_load=self.metrics.adapter_loaded)
        self.cache.on_evict = lambda tenant: self.metrics.adapter_evictions.labels(tenant).inc()
        self._check_context_window(model)

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
                self.metrics.stage_seconds.labels(item.query.tenant, stage).observe(ms / 1000)
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

    def _embed_and_retrieve(self, items: list[_Item]) -> None:
        begin = time.perf_counter()
        vectors = self.retriever.embed([item.query.question for item in items])
        embedded = (time.perf_counter() - begin) * 1000
        inference = self.settings.inference
        deadline = time.monotonic() + inference.retrieval_budget_s
        for item, vector in zip(items, vectors, strict=True):
            item.timings["embed"] = embedded
            mark = time.perf_counter()
            try:
                item.hits = self._retrieve(item.query, vector, deadline)
            except UnavailableError as exc:
                item.failure = AnswerFailure("retrieval_unavailable", str(exc))
                deadline = time.monotonic()  # the rest of the batch fails fast: Weaviate is down
            item.timings["retrieve"] = (time.perf_counter() - mark) * 1000
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
        form = PromptFormat.of(self.settings.inference)
        return render_prompt(self.tokenizer, form, item.query.question, [(h.title, h.text) for h in item.hits])

    def _generate(self, items: list[_Item]) -> None:
        """Generate every prompt, in groups of at most ``max_loaded_adapters`` distinct adapters."""
        capacity = self.settings.inference.max_loaded_adapters
        groups: list[list[_Item]] = []
        for item in sorted(items, key=lambda i: AdapterCache.name(i.adapter)):
            names = {AdapterCache.name(i.adapter) for i in groups[-1]} if groups else set()
            if not groups or len(names | {AdapterCache.name(item.adapter)}) > capacity:
                groups.append([])
            groups[-1].append(item)
        for group in groups:
            self._generate_group(group)

    def _generate_group(self, items: list[_Item]) -> None:
        import torch

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
        encoded = self.tokenizer([i.prompt for i in items], return_tensors="pt", padding=True, add_special_tokens=False)
        kwargs: dict[str, Any] = {
            "max_new_tokens": inference.max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            # a batch must finish well inside the consumer's max.poll.interval, or the group drops this process
            "max_time": inference.max_poll_interval_s / 2,
        }
        if self.cache.loaded:
            kwargs["adapter_names"] = [AdapterCache.name(i.adapter) for i in items]
        with torch.no_grad():
            output = self.cache.model.generate(**encoded, **kwargs)
        width = encoded["input_ids"].shape[1]
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        for row, item in enumerate(items):
            new = output[row][width:].tolist()
            cut = next((i for i, token in enumerate(new) if token in ends), None)
            item.text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            item.prompt_tokens = int(encoded["attention_mask"][row].sum())
            item.completion_tokens = len(new) if cut is None else cut
            item.finish_reason = "length" if cut is None and len(new) >= inference.max_new_tokens else "stop"

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
            citations=[Citation(doc_id=h.doc_id, chunk_id=h.chunk_id, score=round(h.score, 4)) for h in item.hits],
            adapter_version=item.adapter.version if item.adapter else None,
            model=self.model_name,
            timings_ms=timings,
            arm=item.arm,
            usage=Usage(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens),
            finish_reason=item.finish_reason,
        )
