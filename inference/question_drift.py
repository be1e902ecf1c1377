"""Question drift in `serve`: each tenant's questions, as serve embeds them anyway, against a reference sample.

The test itself is ``streamtune.drift`` (MMD with a permutation p-value, per tenant). This module feeds it:

- **The questions.** Every question serve embeds for retrieval is observed with that same vector, so drift
  costs no embedding; a test every ``drift.every`` questions costs a few milliseconds (``bench/drift.py``).
- **The reference.** When a tenant's current adapter changes, the questions of the examples that version was
  trained on (its manifest's ``data.ranges`` of ``training-examples``, demonstrations of that tenant) are read
  and embedded in a background thread, and become the reference; until then, and for a tenant on the base
  model or with too few such questions, the tenant's first full window is (the tracker's own fallback).
  Announcements replayed at start-up ask for many references; only each tenant's latest is loaded.
- **A first window outlives a restart.** It is kept under ``drift.kept_dir/<topics.prefix>/<tenant>.npz``
  (with the embedding model it was made with) and taken up again the first time the tenant asks after a
  restart, unless a training reference came first. Otherwise a restarted serve would take its next window,
  which may already be the new subject, as the reference, and the drift would never show again.
- **The figures,** on serve's ``/metrics``: ``streamtune_question_drift_statistic``, ``..._p_value`` and
  ``..._window`` per tenant (NaN statistic and p-value while no test can run, so no alert fires), and
  ``streamtune_question_drift_untested{tenant,reason}`` (1 for the reason no test ran, e.g. "no reference
  yet"), so the reason is visible where the figures are.

A failure to read or embed a reference is logged and leaves the tenant on its first-window reference: drift is
a signal beside answering and never stops it; so is a kept first window that cannot be read or written. After a
restart the windows start empty and the references come back (from the announcements, or kept), so readings
resume after ``drift.min_window`` questions.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Gauge
from threadpoolctl import ThreadpoolController

from streamtune.contracts import TENANT_PATTERN, TrainingExample, decode
from streamtune.drift import DriftReading, DriftTracker
from streamtune.errors import ContractError
from streamtune.manifest import Manifest
from streamtune.settings import Settings

__all__ = ["QuestionDrift"]

log = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], list[list[float]]]

FIRST_WINDOW = "first window"  # the tracker's own name for a reference taken from a first window
KEPT_FIRST_WINDOW = "first window, kept from before a restart"
EMBED_BATCH = 512
"""Reference questions embedded in one call (several tenants' when they are few each)."""


class QuestionDrift:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None, embed: Embed) -> None:
        self.settings = settings
        # One BLAS thread for the test: on two busy cores two threads made it 3-5 times slower (bench/drift.py),
        # and it runs in serve's loop between decoding steps.
        blas = ThreadpoolController()
        self.tracker = DriftTracker(settings.drift, computing=lambda: blas.limit(limits=1, user_api="blas"))
        self._embed = embed
        self._wanted: dict[str, Manifest] = {}  # tenant → the manifest whose questions should be its reference
        self._lock = threading.Lock()
        self._ready: queue.Queue[tuple[str, list[list[float]], str]] = queue.Queue()
        self._signal = threading.Event()
        self._thread: threading.Thread | None = None
        self._reasons: dict[str, str] = {}
        kept = settings.drift.kept_dir or settings.cache_dir / "drift"
        self._kept = kept.expanduser() / (settings.topics.prefix or "default")
        self._looked: set[str] = set()  # tenants whose kept first window was looked for since start
        self.statistic = Gauge(
            "streamtune_question_drift_statistic",
            "MMD² between the tenant's latest questions and its reference (NaN: no test could run).",
            ["tenant"],
            registry=registry,
        )
        self.p_value = Gauge(
            "streamtune_question_drift_p_value",
            "Permutation p-value of the latest drift test (below drift.significance: drift; NaN: no test ran).",
            ["tenant"],
            registry=registry,
        )
        self.window = Gauge(
            "streamtune_question_drift_window",
            "Questions in the tenant's window at its latest drift test.",
            ["tenant"],
            registry=registry,
        )
        self.untested = Gauge(
            "streamtune_question_drift_untested",
            "1 for the reason the tenant's drift could not be tested (no reference yet, too few questions, ...).",
            ["tenant", "reason"],
            registry=registry,
        )

    # -- the serving loop's side --------------------------------------------------------------------
    def observe(self, tenant: str, vector: Sequence[float] | None) -> DriftReading | None:
        """Take one question's embedding (serve's thread); the new reading when a test ran."""
        self._take_references()
        if tenant not in self._looked:
            self._looked.add(tenant)
            self._take_kept(tenant)
        before = self.tracker.reference(tenant)
        try:
            reading = self.tracker.observe(tenant, vector)
        except Exception:  # a bug here must never cost an answer
            log.exception("serve: drift: observing a question of %s failed", tenant)
            return None
        if reading is not None:
            if reading.reference_source == FIRST_WINDOW and self.tracker.reference(tenant) is not before:
                self._keep(tenant)  # the first window just became the reference
            self._publish(reading)
        return reading

    # -- the first-window reference kept across restarts ---------------------------------------------
    def _kept_file(self, tenant: str) -> Path | None:
        return self._kept / f"{tenant}.npz" if re.fullmatch(TENANT_PATTERN, tenant) else None  # a file name as it is

    def _keep(self, tenant: str) -> None:
        path, rows = self._kept_file(tenant), self.tracker.reference(tenant)
        if path is None or rows is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.parent / f".{tenant}.part.npz"  # TENANT_PATTERN has no dot: never another tenant's file
            np.savez(part, reference=rows, model=np.array(self.settings.embedding.model))
            part.replace(path)  # whole or not at all
        except OSError as exc:
            log.warning("serve: drift: could not keep %s's first window in %s (%s)", tenant, path, exc)

    def _take_kept(self, tenant: str) -> None:
        path = self._kept_file(tenant)
        if path is None or not path.exists() or self.tracker.reference(tenant) is not None:
            return
        try:
            with np.load(path) as kept:
                model, rows = str(kept["model"]), kept["reference"]
        except Exception as exc:  # a torn or foreign file: the next first window replaces it
            log.warning("serve: drift: ignored %s's kept first window %s (%s)", tenant, path, exc)
            return
        if model != self.settings.embedding.model:
            return  # made by another embedder: not comparable
        self.tracker.set_reference(tenant, rows, KEPT_FIRST_WINDOW)
        self._publish(self.tracker.reading(tenant))

    def reference_from(self, tenant: str, manifest: Manifest) -> None:
        """Ask for ``manifest``'s training questions as the tenant's reference (loaded in the background)."""
        with self._lock:
            self._wanted[tenant] = manifest
        if self._thread is None:
            self._thread = threading.Thread(target=self._load_references, name="serve-drift", daemon=True)
            self._thread.start()
        self._signal.set()

    def _take_references(self) -> None:
        while True:
            try:
                tenant, vectors, source = self._ready.get_nowait()
            except queue.Empty:
                return
            self.tracker.set_reference(tenant, vectors, source)
            self._publish(self.tracker.reading(tenant))

    def _publish(self, reading: DriftReading) -> None:
        tenant = reading.tenant
        nan = math.nan
        self.statistic.labels(tenant).set(reading.statistic if reading.statistic is not None else nan)
        self.p_value.labels(tenant).set(reading.p_value if reading.p_value is not None else nan)
        self.window.labels(tenant).set(reading.window)
        reason = (reading.reason or "").split(" (")[0]  # without its counts: one series per kind of reason
        previous = self._reasons.get(tenant)
        if previous is not None and previous != reason:
            self.untested.remove(tenant, previous)  # a tested tenant has no such series left
        if reason:
            self.untested.labels(tenant, reason).set(1)
            self._reasons[tenant] = reason
        else:
            self._reasons.pop(tenant, None)
        if reading.drifted:
            log.warning(
                "serve: questions of %s drifted from its %s reference (MMD² %.4f, p %.4f, window %d)",
                tenant,
                reading.reference_source,
                reading.statistic,
                reading.p_value,
                reading.window,
                extra={"tenant": tenant},
            )

    # -- the background thread --------------------------------------------------------------------
    def _load_references(self) -> None:
        while True:
            self._signal.wait()
            self._signal.clear()
            while True:
                with self._lock:
                    if not self._wanted:
                        break
                    wanted, self._wanted = self._wanted, {}
                for tenant, manifest, vectors, error in self._references(wanted):
                    if error is not None:  # Kafka or the embedder failing: the first window stays the reference
                        log.warning(
                            "serve: drift: could not read the questions %s %s was trained on (%s); its first "
                            "window of questions is its reference meanwhile",
                            tenant,
                            manifest.version,
                            error,
                            extra={"tenant": tenant},
                        )
                    else:
                        self._ready.put((tenant, vectors, f"{manifest.version} training questions"))

    def _references(
        self, wanted: dict[str, Manifest]
    ) -> Iterator[tuple[str, Manifest, list[list[float]], Exception | None]]:
        """Each wanted tenant's reference vectors (or the error that kept them from it). The manifests' ranges of one
        topic are read in one pass, and the questions embedded ``EMBED_BATCH`` at a time across tenants, since at
        start-up every tenant asks at once (one read per tenant took 64 s for 1,000 tenants, ``bench/tenants.py``);
        tenants are yielded batch by batch, so only one batch's vectors are held here."""
        by_topic: dict[str, dict[str, Manifest]] = {}
        for tenant, manifest in wanted.items():
            by_topic.setdefault(manifest.data.topic, {})[tenant] = manifest
        questions: dict[str, list[str]] = {}
        for topic, manifests in by_topic.items():
            try:
                questions.update(self._questions(topic, manifests))
            except Exception as exc:
                yield from ((t, m, [], exc) for t, m in manifests.items())
        tenants = list(questions)
        batch: list[str] = []
        size = 0
        for index, tenant in enumerate(tenants):
            batch.append(tenant)
            size += len(questions[tenant])
            if size < EMBED_BATCH and index < len(tenants) - 1:
                continue
            try:
                every = self._embed([q for t in batch for q in questions[t]]) if size else []
            except Exception as exc:
                yield from ((t, wanted[t], [], exc) for t in batch)
            else:
                begin = 0
                for t in batch:
                    yield t, wanted[t], every[begin : begin + len(questions[t])], None
                    begin += len(questions[t])
            batch, size = [], 0

    def _questions(self, topic: str, manifests: dict[str, Manifest]) -> dict[str, list[str]]:
        """The questions of each tenant's demonstrations in its version's new examples on ``topic`` (at most
        ``drift.max_reference`` x 4 a tenant, the tracker subsamples), in one read of the ranges' union."""
        from streamtune.kafka import read_range

        union: dict[int, tuple[int, int]] = {}
        for manifest in manifests.values():
            for partition, (start, end) in manifest.data.ranges.items():
                if end > start:
                    first, last = union.get(partition, (start, end))
                    union[partition] = (min(first, start), max(last, end))
        limit = self.settings.drift.max_reference * 4
        questions: dict[str, list[str]] = {tenant: [] for tenant in manifests}
        full = 0  # tenants with ``limit`` questions: the read ends when every one has
        for message in read_range(self.settings.kafka, topic, union):
            try:
                example = decode(message.value() or b"", TrainingExample)
            except ContractError:
                continue
            owner = manifests.get(example.tenant)
            if owner is None or example.kind not in (None, "demonstration"):
                continue
            start, end = owner.data.ranges.get(message.partition() or 0, (0, 0))
            asked = [m.content for m in example.messages if m.role == "user"]
            if asked and start <= (message.offset() or 0) < end and len(questions[example.tenant]) < limit:
                questions[example.tenant].append(asked[-1])
                full += len(questions[example.tenant]) == limit
                if full == len(manifests):
                    break
        return questions
