"""The ingest job's batch work, free of Flink: a batch of raw records in, its results out, the index written.

``BatchIndexer.index(records, after)`` plans the batch (``processing.plan_batch``: validate, scrub, chunk),
embeds its chunks, deletes and upserts in Weaviate, then gives each training example its context, looked up
in the index as the batch left it (so a document of the same batch is found). Its promises:

- Every Weaviate call runs under the one retry policy (``streamtune.retry``, ``weaviate.backoff()``): an
  outage is waited out, the wait counted (``take_retried_ms``), until ``weaviate.give_up_s`` has passed
  (``RetryExhausted``, which fails the job) or the indexer is closed (``Stopped``: the checkpoint holds the
  batch). Neither dead-letters anything.
- Any other failure of the batch is ours or one record's: its records are indexed one by one, and only a
  record that fails on its own is dead-lettered (``InternalError``); every record ends in exactly one outcome.
- Writes wait for ``after`` (the partition's batch before this one), so that they land in the stream's order;
  planning and encoding do not, so a pipeline can prepare the next batch while one is written.
- Every encode runs on the indexer's one long-lived thread, whichever thread calls it.

``streams.operator`` runs it on the threads of its pipeline; ``tests/streams/test_indexer.py`` runs it alone
against the real Weaviate.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from retrieval.client import address, connect_when_ready, is_transient
from retrieval.retriever import Retriever
from retrieval.store import ChunkStore
from streams.chunking import Chunker
from streams.processing import (
    BatchResult,
    ContextRequest,
    RawRecord,
    add_context,
    documents,
    internal_error,
    passages,
    plan_batch,
    reject,
    scrubber_for,
)
from streamtune import logs
from streamtune.contracts import ContextPassage
from streamtune.errors import RetryExhausted
from streamtune.models import load_embedder, prepare_torch
from streamtune.retry import retrying
from streamtune.settings import Settings

__all__ = ["BatchIndexer", "Stopped"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """A batch's wait for Weaviate ended because its indexer closed (the job stops or restarts)."""


class BatchIndexer:
    """The embedding model, the chunker and the Weaviate client of one operator, and the work of a batch.

    Opening loads the model and connects (waiting for Weaviate), and checks or creates the collection for the
    model's dimension; ``close`` releases them. ``index`` may be called from several threads at once.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every encode runs on this one long-lived thread rather than on whichever thread asks: glibc's arena
        # and the OpenMP team belong to the thread that encodes, and a thread met for the first time faults its
        # buffers in afresh (BENCHMARKS.md, "where the job's time goes").
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamtune-encode")
        self._stopping = threading.Event()
        self._retried_ms = 0  # counted on the calling threads, taken by the operator's (metrics)
        self._retries = threading.Lock()
        self._encoding(prepare_torch, settings.embedding.torch_threads, settings.memory)
        self.embedder = load_embedder(settings)
        streams = settings.streams
        # its own tokenizer: the encode (on another thread) sets truncation on the model's, and a Rust
        # tokenizer used from two threads while one changes its settings fails ("Already borrowed")
        tokenizer = copy.deepcopy(self.embedder.tokenizer)
        self._chunker = Chunker(tokenizer, streams.chunk_tokens, streams.chunk_overlap)
        self._planning = threading.Lock()  # the chunker's tokenizer, for one thread at a time
        self._scrubber = scrubber_for(streams)
        self.client = connect_when_ready(settings.weaviate)
        self.store = ChunkStore(self.client, settings)
        self.store.ensure_collection(int(self.embedder.get_sentence_embedding_dimension()))
        # questions are embedded as serve embeds a query: same model, same normalisation
        self.retriever = Retriever(settings, embedder=self.embedder, client=self.client)

    def close(self) -> None:
        """A batch waiting out Weaviate stops waiting (``Stopped``); then the encoding thread and the client go."""
        self._stopping.set()
        self._encoder.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def take_retried_ms(self) -> int:
        """Milliseconds spent waiting for Weaviate since the last call."""
        with self._retries:
            retried, self._retried_ms = self._retried_ms, 0
        return retried

    def index(self, records: Sequence[RawRecord], after: Future[Any] | None = None) -> list[BatchResult]:
        """The batch's results: one for the whole batch, or, if indexing it failed for a reason of ours, one per
        record, so that only the record that fails on its own is dead-lettered (InternalError). Its writes wait
        for ``after``."""
        streams = self.settings.streams
        with self._planning:
            plan = plan_batch(records, streams, self._chunker, self._scrubber)
        try:
            self._index(plan, after)
            return [plan]
        except (RetryExhausted, Stopped):
            raise  # Weaviate stayed down past weaviate.give_up_s (fail, naming it), or the indexer closed
        except Exception as exc:
            self._unless_stopped(exc)
            log.warning(
                "streams: indexing a batch of %d records failed (%s: %s); indexing them one by one",
                len(records),
                type(exc).__name__,
                exc,
            )
        results = []
        for record in records:
            with self._planning:
                single = plan_batch([record], streams, self._chunker, self._scrubber)
            try:
                self._index(single, after)
            except (RetryExhausted, Stopped):
                raise
            except Exception as exc:
                self._unless_stopped(exc)
                log.error(
                    "streams: %s[%d]@%d dead-lettered: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                    extra={"source": logs.source(record.topic, record.partition, record.offset)},
                )
                single = internal_error([record], exc, streams)
            results.append(single)
        return results

    def _unless_stopped(self, exc: Exception) -> None:
        """A batch that fails once its indexer closed (its client closed under it) is not the records' fault:
        nothing is dead-lettered, and the checkpoint holds the batch."""
        if self._stopping.is_set():
            raise Stopped(f"the indexer closed while a batch ran ({type(exc).__name__})") from exc

    def _index(self, plan: BatchResult, after: Future[Any] | None) -> None:
        texts = [text for write in plan.writes for text in write.chunks]
        vectors: list[Any] = []
        if texts:
            batch = self.settings.embedding.batch_size
            encoded = self._encoding(self.embedder.encode, texts, batch_size=batch, normalize_embeddings=True)
            vectors = encoded.tolist()
        if after is not None:
            wait([after])
        if plan.deletes:
            self._patiently(lambda: self.store.delete([(d.tenant, d.doc_id) for d in plan.deletes]))
        if plan.writes:
            refused = self._patiently(lambda: self.store.upsert(documents(plan.writes, vectors)))
            reject(plan, refused, self.settings.streams)
        # after the writes, so that an example finds the documents of its own batch
        add_context(plan, self._context)

    def _context(self, requests: Sequence[ContextRequest]) -> list[list[ContextPassage]]:
        """Per request, the passages an example is answered with: the named documents' best chunks for the
        question, else the tenant's top-k (``retrieval.top_k``, ``retrieval.alpha``: serve's defaults)."""
        top_k = self.settings.retrieval.top_k
        vectors = self._encoding(self.retriever.embed, [r.question for r in requests])

        def search() -> list[list[ContextPassage]]:
            return [
                passages(
                    self.store.search_documents(r.tenant, r.question, vector, top_k, r.doc_ids)
                    if r.doc_ids
                    else self.retriever.search_with(r.tenant, r.question, vector, top_k)
                )
                for r, vector in zip(requests, vectors, strict=True)
            ]

        return self._patiently(search)

    def _patiently(self, operation: Callable[[], T]) -> T:
        """``operation()`` under the retry policy for Weaviate."""
        weaviate = self.settings.weaviate
        return retrying(
            operation,
            transient=is_transient,
            backoff=weaviate.backoff(),
            what=f"Weaviate at {address(weaviate)}",
            fix="Start Weaviate, free its disk, or raise weaviate.give_up_s; the job resumes from its "
            "last checkpoint when restarted.",
            log=log,
            sleep=self._sleep,
        )

    def _encoding(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function``'s result, run on the encoding thread; its exceptions are raised here."""
        return self._encoder.submit(function, *args, **kwargs).result()

    def _sleep(self, seconds: float) -> None:
        with self._retries:
            self._retried_ms += int(seconds * 1000)
        if self._stopping.wait(seconds):
            raise Stopped("the indexer closed while a batch waited for Weaviate; the checkpoint holds it")
