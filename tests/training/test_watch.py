"""`train watch` outlives failures: the policy, with the topic reads and the refreshes faked (no stack, no model).

The same promises against the real Kafka and a real refresh: ``test_faults.py``.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import training.watch as watch_module
from streamtune.errors import KafkaUnavailableError
from streamtune.settings import Settings, load_settings
from training.refresh import RefreshOutcome
from training.registry import RegistryError


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        config_files=[],
        training={
            "adapters_dir": tmp_path / "adapters",
            "watch_min_examples": 5,
            "watch_minutes": 60,
            "metrics_port": 0,
        },
    )


Counts = tuple[Counter[str], dict[int, int]]


def topic_reads(*results: Counts | BaseException) -> Callable[..., Counts]:
    """A fake ``pending_counts`` that returns (or raises) ``results`` in turn, then finds nothing new."""
    queue = list(results)

    def read(settings: Settings, since: dict[int, int], floor: Any) -> Counts:
        result = queue.pop(0) if queue else (Counter(), since)
        if isinstance(result, BaseException):
            raise result
        return result

    return read


class Refreshes:
    """A fake ``refresh``: each tenant's behaviour, and the monotonic time of every call."""

    def __init__(self, **behaviour: Callable[[], RefreshOutcome]) -> None:
        self.behaviour = behaviour
        self.calls: dict[str, list[float]] = {tenant: [] for tenant in behaviour}

    def __call__(self, settings: Settings, tenant: str, **_: Any) -> RefreshOutcome:
        self.calls[tenant].append(time.monotonic())
        return self.behaviour[tenant]()


def promoted() -> RefreshOutcome:
    return RefreshOutcome("promoted", "better", "v0001")


def out_of_memory() -> RefreshOutcome:
    raise MemoryError("simulated: the tenant's batch does not fit")


def test_a_kafka_outage_while_reading_the_topic_is_waited_out_with_one_log_line_per_interval(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    down = KafkaUnavailableError("could not read the end offsets: Broker transport failure")
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"retry_initial_s": 0.01, "retry_max_s": 0.02, "status_interval_s": 3600}
            )
        }
    )
    monkeypatch.setattr(watch_module, "pending_counts", topic_reads(*[down] * 6, (Counter(acme=5), {0: 5})))
    refreshes = Refreshes(acme=promoted)
    monkeypatch.setattr(watch_module, "refresh", refreshes)
    assert watch_module.watch(settings, poll_s=0.01, max_refreshes=1) == 0
    assert len(refreshes.calls["acme"]) == 1
    waiting = [m for m in caplog.messages if "unavailable for" in m]
    assert len(waiting) == 1 and "Broker transport failure" in waiting[0]  # once per interval, not per retry
    assert sum("is back after" in m and "6 retries" in m for m in caplog.messages) == 1


def test_a_failing_tenant_is_logged_and_retried_after_a_doubling_delay_while_the_others_go_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training.watch")
    settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"retry_initial_s": 0.2, "retry_max_s": 0.4})}
    )
    monkeypatch.setattr(watch_module, "pending_counts", topic_reads((Counter(bad=5, good=5), {0: 10})))
    refreshes = Refreshes(bad=out_of_memory, good=promoted)
    monkeypatch.setattr(watch_module, "refresh", refreshes)
    assert watch_module.watch(settings, poll_s=0.02, until=lambda: len(refreshes.calls["bad"]) >= 4) == 0
    assert len(refreshes.calls["good"]) == 1  # promoted on the first tick, between two of bad's failures
    bad = refreshes.calls["bad"]
    assert refreshes.calls["good"][0] < bad[1]
    gaps = [later - earlier for earlier, later in itertools.pairwise(bad)]
    assert all(g >= d for g, d in zip(gaps, (0.2, 0.4, 0.4), strict=True)), gaps  # doubling, capped at 0.4
    failed = [m for m in caplog.messages if m.startswith("watch: bad: refresh failed (MemoryError: simulated")]
    assert [m.split("trying again in ")[1] for m in failed] == [
        "0.2s (failure 1 in a row)",
        "0.4s (failure 2 in a row)",
        "0.4s (failure 3 in a row)",
        "0.4s (failure 4 in a row)",
    ]
    assert any("watch: good: promoted v0001" in m for m in caplog.messages)


def test_every_tenant_with_a_registry_is_repaired_and_checked_at_start_and_a_failure_is_retried(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for tenant in ("acme", "broken"):
        (settings.adapters_dir / tenant).mkdir(parents=True)
        (settings.adapters_dir / tenant / "registry.json").write_text(
            '{"current": null, "versions": {}, "history": []}'
        )
    (settings.adapters_dir / "not-a-registry").mkdir()
    settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"retry_initial_s": 0.05, "retry_max_s": 0.05})}
    )
    monkeypatch.setattr(watch_module, "last_announcements", lambda settings: {})
    checked: list[str] = []

    def ensure_announced(settings: Settings, registry: Any, *, announced: Any) -> None:
        checked.append(registry.tenant)
        if registry.tenant == "broken" and checked.count("broken") == 1:
            raise RegistryError("tenant broken: v0003 is current but its manifest is unreadable")

    monkeypatch.setattr(watch_module, "ensure_announced", ensure_announced)
    monkeypatch.setattr(watch_module, "pending_counts", topic_reads())
    assert watch_module.watch(settings, poll_s=0.01, until=lambda: checked.count("broken") == 2) == 0
    assert sorted(checked) == ["acme", "broken", "broken"]
    assert any("watch: broken: repair and announcement check failed (RegistryError" in m for m in caplog.messages)


def test_keyboard_interrupt_in_a_refresh_stops_watch_and_is_no_tenant_failure(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def interrupted() -> RefreshOutcome:
        raise KeyboardInterrupt

    monkeypatch.setattr(watch_module, "pending_counts", topic_reads((Counter(acme=5), {0: 5})))
    refreshes = Refreshes(acme=interrupted)
    monkeypatch.setattr(watch_module, "refresh", refreshes)
    assert watch_module.watch(settings, poll_s=0.01) == 0
    assert len(refreshes.calls["acme"]) == 1
    assert not any("failed" in m for m in caplog.messages)


def test_sigterm_during_a_kafka_outage_stops_watch_without_waiting_for_the_backoff(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"retry_initial_s": 60, "retry_max_s": 60})}
    )
    monkeypatch.setattr(watch_module, "pending_counts", topic_reads(*[KafkaUnavailableError("down")] * 100))
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    timer.start()
    try:
        assert watch_module.watch(settings, poll_s=0.01) == 0
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30  # the 60 s wait was cut short
    assert signal.getsignal(signal.SIGTERM) == before  # the service's handler is gone with the service


EXPOSITION = """# HELP streamtune_question_drift_p_value p
# TYPE streamtune_question_drift_p_value gauge
streamtune_question_drift_p_value{tenant="acme"} 0.004975
streamtune_question_drift_p_value{tenant="globex"} 0.41
streamtune_question_drift_p_value{tenant="initech"} NaN
"""


@pytest.fixture
def serve_metrics() -> Any:
    """A stand-in for serve's /metrics (a real HTTP server on loopback serving drift figures)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = EXPOSITION.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()


def test_a_drifted_tenant_is_refreshed_early_only_when_drift_may_trigger(
    settings: Settings, serve_metrics: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training.watch")
    unreachable = "http://127.0.0.1:9/metrics"  # says nothing, never fails the tick
    monitor = settings.monitor.model_copy(update={"serve_metrics_urls": (unreachable, serve_metrics)})
    assert watch_module.drifted_tenants(settings.model_copy(update={"monitor": monitor})) == {"acme": 0.004975}

    def run(trigger: bool) -> dict[str, list[float]]:
        drift = settings.drift.__class__(**{**vars(settings.drift), "trigger_refresh": trigger})
        configured = settings.model_copy(update={"monitor": monitor, "drift": drift})
        # one pending example each: below training.watch_min_examples (5), long before watch_minutes (60)
        monkeypatch.setattr(watch_module, "pending_counts", topic_reads((Counter(acme=1, globex=1), {0: 2})))
        refreshes = Refreshes(acme=promoted, globex=promoted)
        monkeypatch.setattr(watch_module, "refresh", refreshes)
        ticks = itertools.count()
        assert watch_module.watch(configured, poll_s=0.01, until=lambda: next(ticks) >= 3) == 0
        return refreshes.calls

    assert {t: len(c) for t, c in run(trigger=False).items()} == {"acme": 0, "globex": 0}  # off by default
    assert {t: len(c) for t, c in run(trigger=True).items()} == {"acme": 1, "globex": 0}
    assert any(m.startswith("watch: acme: its questions drifted (p 0.0050") for m in caplog.messages)
