"""A trainer killed at each crash point, two trainers for one tenant, and `train watch` with a failing tenant:
on the real Kafka with the tiny model, counting versions and announcements afterwards.

A killed trainer is a child process (``_TRAINER``) that sets ``training.registry._crash_point`` to SIGKILL
itself at the named point, then runs a refresh: no ``finally`` block, no flush, no lock release of its own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import training.watch as watch_module
from streamtune.contracts import AdapterUpdate
from streamtune.harness import Deployment, publish_examples, tiny_training, wait_for
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES
from training.refresh import RefreshOutcome, refresh
from training.registry import AdapterRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]

_TRAINER = """
import json, logging, os, signal, sys, time
from pathlib import Path

import training.gate
import training.registry
from streamtune.settings import load_settings
from training.refresh import refresh

action, point, tenant, *files = sys.argv[1:]


def hook(name):
    if name != point:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hold":  # say that the lock is held, then keep it until the test says go on
        held, go_on = map(Path, files)
        held.touch()
        while not go_on.exists():
            time.sleep(0.05)


logging.basicConfig(level=logging.INFO, stream=sys.stderr)
training.registry._crash_point = hook
outcome = refresh(load_settings(config_files=[]), tenant, say=lambda line: print(line, file=sys.stderr, flush=True))
print(json.dumps({"status": outcome.status, "version": outcome.version, "reason": outcome.reason}), flush=True)
"""


class Trainers(Deployment):
    """A deployment of its own whose refreshes train the tiny model in seconds (``tiny_training``), and the
    trainers that crash in it."""

    def registry(self, tenant: str = "acme") -> AdapterRegistry:
        return AdapterRegistry(self.settings.adapters_dir, tenant)

    def publish(self, tenant: str, count: int, start: int = 0) -> None:
        publish_examples(self.settings, tenant, start, count)

    def announcements(self, tenant: str = "acme") -> list[AdapterUpdate]:
        """Every announcement of ``tenant`` on adapter-updates, in order."""
        updates = [ADAPTER_UPDATES.decode(value) for value in self.records(ADAPTER_UPDATES)]
        return [u for u in updates if u.tenant == tenant]

    def trainer(
        self, action: str, point: str, tenant: str = "acme", *files: Path
    ) -> tuple[subprocess.Popen[str], Path]:
        """A `refresh` in a child process (``action`` kill|hold|none at the crash point ``point``), and its log."""
        log = self.work / f"trainer-{len(list(self.work.glob('trainer-*')))}-{action}-{point}.log"
        with log.open("w") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-c", _TRAINER, action, point, tenant, *map(str, files)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **self.env},
            )
        return child, log


@pytest.fixture
def deployment(stack: Settings, tiny_model: Path, tmp_path: Path) -> Iterator[Trainers]:
    # Few steps: what is counted here is versions and announcements, not learning. Deterministic training
    # promotes the first version over the base model at these settings (asserted where it matters).
    # Few examples too: the gate decides on any held-out slice (min_eval_examples 1, children included).
    with Trainers(tmp_path, "fault", tiny_training(tiny_model)) as deployment:
        yield deployment


def _quiet(_: str) -> None:
    pass


# What the killed trainer leaves in <adapters>/acme, and what the repairing refresh then finds to do.
_CRASH_POINTS = {
    # (b) mid-write of the temporary directory: nothing published; the next refresh trains v0001 afresh
    "partial": ({".partial-v0001-*"}, set(), "promoted"),
    # (a) renamed into place, index not written: adopted as its gate said, made current, announced
    "renamed": ({"v0001"}, set(), "skipped"),
    # the index's temporary file written, not renamed: removed; the version adopted as in (a)
    "index-temp": ({"v0001", "registry.json.*"}, set(), "skipped"),
    # (c) promoted in the index, the announcement never sent: announced by the next refresh
    "index-written": ({"v0001", "registry.json"}, {"v0001"}, "skipped"),
    # announced, killed before returning: nothing to do, and no second announcement
    "announced": ({"v0001", "registry.json"}, {"v0001"}, "skipped"),
}


@pytest.mark.parametrize("point", list(_CRASH_POINTS))
def test_a_trainer_killed_at_each_crash_point_loses_nothing_and_duplicates_nothing(
    deployment: Trainers, point: str, caplog: pytest.LogCaptureFixture
) -> None:
    left, indexed, next_refresh = _CRASH_POINTS[point]
    deployment.publish("acme", 8)
    trainer, log = deployment.trainer("kill", point)
    assert trainer.wait(300) == -signal.SIGKILL, log.read_text()[-3000:]  # it died at the point, of nothing else
    root = deployment.settings.adapters_dir / "acme"
    assert all(list(root.glob(pattern)) for pattern in left), sorted(p.name for p in root.iterdir())
    assert {v.name for v in deployment.registry().versions()} == indexed
    announced_before = 1 if point == "announced" else 0
    assert len(deployment.announcements()) == announced_before

    outcome = refresh(deployment.settings, "acme", say=_quiet)  # the next refresh repairs first

    assert outcome.status == next_refresh, outcome.reason
    registry = deployment.registry()
    assert [(v.name, v.status) for v in registry.versions()] == [("v0001", "promoted")]
    assert registry.current().name == "v0001"  # type: ignore[union-attr]
    assert registry.next_name() == "v0002"
    assert sorted(p.name for p in root.iterdir()) == [".lock", "registry.json", "v0001"]  # no leftovers
    announced = deployment.announcements()
    assert [a.version for a in announced] == ["v0001"]  # exactly one: not lost, not repeated
    assert announced[0].manifest.adapter.sha256 == registry.current().manifest.adapter.sha256  # type: ignore[union-attr]
    repairs = [m for m in caplog.messages if "repair" in m]
    assert bool(repairs) == (point != "announced"), repairs  # each repair is logged, and only those


def test_two_trainers_for_one_tenant_publish_one_version_and_one_announcement(deployment: Trainers) -> None:
    deployment.publish("acme", 8)
    held, go_on = deployment.work / "held", deployment.work / "go-on"
    first, _ = deployment.trainer("hold", "locked", "acme", held, go_on)
    wait_for(held.exists, 300, "the first trainer holding the lock")
    second, second_log = deployment.trainer("none", "-", "acme")
    wait_for(lambda: "waiting up to" in second_log.read_text(), 300, "the second trainer waiting for the lock")
    go_on.touch()
    first_out, _ = first.communicate(timeout=300)
    second_out, _ = second.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 0), second_log.read_text()[-2000:]

    assert json.loads(first_out)["status"] == "promoted"
    outcome = json.loads(second_out)  # it waited, then found everything trained on: nothing new
    assert (outcome["status"], outcome["version"]) == ("skipped", None)
    assert outcome["reason"] == "0 new examples, fewer than 2"
    assert f"held by pid {first.pid} on host" in second_log.read_text()
    assert [(v.name, v.status) for v in deployment.registry().versions()] == [("v0001", "promoted")]
    assert [a.version for a in deployment.announcements()] == ["v0001"]


def test_watch_retries_a_failing_tenant_later_while_another_is_promoted(
    deployment: Trainers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training.watch")
    settings = deployment.settings.model_copy(
        update={"training": deployment.settings.training.model_copy(update={"watch_min_examples": 8})}
    )
    deployment.publish("bad", 8)
    deployment.publish("good", 8)
    attempts = {"bad": 0, "good": 0}

    def flaky_refresh(settings: Settings, tenant: str, **kwargs: Any) -> RefreshOutcome:
        attempts[tenant] += 1
        if tenant == "bad":
            raise MemoryError("simulated: bad's batch does not fit")
        return refresh(settings, tenant, **kwargs)

    monkeypatch.setattr(watch_module, "refresh", flaky_refresh)
    settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"retry_initial_s": 0.5, "retry_max_s": 1.0})}
    )
    good = AdapterRegistry(settings.adapters_dir, "good")

    def done() -> bool:
        return attempts["bad"] >= 3 and good.current() is not None

    assert watch_module.watch(settings, poll_s=0.2, until=done) == 0
    assert attempts["good"] == 1 and attempts["bad"] >= 3
    assert [(v.name, v.status) for v in good.versions()] == [("v0001", "promoted")]
    assert [a.version for a in deployment.announcements("good")] == ["v0001"]
    assert deployment.announcements("bad") == [] and AdapterRegistry(settings.adapters_dir, "bad").versions() == []
    failed = [m for m in caplog.messages if m.startswith("watch: bad: refresh failed (MemoryError: simulated")]
    assert len(failed) == attempts["bad"]
