"""The alert rules of docker/prometheus/alerts.yml load in promtool, pass their unit tests (each alert both fires and
stays quiet on synthetic series), and document themselves; Prometheus's and Alertmanager's configs are valid.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages, which `make env-monitor`
installs (`make promtool`); without them these tests fail rather than skip, since `make test` provides them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "docker" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
ALERTMANAGER = ROOT / "docker" / "alertmanager" / "alertmanager.yml"
SEVERITIES = {"warning", "critical"}
# Alerts on the scrape itself, not on a tenant's series: their summaries cannot name a tenant.
NOT_PER_TENANT = {"MonitorDown"}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run `make promtool` (installs Debian's {package}; `make test` does it too)"
    return path


def _succeeds(*command: str) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{' '.join(command)}` exited {done.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    assert group["name"] == "streamtune"
    return list(group["rules"])


@pytest.fixture(scope="module")
def rule_tests() -> dict[str, Any]:
    return dict(yaml.safe_load(RULE_TESTS.read_text()))


def test_the_rules_load_in_promtool(rules: list[dict[str, Any]]) -> None:
    output = _succeeds(_tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules)} rules found" in output, output


def test_every_rule_passes_its_unit_tests(rule_tests: dict[str, Any]) -> None:
    assert [(PROMETHEUS / f).resolve() for f in rule_tests["rule_files"]] == [RULES]
    output = _succeeds(_tool("promtool", "prometheus"), "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output, output


def test_prometheus_loads_the_rules_and_sends_to_alertmanager() -> None:
    # rule_files is relative to the config, so the checkout's layout is the container's (/etc/prometheus)
    config_file = PROMETHEUS / "prometheus.yml"
    output = _succeeds(_tool("promtool", "prometheus"), "check", "config", str(config_file))
    assert "1 rule files found" in output, output
    config = yaml.safe_load(config_file.read_text())
    assert [(PROMETHEUS / f).resolve() for f in config["rule_files"]] == [RULES]
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_the_alertmanager_config_is_valid() -> None:
    _succeeds(_tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER))
    route = yaml.safe_load(ALERTMANAGER.read_text())["route"]
    assert {"alertname", "tenant"} <= set(route["group_by"])  # one notification per alert and tenant


def test_every_rule_waits_has_a_severity_and_says_what_to_do(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:` (a single bad scrape would page)"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity not one of {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), f"{name}: summary and description"
        if name not in NOT_PER_TENANT:
            assert "{{ $labels.tenant }}" in annotations["summary"], f"{name}: the summary names no tenant"
        assert "What to do:" in annotations["description"], f"{name}: the description gives no runbook"


def test_every_alert_has_a_firing_and_a_quiet_case(rules: list[dict[str, Any]], rule_tests: dict[str, Any]) -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in rule_tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that alerts.yml does not define"


def test_every_alert_is_documented(rules: list[dict[str, Any]]) -> None:
    docs = (ROOT / "docs" / "alerts.md").read_text()
    missing = [rule["alert"] for rule in rules if f"`{rule['alert']}`" not in docs]
    assert not missing, f"docs/alerts.md does not describe {missing}"
