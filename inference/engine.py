"""Answering one query: embed, retrieve the tenant's top-k chunks, prompt with numbered context, generate
with the base model plus the tenant's newest promoted adapter (or a pinned version)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inference.adapters import AdapterBook
from retrieval.client import RetrievalError
from streamtune.contracts import Answer, AnswerError, Citation, Query
from streamtune.errors import StreamtuneError
from streamtune.prompt import chat_messages
from streamtune.settings import Settings

__all__ = ["AnswerFailure", "Answerer"]


class AnswerFailure(StreamtuneError):
    """A query that gets an error answer; ``code`` is the contract's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Answerer:
    def __init__(self, settings: Settings) -> None:
        import torch

        from retrieval import Retriever
        from streamtune.models import load_base_model

        torch.set_num_threads(settings.inference.torch_threads)
        self.settings = settings
        self.retriever = Retriever(settings)
        self.tokenizer: Any
        self.model: Any
        self.tokenizer, self.model = load_base_model(settings, dtype=torch.float32)
        self.model.eval()
        self.model_name = settings.models.base_model
        self.book = AdapterBook.empty(settings.models.base_model)
        self._loaded: set[str] = set()

    def close(self) -> None:
        self.retriever.close()

    def _use_adapter(self, tenant: str, version: str | None) -> str | None:
        """Activate the adapter for this query between requests; returns its version (None: base model)."""
        if version is None:
            version = self.book.latest.get(tenant)
        if version is None:
            if self._loaded:
                self.model.disable_adapters()
            return None
        uri = self.book.uris.get((tenant, version))
        if uri is None:
            raise AnswerFailure("unknown_adapter", f"tenant {tenant} has no announced adapter version {version!r}")
        name = f"{tenant}__{version}"
        if name not in self._loaded:
            path = Path(uri.removeprefix("file://"))
            self.model.load_adapter(str(path), adapter_name=name)
            self._loaded.add(name)
        self.model.enable_adapters()
        self.model.set_adapter(name)
        return version

    def answer(self, query: Query) -> Answer:
        import torch

        timings: dict[str, float] = {}
        begin = time.perf_counter()
        try:
            adapter = self._use_adapter(query.tenant, query.adapter)
            timings["adapter"] = (time.perf_counter() - begin) * 1000
            mark = time.perf_counter()
            vector = self.retriever.embed([query.question])[0]
            timings["embed"] = (time.perf_counter() - mark) * 1000
            mark = time.perf_counter()
            hits = self.retriever.search_with(query.tenant, query.question, vector, query.top_k)
            timings["retrieve"] = (time.perf_counter() - mark) * 1000
            mark = time.perf_counter()
            inference = self.settings.inference
            messages = chat_messages(
                inference.system_prompt, query.question, [(h.title, h.text) for h in hits], inference.context_chars
            )
            inputs: Any = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.no_grad():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=self.settings.inference.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                )
            text: str = self.tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            timings["generate"] = (time.perf_counter() - mark) * 1000
            timings["total"] = (time.perf_counter() - begin) * 1000
            return Answer(
                query_id=query.query_id,
                tenant=query.tenant,
                answer=text.strip(),
                citations=[Citation(doc_id=h.doc_id, chunk_id=h.chunk_id, score=round(h.score, 4)) for h in hits],
                adapter_version=adapter,
                model=self.model_name,
                timings_ms={k: round(v, 1) for k, v in timings.items()},
            )
        except AnswerFailure as failure:
            code, message = failure.code, failure.message
        except RetrievalError as exc:
            code, message = "retrieval_unavailable", str(exc)
        except Exception as exc:
            code, message = "internal_error", f"{type(exc).__name__}: {exc}"
        return Answer(
            query_id=query.query_id,
            tenant=query.tenant,
            model=self.model_name,
            error=AnswerError(code=code, message=message),
        )
