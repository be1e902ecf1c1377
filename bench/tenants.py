"""Many tenants with small adapters: the watcher's cost to decide who is due as tenants grow, and `serve`'s memory,
load rate and hit ratio while queries cycle through every tenant's adapter.

    .venv/ml/bin/python bench/tenants.py [--sizes 10 100 1000] [--rounds 11] [--queries 1000]
        [--skewed 1000] [--zipf 1.0] [--yardstick 160] [--scrapes 20] [--no-serve]

Every tenant is real: a registry in a temporary adapters dir holding one promoted version, a LoRA adapter
made with peft on the tiny test model (``tests/conftest.py``'s, a 2-layer Llama: ~130 KB of safetensors),
whose manifest records the offsets of ``training-examples`` it was trained on; its examples are on that
topic (uuid-named, one deployment per size, ``streamtune.harness.isolated_env``).

1. **The watcher's decision** (``training/watch.py``), timed at each size in ``--rounds`` rounds interleaved
   across the sizes: one tick as ``watch()`` runs it, up to where it would start a refresh. That is
   ``pending_counts`` with the floor ``watch()`` builds (each tenant's registry read once per tick:
   ``_trained_up_to``), the pending gauge per tenant, the rule (``training.watch_min_examples``; set to 3
   here) and ``_on_trial`` for each tenant that is due. ``watch()`` inlines that rule, so the few lines of
   the rule are repeated here; every read is the real function. Every tenant has 2 trained examples and new
   ones since the last tick (3 for every tenth tenant, which is then due, else 1), so the work per tenant is
   the same at every size. "Steady" is a tick that reads the records that arrived since the previous one;
   "first" is the first tick after a start, which reads the topic from the beginning. The yardstick is the
   smallest size, measured in the same rounds. Reported: median seconds per tick, per tenant, and two
   ratios: per-tenant cost at the largest size over the smallest (the issue's; fixed costs per tick, the
   end offsets and a consumer, flatter it), and the marginal cost per added tenant between the two
   largest sizes over that between the two smallest (what grows if the decision is not linear).
2. **`serve`** (``streamtune serve``, a child process, the tiny model, ``inference.max_loaded_adapters``
   as configured, 8 by default) with all the largest size's adapters announced. Its resident memory
   (``/proc/<pid>/status``) is sampled every 0.1 s. After an untimed warm-up that loads as many adapters
   as the cache holds, three backlogs, each queued at once: the yardstick (``--yardstick`` queries over
   those tenants: every query a hit), a cycle through every tenant once in order (the worst case for a
   least-recently-used cache: every query a miss), and ``--skewed`` queries drawn from a Zipf law
   (``--zipf``) over the tenants.
   Reported per backlog: answers/s and its ratio to the yardstick's, adapter loads and loads/s,
   the hit ratio (1 - loads / queries: a query answered without loading its adapter), time per load
   (serve's own histogram), and memory: peak and end against the memory with the cache full, the growth
   per tenant seen, and what keeping every adapter would have cost (one adapter's resident memory measured
   in this process, times the tenants beyond the cache). Also: how long serve took to serve every adapter
   and to go idle after its start (it loads each tenant's drift reference in a thread), the size of its
   /metrics, whose series are per tenant, and its memory after each of ``--scrapes`` reads of /metrics
   (as Prometheus would, every 15 s or so) once the backlogs are answered.

Uses uuid-named topics and a temporary directory against the running local stack; removes them after.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from common import cpus

from streamtune.harness import free_port, isolated_env, query_server, sample_manifest, tiny_serving
from streamtune.settings import Settings, load_settings

OLD_PER_TENANT = 2
"""Examples each tenant's version was trained on."""
DUE_EVERY = 10
"""Every tenth tenant has enough new examples to be due."""
WATCH_MIN_EXAMPLES = 3


def _new_examples(index: int) -> int:
    return WATCH_MIN_EXAMPLES if index % DUE_EVERY == 0 else 1


@dataclass
class Deployment:
    """One isolated deployment of ``size`` tenants: its settings, environment and where its history ends."""

    size: int
    env: dict[str, str]
    settings: Settings
    tenants: list[str]
    trained_end: dict[int, int] = field(default_factory=dict)
    """Per partition, the end of the trained examples: where a watcher that has seen them starts its next tick."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="tenants per deployment")
    parser.add_argument("--rounds", type=int, default=11, help="timed ticks per size, interleaved across sizes")
    parser.add_argument("--queries", type=int, default=None, help="cycle backlog (default: one per tenant)")
    parser.add_argument("--skewed", type=int, default=1000, help="queries drawn from a Zipf law over the tenants")
    parser.add_argument("--zipf", type=float, default=1.0, help="exponent of the skewed backlog's Zipf law")
    parser.add_argument("--yardstick", type=int, default=160, help="queries over as many tenants as the cache holds")
    parser.add_argument("--scrapes", type=int, default=20, help="serve's /metrics read this often after the backlogs")
    parser.add_argument("--no-serve", action="store_true", help="only the watcher's decision")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes))

    # Before torch is imported: OpenMP threads that spin while waiting would take the cores `serve` (a child,
    # started with PASSIVE too) and the broker need. One torch thread for the benchmark's own work; serve runs on
    # inference.torch_threads (1: tiny_serving).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    model = _tiny_model(work / "tiny-model")
    deployments = []
    try:
        writer = _AdapterWriter(model, load_settings().training)
        for size in sizes:
            begin = time.perf_counter()
            deployments.append(_deploy(work, size, model, writer, announced=size == sizes[-1] and not args.no_serve))
            print(f"deployment of {size} tenants ready in {time.perf_counter() - begin:.1f} s", flush=True)
        decision = _decision(deployments, args.rounds)
        serving = None if args.no_serve else _serving(deployments[-1], work, model, args)
        print(
            json.dumps(
                {
                    "machine": f"{platform.node()} {platform.machine()}, {cpus()} CPUs, "
                    f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
                    "decision": decision,
                    "serving": serving,
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        from streamtune.kafka import delete_topics

        for deployment in deployments:
            delete_topics(deployment.settings.kafka, deployment.settings.topics)


# -- the tenants ---------------------------------------------------------------------------------------------------
def _tiny_model(folder: Path) -> Path:
    """The tests' tiny Llama (``tests/conftest.py``, ``build_tiny_model``), loaded from there so that there is
    one recipe for it; the tests are no package, hence the file import."""
    spec = importlib.util.spec_from_file_location("_tests_conftest", Path(__file__).parents[1] / "tests/conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.build_tiny_model(folder))


class _AdapterWriter:
    """Real LoRA adapters (``training.trainer.lora_config``) for the tiny model: one PEFT model whose ``lora_B``
    is drawn again for each tenant (random, so that each adapter changes the output a little), saved as
    safetensors. One model for all: building one per tenant would cost more than the benchmark measures."""

    def __init__(self, model: Path, training: Any) -> None:
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        from training.trainer import lora_config

        self.model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model)), lora_config(training))

    def write(self, target: Path, seed: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 1e-3)
        self.model.save_pretrained(str(target))


def _settings_for(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` loads (the benchmark holds several deployments at once)."""
    with mock.patch.dict(os.environ, env):
        return load_settings()


def _deploy(work: Path, size: int, model: Path, writer: _AdapterWriter, *, announced: bool) -> Deployment:
    """``size`` tenants: their trained examples, a promoted version each that records them, then new examples."""
    from streamtune.kafka import create_topics

    env = {
        **isolated_env(work / f"size-{size}", name=f"tenants{size}"),
        **tiny_serving(model),
        "STREAMTUNE__TRAINING__WATCH_MIN_EXAMPLES": str(WATCH_MIN_EXAMPLES),
    }
    settings = _settings_for(env)
    create_topics(settings.kafka, settings.topics)
    deployment = Deployment(size, env, settings, [f"t{i:04d}" for i in range(size)])
    trained = _produce_examples(settings, {t: OLD_PER_TENANT for t in deployment.tenants}, "old")
    for ranges in trained.values():
        for partition, (_, end) in ranges.items():
            deployment.trained_end[partition] = max(end, deployment.trained_end.get(partition, 0))
    for i, tenant in enumerate(deployment.tenants):
        _publish(settings, tenant, trained[tenant], writer, seed=i)
    if announced:
        _announce(settings, deployment.tenants)
    _produce_examples(settings, {t: _new_examples(i) for i, t in enumerate(deployment.tenants)}, "new")
    return deployment


def _produce_examples(
    settings: Settings, per_tenant: dict[str, int], tag: str
) -> dict[str, dict[int, tuple[int, int]]]:
    """Each tenant's examples, tenant after tenant (as if each was refreshed right after its examples arrived),
    keyed by example id as the streaming job keys them; per tenant and partition, the offsets they took."""
    from streamtune.contracts import ChatMessage, TrainingExample
    from streamtune.kafka import producer
    from streamtune.topics import TRAINING_EXAMPLES, topic_name

    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    offsets: dict[str, dict[int, list[int]]] = {}
    out = producer(settings.kafka)

    def delivered(tenant: str) -> Any:
        def record(error: Any, message: Any) -> None:
            assert error is None, error
            offsets.setdefault(tenant, {}).setdefault(message.partition(), []).append(message.offset())

        return record

    for tenant, count in per_tenant.items():
        for i in range(count):
            example = TrainingExample(
                example_id=f"{tenant}-{tag}-{i}",
                source_event_id=f"{tenant}-{tag}-{i}",
                tenant=tenant,
                messages=[
                    ChatMessage(role="user", content=f"What is the refund window of {tenant}? ({tag} {i})"),
                    ChatMessage(role="assistant", content="Thirty days with the receipt."),
                ],
            )
            out.produce(
                topic,
                key=example.example_id.encode(),
                value=TRAINING_EXAMPLES.encode(example),
                on_delivery=delivered(tenant),
            )
            out.poll(0)
    assert out.flush(60) == 0, "examples not delivered"
    return {t: {p: (min(o), max(o) + 1) for p, o in parts.items()} for t, parts in offsets.items()}


def _publish(
    settings: Settings,
    tenant: str,
    ranges: dict[int, tuple[int, int]],
    writer: _AdapterWriter,
    *,
    seed: int,
) -> None:
    """Version v0001 of ``tenant``, promoted: a real adapter, and a manifest that says it was trained on exactly
    ``ranges`` of the deployment's ``training-examples`` (the rest of its figures made up)."""
    from streamtune.manifest import AdapterDigest, BaseModelIdentity
    from streamtune.models import sha256_file
    from streamtune.topics import TRAINING_EXAMPLES, topic_name
    from training.registry import open_registry
    from training.trainer import ADAPTER_WEIGHTS

    def write(target: Path) -> None:
        writer.write(target, seed)
        manifest = sample_manifest(
            tenant,
            "v0001",
            base_model=BaseModelIdentity(setting=settings.models.base_model, source=settings.models.base_model),
            data={
                "topic": topic_name(TRAINING_EXAMPLES, settings.topics),
                "ranges": ranges,
                "new_examples": OLD_PER_TENANT,
                "train": OLD_PER_TENANT,
                "held_out": 0,
            },
            quantization="none (benchmark: random LoRA weights)",
            adapter=AdapterDigest(sha256=sha256_file(target / ADAPTER_WEIGHTS)),
        )
        (target / "manifest.json").write_text(manifest.to_json())

    open_registry(settings, tenant).publish("v0001", write, "promoted")


def _announce(settings: Settings, tenants: list[str]) -> None:
    """Each tenant's current version on ``adapter-updates`` (``training.publish.announce``, holding the tenant's
    lock as it asks), 16 at a time: each call starts a producer of its own and waits for its flush (~0.5 s here),
    which would make 1,000 announcements in a row take minutes."""
    from concurrent.futures import ThreadPoolExecutor

    from training.publish import announce
    from training.registry import open_registry

    def one(tenant: str) -> None:
        registry = open_registry(settings, tenant)
        with registry.writing():
            version = registry.current()
            assert version is not None
            announce(settings, version)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, tenants))


# -- 1. the watcher's decision -------------------------------------------------------------------------------------
def _tick(settings: Settings, since: dict[int, int]) -> dict[str, Any]:
    """One tick of ``training.watch.watch`` up to its first refresh, timed; and what it decided."""
    from training import watch
    from training.metrics import WatchMetrics

    metrics = WatchMetrics()
    floor_s = 0.0

    def trained_up_to(tenant: str) -> dict[int, int]:
        nonlocal floor_s
        begin = time.perf_counter()
        try:
            return watch._trained_up_to(settings, tenant)
        finally:
            floor_s += time.perf_counter() - begin

    begin = time.perf_counter()
    floor = functools.cache(trained_up_to)  # as watch() builds it: each tenant's registry read once per tick
    counts, _ = watch.pending_counts(settings, since, floor)
    for tenant, count in counts.items():
        metrics.pending.labels(tenant).set(count)
    # watch()'s rule, inline there: enough examples (nobody has waited watch_minutes yet), not on trial
    due = [t for t in sorted(counts) if counts[t] >= settings.training.watch_min_examples]
    trial_begin = time.perf_counter()
    ready = [t for t in due if not watch._on_trial(settings, t)]
    end = time.perf_counter()
    return {
        "seconds": end - begin,
        "floor_s": floor_s,
        "trial_s": end - trial_begin,
        "counts": counts,
        "ready": ready,
    }


def _decision(deployments: list[Deployment], rounds: int) -> dict[str, Any]:
    """Median tick per size, ``rounds`` rounds interleaved across the sizes (after one untimed warm-up each)."""
    times: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_ in range(rounds + 1):
        for deployment in deployments:
            for kind, since in (("steady", deployment.trained_end), ("first", {})):
                tick = _tick(deployment.settings, since)
                _check(deployment, tick)
                if round_:
                    times.setdefault((kind, deployment.size), []).append(tick)
    out: dict[str, Any] = {}
    small, large = deployments[0].size, deployments[-1].size
    for kind in ("steady", "first"):
        rows = {}
        for deployment in deployments:
            ticks = times[(kind, deployment.size)]
            n = deployment.size
            rows[n] = {
                "tick_s": round(statistics.median(t["seconds"] for t in ticks), 4),
                "tick_min_s": round(min(t["seconds"] for t in ticks), 4),
                "per_tenant_ms": round(statistics.median(t["seconds"] for t in ticks) / n * 1000, 3),
                "registry_reads_per_tenant_ms": round(statistics.median(t["floor_s"] for t in ticks) / n * 1000, 3),
                "on_trial_per_due_tenant_ms": round(
                    statistics.median(t["trial_s"] for t in ticks) / len(ticks[0]["ready"]) * 1000, 3
                ),
                "records": sum(ticks[0]["counts"].values()),
                "due": len(ticks[0]["ready"]),
            }
        summary: dict[str, Any] = {"by_tenants": rows}
        summary["per_tenant_ratio"] = round(rows[large]["per_tenant_ms"] / rows[small]["per_tenant_ms"], 3)
        summary["registry_reads_per_tenant_ratio"] = round(
            rows[large]["registry_reads_per_tenant_ms"] / rows[small]["registry_reads_per_tenant_ms"], 3
        )
        if len(deployments) >= 3:
            (a, b), (c, d) = (deployments[0].size, deployments[1].size), (deployments[-2].size, deployments[-1].size)
            low = (rows[b]["tick_s"] - rows[a]["tick_s"]) / (b - a)
            high = (rows[d]["tick_s"] - rows[c]["tick_s"]) / (d - c)
            summary["marginal_ms_per_tenant"] = {f"{a}->{b}": round(low * 1000, 3), f"{c}->{d}": round(high * 1000, 3)}
            summary["marginal_ratio"] = round(high / low, 3) if low > 0 else None
        out[kind] = summary
        print(f"watcher, {kind} tick: {json.dumps(summary)}", flush=True)
    return out


def _check(deployment: Deployment, tick: dict[str, Any]) -> None:
    """The tick decided what the deployment says: every new example pending, none of the trained ones, and
    exactly every tenth tenant due. A benchmark of a decision that went wrong would measure nothing."""
    expected = Counter({t: _new_examples(i) for i, t in enumerate(deployment.tenants)})
    assert tick["counts"] == expected, f"{deployment.size} tenants: pending counts differ from the examples written"
    assert tick["ready"] == deployment.tenants[::DUE_EVERY], f"{deployment.size} tenants: not the due tenants"


# -- 2. serve ------------------------------------------------------------------------------------------------------
class _Memory:
    """Resident memory of a process, sampled every ``interval_s`` in a thread: (monotonic time, MiB)."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._interval_s = interval_s

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> float:
        return _status_mib(self.pid, "VmRSS")

    def between(self, begin: float, end: float) -> list[float]:
        return [mib for t, mib in self.samples if begin <= t <= end]

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.samples.append((time.monotonic(), self.now()))
            except OSError:  # the process has ended
                return


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no {key} for pid {pid}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(port: int) -> dict[str, float]:
    """serve's /metrics, each series name summed over its labels; and under ``_bytes``, ``_seconds`` and
    ``_tenant_samples`` the exposition's size, how long serve took to send it, and how many of its samples carry
    a tenant label."""
    from prometheus_client.parser import text_string_to_metric_families

    begin = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    sums = {"_bytes": float(len(text)), "_seconds": time.perf_counter() - begin, "_tenant_samples": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
            sums["_tenant_samples"] += "tenant" in sample.labels
    return sums


class _Arrivals:
    """The router's waiter for many queries: when each answer arrived, and the answers themselves."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.answers: dict[str, Any] = {}
        self.errors: list[Exception] = []
        self.done = threading.Condition()

    def delta(self, delta: Any) -> None:
        pass

    def answer(self, answer: Any) -> None:
        with self.done:
            self.at[answer.query_id] = time.monotonic()
            self.answers[answer.query_id] = answer
            self.done.notify_all()

    def failed(self, error: Exception) -> None:
        with self.done:
            self.errors.append(error)
            self.done.notify_all()


def _serving(deployment: Deployment, work: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from inference.routing import QueryRouter

    port = free_port()
    env = {**deployment.env, "STREAMTUNE__INFERENCE__METRICS_PORT": str(port)}
    settings = deployment.settings
    capacity = settings.inference.max_loaded_adapters
    tenants = deployment.tenants
    footprint_mib = _adapter_footprint(deployment, model)
    print(f"one loaded adapter, in this process: {footprint_mib * 1024:.0f} KiB resident", flush=True)

    server = query_server(work / "logs", env)
    begin = time.monotonic()
    server.start()
    assert server.process is not None
    pid = server.process.pid
    ready_s = time.monotonic() - begin
    # "serve: consuming" comes before it has read every announcement, and the drift references of every tenant
    # then load in a thread: the backlogs start once it serves all of them and its CPU has gone quiet
    _wait(lambda: _metrics(port).get("streamtune_adapter_serving", 0) >= len(tenants), 300, "every adapter served")
    announced_s = time.monotonic() - begin
    _wait_idle(pid, timeout_s=900)
    idle_s = time.monotonic() - begin
    memory = _Memory(pid)
    memory.start()
    router = QueryRouter(settings, name="bench-tenants")
    router.start()
    arrivals = _Arrivals()
    try:
        assert router.ready.wait(60), router.status
        rss_idle = memory.now()
        exposition_idle = _metrics(port)
        rng = np.random.default_rng(0)
        weights = 1.0 / np.arange(1, len(tenants) + 1) ** args.zipf
        backlogs = {
            "yardstick": [tenants[i % capacity] for i in range(args.yardstick)],
            "cycle": [tenants[i % len(tenants)] for i in range(args.queries or len(tenants))],
            "skewed": [str(t) for t in rng.choice(tenants, size=args.skewed, p=weights / weights.sum())],
        }
        # untimed: the first generations, and the adapters the yardstick asks for loaded (the cache full)
        _backlog("warm-up", tenants[:capacity] * 2, router, arrivals, memory, port)
        rss_full = memory.now()
        results: dict[str, Any] = {}
        rss: dict[str, list[float]] = {}
        for name, order in backlogs.items():
            results[name], rss[name] = _backlog(name, order, router, arrivals, memory, port)
            rate = results[name]["answers_per_s"] / results["yardstick"]["answers_per_s"]
            results[name]["answers_per_s_ratio"] = round(rate, 3)
            print(f"serve, {name}: {json.dumps(results[name])}", flush=True)
        peak = max(rss["cycle"] + rss["skewed"])
        rss_before_scrapes = memory.now()
        # Prometheus scrapes serve every 15 s or so; each /metrics is built on a thread of its own
        after_scrapes = []
        for _ in range(args.scrapes):
            exposition = _metrics(port)
            time.sleep(0.5)
            after_scrapes.append(round(memory.now(), 1))
        exposition = _metrics(port)
        seen_after_full = len(set(backlogs["cycle"] + backlogs["skewed"]) - set(backlogs["yardstick"]))
        summary = {
            "tenants": len(tenants),
            "max_loaded_adapters": capacity,
            "adapter_file_kib": round((_weights(deployment, tenants[0]).stat().st_size) / 1024, 1),
            "adapter_resident_kib": round(footprint_mib * 1024, 1),
            "start_ready_s": round(ready_s, 1),
            "start_all_announced_s": round(announced_s, 1),
            "start_idle_s": round(idle_s, 1),
            "rss_idle_mib": round(rss_idle, 1),
            "rss_cache_full_mib": round(rss_full, 1),
            "rss_peak_cycling_mib": round(peak, 1),
            "rss_end_mib": round(memory.now(), 1),
            "rss_peak_over_full": round(peak / rss_full, 4),
            "growth_mib": round(peak - rss_full, 1),
            "growth_kib_per_tenant_seen": round((peak - rss_full) * 1024 / max(seen_after_full, 1), 2),
            "every_adapter_kept_mib": round(seen_after_full * footprint_mib, 1),
            "vm_hwm_mib": round(_status_mib(pid, "VmHWM"), 1),
            "metrics_kib_idle": round(exposition_idle["_bytes"] / 1024),
            "metrics_kib_end": round(exposition["_bytes"] / 1024),
            "metrics_scrape_s_end": round(exposition["_seconds"], 2),
            "metric_samples_per_tenant_end": round(exposition["_tenant_samples"] / len(tenants), 1),
            "rss_before_scrapes_mib": round(rss_before_scrapes, 1),
            "rss_after_each_scrape_mib": after_scrapes,
            "backlogs": results,
        }
        print(f"serve: {json.dumps({k: v for k, v in summary.items() if k != 'backlogs'})}", flush=True)
        return summary
    finally:
        router.close()
        memory.stop()
        server.stop()


def _backlog(
    name: str,
    tenants: list[str],
    router: Any,
    arrivals: _Arrivals,
    memory: _Memory,
    port: int,
) -> tuple[dict[str, Any], list[float]]:
    """Queue one query per entry of ``tenants`` at once; wait for every answer; what it cost serve, and serve's
    resident memory (MiB) sampled meanwhile."""
    from streamtune.contracts import Query

    before = _metrics(port)
    tag = uuid.uuid4().hex[:6]
    queries = [
        Query(query_id=f"{name}-{tag}-{i}", tenant=t, question=f"What is the refund window? ({i})")
        for i, t in enumerate(tenants)
    ]
    begin = time.monotonic()
    for query in queries:
        router.send(query, arrivals)
    wanted = {q.query_id for q in queries}
    with arrivals.done:
        finished = arrivals.done.wait_for(lambda: wanted <= set(arrivals.at) or arrivals.errors, timeout=900)
    assert finished and not arrivals.errors, f"{name}: {len(wanted - set(arrivals.at))} answers missing"
    times = sorted(arrivals.at[q] for q in wanted)
    end = times[-1]
    after = _metrics(port)
    answers = [arrivals.answers[q] for q in wanted]
    wrong = [a for a in answers if a.error is not None or a.adapter_version != "v0001"]
    assert not wrong, f"{name}: {len(wrong)} answers with an error or without the adapter, e.g. {wrong[0]}"

    def delta(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    loads = delta("streamtune_adapter_loads_total")
    seconds = end - begin
    return {
        "queries": len(queries),
        "tenants": len(set(tenants)),
        "seconds": round(seconds, 2),
        "answers_per_s": round(len(queries) / seconds, 2),
        "loads": int(loads),
        "evictions": int(delta("streamtune_adapter_evictions_total")),
        "loads_per_s": round(loads / seconds, 2),
        "hit_ratio": round(1 - loads / len(queries), 4),
        "load_ms_mean": round(delta("streamtune_adapter_load_seconds_sum") / loads * 1000, 1) if loads else None,
        "loading_share_of_time": round(delta("streamtune_adapter_load_seconds_sum") / seconds, 3),
        "rss_peak_mib": round(max(memory.between(begin, end)), 1),
        # whether memory levels off or keeps growing: at each tenth of the answers
        "rss_mib_by_tenth": [round(_at(memory, times[len(times) * k // 10 - 1]), 1) for k in range(1, 11)],
    }, memory.between(begin, end)


def _at(memory: _Memory, when: float) -> float:
    """The last sample taken at or before ``when``."""
    return max((t, mib) for t, mib in memory.samples if t <= when)[1]


def _adapter_footprint(deployment: Deployment, model: Path, count: int = 64) -> float:
    """Resident MiB one more loaded adapter costs: ``count`` of the deployment's adapters loaded by serve's
    cache (``inference.adapters.AdapterCache``) on the tiny model in this process, nothing evicted."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    from inference.adapters import AdapterCache, Announced
    from streamtune.models import sha256_file

    adapters = [
        Announced(t, "v0001", _weights(deployment, t).parent, sha256_file(_weights(deployment, t)))
        for t in deployment.tenants[: count + 1]
    ]
    cache = AdapterCache(AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32), capacity=count + 1)
    cache.ensure(adapters[:1])  # the first wraps the model in a PeftModel: not an adapter's own cost
    gc.collect()
    before = _status_mib(os.getpid(), "VmRSS")
    for adapter in adapters[1:]:
        cache.ensure([adapter])
    gc.collect()
    footprint = (_status_mib(os.getpid(), "VmRSS") - before) / count
    del cache
    gc.collect()
    return footprint


def _weights(deployment: Deployment, tenant: str) -> Path:
    from training.registry import open_registry
    from training.trainer import ADAPTER_WEIGHTS

    version = open_registry(deployment.settings, tenant).current()
    assert version is not None
    return version.path / ADAPTER_WEIGHTS


def _wait(check: Any, timeout_s: float, what: str) -> None:
    from streamtune.harness import wait_for

    def safe() -> bool:
        try:
            return bool(check())
        except OSError:  # its /metrics is not listening yet
            return False

    wait_for(safe, timeout_s, what, interval_s=0.5)


def _wait_idle(pid: int, timeout_s: float, window_s: float = 3.0, busy: float = 0.05) -> None:
    """Until the process used less than ``busy`` of a CPU over ``window_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        used = _cpu_seconds(pid)
        time.sleep(window_s)
        if (_cpu_seconds(pid) - used) / window_s < busy:
            return
    raise TimeoutError(f"serve (pid {pid}) still busy after {timeout_s:.0f} s")


if __name__ == "__main__":
    main()
