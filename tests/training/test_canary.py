"""The canary's decision (``training.canary``) and the registry's rollout states: the statistics against known
answers; then the decision step on the real Kafka, with a decision step SIGKILLed while deciding and two at
once, counting announcements."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamtune import harness
from streamtune.contracts import AdapterUpdate
from streamtune.harness import feedback_recorded, isolated_env, sample_manifest, settings_for_env
from streamtune.kafka import committed_end_offsets, create_topics, delete_topics, producer, read_range
from streamtune.quality import Figures
from streamtune.settings import Settings, TrainingSettings
from streamtune.topics import ADAPTER_UPDATES, ANSWERS, DOMAIN_EVENTS, topic_name
from training.canary import decide, degradation, judge, log_likelihood_ratio
from training.publish import announce
from training.registry import AdapterRegistry, RegistryError, state_of


def _figures(positive: int, negative: int) -> Figures:
    return Figures(served=positive + negative, rated=positive + negative, positive=positive, negative=negative)


def test_the_log_likelihood_ratio_weighs_where_the_negative_ratings_come_from() -> None:
    # equal shares of rated answers (r = 1/2) and effect 2: a negative comes from the canary with probability
    # 1/3 if it is better (rate halved) and 2/3 if worse (doubled); each canary negative weighs log(1/2), each
    # incumbent negative log(2)
    expected = 2 * math.log(0.5) + 3 * math.log(2)
    assert log_likelihood_ratio(_figures(8, 2), _figures(7, 3), 2.0) == pytest.approx(expected)
    # a 20 % canary (r = 1/5), effect 1.5: from the canary 2/15 / (2/15 + 4/5) = 1/7 vs 3/10 / (3/10 + 4/5) = 3/11
    expected = 1 * math.log((1 / 7) / (3 / 11)) + 4 * math.log((6 / 7) / (8 / 11))
    assert log_likelihood_ratio(_figures(9, 1), _figures(36, 4), 1.5) == pytest.approx(expected)
    assert log_likelihood_ratio(_figures(0, 0), _figures(5, 5), 1.5) == 0.0  # an arm without ratings: no evidence
    assert log_likelihood_ratio(_figures(10, 0), _figures(10, 0), 1.5) == 0.0  # no negatives anywhere: none either


def test_a_lopsided_canary_is_decided_at_the_minimum_and_a_close_one_waits() -> None:
    conf = TrainingSettings()
    assert conf.canary_min_rated <= 40
    n = conf.canary_min_rated
    assert judge(_figures(n, 0), _figures(0, n), conf, 0).action == "promote"
    assert judge(_figures(0, n), _figures(n, 0), conf, 0).action == "rollback"
    assert judge(_figures(n - 1, 0), _figures(0, 40), conf, 0).action == "wait"  # one arm below the minimum
    assert judge(_figures(8, 2), _figures(32, 8), conf, 0).action == "wait"  # equal shares: little evidence
    # after canary_max_hours: not proven better, rolled back; too few ratings to judge, promoted on the gate
    assert judge(_figures(8, 2), _figures(30, 10), conf, conf.canary_max_hours).action == "rollback"
    assert judge(_figures(5, 0), _figures(0, 40), conf, conf.canary_max_hours).action == "promote"
    assert judge(_figures(0, 0), _figures(0, 0), conf, conf.canary_max_hours).action == "promote"  # nobody rated


def test_degradation_compares_a_versions_recent_share_with_its_own_earlier_one() -> None:
    conf = TrainingSettings(degradation_window=10, degradation_margin=0.2, canary_min_rated=10)
    steady = [1, 1, 1, -1] * 10
    assert degradation(steady, conf)[0] is False
    assert degradation([1] * 20 + [-1] * 5 + [1] * 5, conf)[0] is True  # 0.0 -> 0.5
    assert degradation([1] * 5 + [-1] * 10, conf)[0] is False  # too few earlier ratings to compare with


def _write(name: str, canary_percent: int | None = None, promoted: bool = True) -> Callable[[Path], None]:
    manifest = sample_manifest("acme", name, gate={"promoted": promoted, "canary_percent": canary_percent})

    def write(target: Path) -> None:
        (target / "manifest.json").write_text(manifest.to_json())

    return write


def test_the_registry_keeps_one_canary_and_records_each_decision(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    registry.publish("v0001", _write("v0001"), "promoted")
    registry.publish("v0002", _write("v0002", 20), "canary")
    assert registry.canary().name == "v0002" and registry.current().name == "v0001"  # type: ignore[union-attr]
    ended = registry.end_canary("v0002", {"decision": "rollback", "reason": "worse"})
    assert (ended.status, ended.decision) == ("rolled_back", {"decision": "rollback", "reason": "worse"})
    assert registry.canary() is None and registry.current().name == "v0001"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="not the running canary"):
        registry.end_canary("v0002", {})
    registry.publish("v0003", _write("v0003", 20), "canary")
    promoted = registry.promote("v0003", decision={"decision": "promote", "reason": "better"})
    assert promoted.status == "promoted" and registry.canary() is None
    assert registry.current().name == "v0003" and registry.previous().name == "v0001"  # type: ignore[union-attr]
    back = registry.rollback(decision={"decision": "rollback", "reason": "degraded"})
    assert back.name == "v0001" and registry.get("v0003").status == "rolled_back"


def test_each_version_is_shown_current_canary_or_by_its_status(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    registry.publish("v0001", _write("v0001"), "promoted")
    registry.publish("v0002", _write("v0002"), "promoted")
    registry.publish("v0003", _write("v0003", 20), "canary")
    current = registry.current()
    # one current: the version promoted before it is shown as promoted, not current
    assert [state_of(v, current) for v in registry.versions()] == ["promoted", "current", "canary 20%"]


def test_a_canary_a_crash_left_out_of_the_index_is_adopted_as_the_canary(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path, "acme")
    registry.publish("v0001", _write("v0001"), "promoted")
    (tmp_path / "acme" / "v0002").mkdir()
    _write("v0002", 20)(tmp_path / "acme" / "v0002")  # renamed into place, then killed before the index write
    with registry.writing():
        pass
    assert registry.canary().name == "v0002" and registry.current().name == "v0001"  # type: ignore[union-attr]


# -- on the real Kafka ------------------------------------------------------------------------------

_DECIDER = """
import json, os, signal, sys
import training.registry
from streamtune.settings import load_settings
from training.canary import decide

def hook(name):
    if name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)

training.registry._crash_point = hook
decisions = decide(load_settings(config_files=[]), "acme", say=lambda line: print(line, file=sys.stderr))
print(json.dumps([[d.action, d.version] for d in decisions]), flush=True)
"""


class Canary:
    """A tenant with a current v0001 and a canary v0002 on topics of the test's own."""

    def __init__(self, settings: Settings, env: dict[str, str], work: Path) -> None:
        self.settings, self.env, self.work = settings, env, work
        self.registry = AdapterRegistry(settings.adapters_dir, "acme")
        self.registry.publish("v0001", _write("v0001"), "promoted")
        announce(settings, self.registry.get("v0001"))
        self.registry.publish("v0002", _write("v0002", 20), "canary")
        announce(settings, self.registry.get("v0002"), "canary")

    def rate(self, arm: str, version: str, positive: int, negative: int, tenant: str = "acme") -> None:
        """Answers of ``version`` on ``arm`` and one rating each, on ``answers`` and ``domain-events``."""
        client = producer(self.settings.kafka)
        for i in range(positive + negative):
            query_id = f"{arm}-{uuid.uuid4().hex[:8]}"
            answer = harness.answer("acme", query_id, version=version, arm=arm)  # type: ignore[arg-type]
            client.produce(
                topic_name(ANSWERS, self.settings.topics), key=query_id.encode(), value=ANSWERS.encode(answer)
            )
            event = feedback_recorded(
                uuid.uuid4().hex, "q?", "a", rating=1 if i < positive else -1, tenant=tenant, query_id=query_id
            )
            client.produce(
                topic_name(DOMAIN_EVENTS, self.settings.topics),
                key=event.key.encode(),
                value=event.model_dump_json().encode(),
            )
        assert client.flush(15) == 0

    def announcements(self) -> list[AdapterUpdate]:
        topic = topic_name(ADAPTER_UPDATES, self.settings.topics)
        ends = committed_end_offsets(self.settings.kafka, topic)
        return [ADAPTER_UPDATES.decode(m.value()) for m in read_range(self.settings.kafka, topic, {0: (0, ends[0])})]

    def decider(self, crash_at: str = "none") -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _DECIDER, crash_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **self.env},
        )


@pytest.fixture
def canary(stack: Settings, tmp_path: Path) -> Iterator[Canary]:
    env = isolated_env(tmp_path, "canary", STREAMTUNE__TRAINING__CANARY_PERCENT="20")
    settings = settings_for_env(env)
    create_topics(settings.kafka, settings.topics)
    try:
        yield Canary(settings, env, tmp_path)
    finally:
        delete_topics(settings.kafka, settings.topics)


@pytest.mark.integration
def test_a_canary_rated_better_is_promoted_once(canary: Canary) -> None:
    canary.rate("canary", "v0002", positive=12, negative=0)
    canary.rate("incumbent", "v0001", positive=2, negative=10)
    canary.rate("canary", "v0002", positive=0, negative=5, tenant="evil")  # another tenant's ratings: ignored
    said: list[str] = []
    decisions = decide(canary.settings, say=said.append)
    assert [(d.action, d.version) for d in decisions] == [("promote", "v0002")]
    assert decide(canary.settings, say=said.append) == []  # decided: nothing left to decide
    version = canary.registry.get("v0002")
    assert canary.registry.current().name == "v0002" and version.status == "promoted"  # type: ignore[union-attr]
    assert version.decision["canary_figures"]["negative"] == 0 and version.decision["canary_figures"]["rated"] == 12  # type: ignore[index]
    assert [(u.version, u.state) for u in canary.announcements()] == [
        ("v0001", "current"),
        ("v0002", "canary"),
        ("v0002", "current"),
    ]


@pytest.mark.integration
def test_a_canary_rated_worse_is_rolled_back_and_the_incumbent_keeps_serving(canary: Canary) -> None:
    canary.rate("canary", "v0002", positive=1, negative=11)
    canary.rate("incumbent", "v0001", positive=30, negative=3)
    decisions = decide(canary.settings, "acme", say=lambda _: None)
    assert [(d.action, d.version) for d in decisions] == [("rollback", "v0002")]
    assert canary.registry.get("v0002").status == "rolled_back" and canary.registry.canary() is None
    assert canary.registry.current().name == "v0001"  # type: ignore[union-attr]
    assert [(u.version, u.state) for u in canary.announcements()][-1] == ("v0002", "rolled_back")


@pytest.mark.integration
def test_a_canary_with_too_few_ratings_waits_until_its_hours_are_up(canary: Canary) -> None:
    canary.rate("canary", "v0002", positive=3, negative=0)
    assert decide(canary.settings, say=lambda _: None) == []
    later = datetime.now(UTC) + timedelta(hours=canary.settings.training.canary_max_hours)
    decisions = decide(canary.settings, say=lambda _: None, now=later)
    assert [(d.action, d.version) for d in decisions] == [("promote", "v0002")]


@pytest.mark.integration
@pytest.mark.fault
@pytest.mark.parametrize("point", ["index-temp", "index-written", "announced"])
def test_a_decision_step_killed_while_deciding_announces_exactly_one_decision(canary: Canary, point: str) -> None:
    canary.rate("canary", "v0002", positive=0, negative=12)
    canary.rate("incumbent", "v0001", positive=12, negative=0)
    killed = canary.decider(crash_at=point)
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    after = canary.decider()
    out, _ = after.communicate(timeout=120)
    assert after.returncode == 0
    ends = [(u.version, u.state) for u in canary.announcements() if u.state == "rolled_back"]
    assert ends == [("v0002", "rolled_back")]  # exactly one, whichever step got to announce it
    assert canary.registry.get("v0002").status == "rolled_back"
    # the step after the crash decided only if the killed one had not written its decision yet
    assert json.loads(out) == ([["rollback", "v0002"]] if point == "index-temp" else [])


@pytest.mark.integration
@pytest.mark.fault
def test_two_decision_steps_at_once_announce_one_decision(canary: Canary) -> None:
    canary.rate("canary", "v0002", positive=12, negative=0)
    canary.rate("incumbent", "v0001", positive=0, negative=12)
    steps = [canary.decider(), canary.decider()]
    results = [json.loads(step.communicate(timeout=180)[0]) for step in steps]
    assert all(step.returncode == 0 for step in steps)
    assert sorted(map(len, results)) == [0, 1]  # one decided, the other found nothing left to decide
    promotions = [(u.version, u.state) for u in canary.announcements() if u.version == "v0002"]
    assert promotions == [("v0002", "canary"), ("v0002", "current")]
