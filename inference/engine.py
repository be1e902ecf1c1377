"""Answering one query: embed, retrieve the tenant's top-k chunks, prompt with numbered context, generate
with the base model plus the tenant's newest promoted adapter (or a pinned version)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.client import RetrievalError
from streamtune.contracts import AdapterUpdate, Answer, AnswerError, Citation, Query
from streamtune.settings import Settings

__all__ = ["AdapterBook", "Answerer"]


class AnswerFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class AdapterBook:
    """What ``adapter-updates`` announced: every version's location, and each tenant's newest."""

    base_model: str
    latest: dict[str, str]
    uris: dict[tuple[str, str], str]
    ignored: list[str]

    @classmethod
    def empty(cls, base_model: str) -> AdapterBook:
        return cls(base_model, {}, {}, [])

    def record(self, update: AdapterUpdate) -> bool:
        """Take an announcement; False (and noted in ``ignored``) when its base model is not ours."""
        if update.base_model != self.base_model:
            self.ignored.append(f"{update.tenant} {update.version}: base {update.base_model} != {self.base_model}")
            return False
        self.uris[(update.tenant, update.version)] = update.uri
        self.latest[update.tenant] = update.version
        return True


class Answerer:
    def __init__(self, settings: Settings) -> None:
        import torch

        from retrieval import connect
        from retrieval.store import ChunkStore
        from streamtune.models import load_base_model, load_embedder

        torch.set_num_threads(settings.inference.torch_threads)
        self.settings = settings
        self.embedder = load_embedder(settings)
        self.client = connect(settings.weaviate)
        self.store = ChunkStore(self.client, settings)
        self.tokenizer: Any
        self.model: Any
        self.tokenizer, self.model = load_base_model(settings, dtype=torch.float32)
        self.model.eval()
        self.model_name = settings.models.base_model
        self.book = AdapterBook.empty(settings.models.base_model)
        self._loaded: set[str] = set()

    def close(self) -> None:
        self.client.close()

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
            vector = self.embedder.encode([query.question], normalize_embeddings=True)[0].tolist()
            timings["embed"] = (time.perf_counter() - mark) * 1000
            mark = time.perf_counter()
            k = query.top_k or self.settings.retrieval.top_k
            hits = self.store.search(query.tenant, query.question, vector, k)
            timings["retrieve"] = (time.perf_counter() - mark) * 1000
            mark = time.perf_counter()
            context = "\n".join(
                f"[{i}] {h.title + ': ' if h.title else ''}{h.text[: self.settings.inference.context_chars]}"
                for i, h in enumerate(hits, 1)
            )
            messages = [
                {
                    "role": "system",
                    "content": f"{self.settings.inference.system_prompt}\n\nContext:\n{context or '(none)'}",
                },
                {"role": "user", "content": query.question},
            ]
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
