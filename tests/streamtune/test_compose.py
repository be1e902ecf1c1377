"""docker-compose.yml cannot run here (no Docker engine); check that it parses and matches the defaults, and that
Docker Compose itself (built by `make compose`, pinned in the Makefile) accepts it and resolves it as promised."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamtune.cli.main import build_parser
from streamtune.settings import Settings, load_settings
from streamtune.stack.flink_cluster import prometheus_reporter
from streamtune.stack.weaviate import Weaviate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture
def defaults(clean_env: None) -> Settings:
    return load_settings(config_files=[])


def _host_ports(service: dict) -> set[int]:  # type: ignore[type-arg]
    return {int(p.split(":")[-2]) for p in service.get("ports", [])}


def test_every_role_has_a_service(compose: dict) -> None:  # type: ignore[type-arg]
    assert {"kafka", "weaviate", "jobmanager", "taskmanager", "streams", "trainer", "inference"} <= set(
        compose["services"]
    )
    for service in compose["services"].values():
        if "dockerfile" in service.get("build", {}):
            assert (ROOT / service["build"]["dockerfile"]).is_file()


def test_versions_match_the_local_stack(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    services = compose["services"]
    assert services["kafka"]["image"].endswith(f":{defaults.stack.kafka_version}")
    assert services["weaviate"]["image"].endswith(f":{defaults.stack.weaviate_version.lstrip('v')}")
    flink_docker = (ROOT / "docker" / "flink.Dockerfile").read_text()
    assert f"CONNECTOR_VERSION={defaults.flink.connector_version}" in flink_docker
    assert f"flink-sql-connector-kafka-{defaults.flink.connector_version}.jar" in flink_docker
    lock = (ROOT / "requirements" / "flink.lock").read_text()
    assert re.search(r"^apache-flink==2\.2\.1$", lock, re.M)


def test_host_ports_match_default_settings(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    kafka_port = int(defaults.kafka.bootstrap_servers.rsplit(":", 1)[1])
    assert kafka_port in _host_ports(compose["services"]["kafka"])
    assert _host_ports(compose["services"]["weaviate"]) == {defaults.weaviate.http_port, defaults.weaviate.grpc_port}
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} would listen on every interface"


def test_weaviate_settings_match_the_local_stack(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    _, local_env = Weaviate(defaults).command()
    compose_env = compose["services"]["weaviate"]["environment"]
    for key in (
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED",
        "DEFAULT_VECTORIZER_MODULE",
        "ENABLE_MODULES",
        "API_BASED_MODULES_DISABLED",
        "RAFT_BOOTSTRAP_EXPECT",
        "GRPC_PORT",
        "DISABLE_TELEMETRY",
        "PROMETHEUS_MONITORING_ENABLED",
        "PROMETHEUS_MONITORING_PORT",
    ):
        assert compose_env[key] == local_env[key], key


def test_streamtune_services_reach_kafka_and_weaviate_inside_compose(compose: dict) -> None:  # type: ignore[type-arg]
    kafka_env = compose["services"]["kafka"]["environment"]
    internal = next(
        listener.split("//")[1]
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        if not listener.split("//")[1].startswith("127.0.0.1")
    )
    for name in ("streams", "trainer", "inference", "topics"):
        env = compose["services"][name]["environment"]
        assert env["STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS"] == internal
        assert env["STREAMTUNE__WEAVIATE__HOST"] == "weaviate"


def test_compose_environment_loads_as_settings(
    compose: dict, defaults: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[type-arg]
    for key, value in compose["services"]["inference"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings(config_files=[])
    assert settings.weaviate.host == "weaviate"
    assert str(settings.cache_dir) == "/cache"


def test_every_flink_process_shares_the_checkpoint_directory(compose: dict) -> None:  # type: ignore[type-arg]
    uri = compose["x-streamtune-env"]["STREAMTUNE__STREAMS__CHECKPOINT_DIR"]
    assert uri.startswith("file:///")
    mount = uri.removeprefix("file://")
    for name in ("jobmanager", "taskmanager", "streams"):
        service = compose["services"][name]
        assert service["environment"]["STREAMTUNE__STREAMS__CHECKPOINT_DIR"] == uri
        assert any(v.split(":")[1] == mount for v in service["volumes"]), name


def test_every_long_running_service_restarts_and_has_a_health_check(compose: dict) -> None:  # type: ignore[type-arg]
    one_shot = {"topics", "s3-bucket"}
    for name, service in compose["services"].items():
        if name in one_shot:
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert "healthcheck" in service and service["healthcheck"]["test"], name


def test_adapters_are_shared_through_the_s3_server_by_two_trainer_workers(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    """Issue 26: the adapter store is the S3 service (no shared volume), its bucket is made before any service that
    reads or writes adapters starts, the watcher distributes the refreshes, and two workers take them."""
    env = compose["x-streamtune-env"]
    assert env["STREAMTUNE__TRAINING__ADAPTERS_DIR"] == "s3://streamtune-adapters/"
    assert env["STREAMTUNE__S3__ENDPOINT_URL"] == "http://s3:8333"
    assert "adapters" not in compose["volumes"]
    services = compose["services"]
    for name in ("trainer", "trainer-worker", "inference"):
        assert not any("/adapters" in v for v in services[name].get("volumes", [])), name
        assert services[name]["depends_on"]["s3-bucket"] == {"condition": "service_completed_successfully"}, name
    assert services["trainer"]["environment"]["STREAMTUNE__TRAINING__DISTRIBUTE"] == "kafka"
    assert services["trainer-worker"]["deploy"]["replicas"] == 2
    assert "streamtune-adapters" in " ".join(services["s3-bucket"]["command"])
    identity = json.loads((ROOT / "docker" / "seaweedfs" / "s3.json").read_text())["identities"][0]["credentials"][0]
    # the credentials every service uses unless told otherwise
    assert (identity["accessKey"], identity["secretKey"]) == (defaults.s3.key_id(), defaults.s3.secret())


def test_health_checks_use_the_configured_metrics_ports(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    serve_check = " ".join(compose["services"]["inference"]["healthcheck"]["test"])
    assert f":{defaults.inference.metrics_port}/metrics" in serve_check


# -- Docker Compose itself (`make compose`; no engine here, so the file is resolved, never run) ----------------------
@pytest.fixture(scope="module")
def docker_compose(settings: Settings) -> list[str]:
    """The pinned Docker Compose, run on docker-compose.yml alone: no COMPOSE_* or interpolated variable of the
    caller's shell, so what is checked is what a user gets with the defaults."""
    version = re.search(r"^COMPOSE_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert version, "the Makefile pins no COMPOSE_VERSION"
    binary = settings.cache_dir / "compose" / version[1] / "bin" / "docker-compose"
    assert os.access(binary, os.X_OK), f"{binary} is missing: run `make compose` (`make test` builds it too)"
    reported = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert reported.strip() == version[1].lstrip("v"), f"{binary} reports {reported.strip()}, not {version[1]}"
    return [str(binary), "--project-directory", str(ROOT), "--file", str(ROOT / "docker-compose.yml")]


def _run_compose(command: list[str], *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, f"docker compose {' '.join(args)}: {done.stderr}"
    # warnings (an unset variable, an obsolete key) are findings too
    assert not done.stderr.strip(), f"docker compose {' '.join(args)} warns: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def resolved(docker_compose: list[str]) -> dict[str, Any]:
    """`docker compose --profile gateway config --format json`: every service, as Compose resolves it."""
    output = _run_compose(docker_compose, "--profile", "gateway", "config", "--format", "json")
    config: dict[str, Any] = json.loads(output)
    return config


@pytest.mark.parametrize("profiles", [(), ("--profile", "gateway")], ids=["default", "gateway"])
def test_docker_compose_accepts_the_file(docker_compose: list[str], profiles: tuple[str, ...]) -> None:
    _run_compose(docker_compose, *profiles, "config", "-q")


def test_the_gateway_runs_only_with_its_profile(docker_compose: list[str]) -> None:
    default = set(_run_compose(docker_compose, "config", "--services").split())
    with_gateway = set(_run_compose(docker_compose, "--profile", "gateway", "config", "--services").split())
    assert "gateway" not in default
    assert with_gateway == default | {"gateway"}


def _long_running_commands() -> set[tuple[str, ...]]:
    """The CLI's services, as its parser declares them (``set_defaults(service=True)``, see cli/main.py)."""
    found: set[tuple[str, ...]] = set()
    for name, group in _subcommands(build_parser()).items():
        if group.get_default("service"):
            found.add((name,))
        found |= {(name, action) for action, sub in _subcommands(group).items() if sub.get_default("service")}
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to walk a parser's subcommands
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


# In compose the ingest job is submitted to the Flink cluster and stays attached (`flink run --python
# streams/job.py`): what `streams run` does in a local MiniCluster.
_SAME_PROGRAM = {("streams", "run"): "streams/job.py"}
# What each long-running command reads or writes, and where it says so.
_NEEDS = {
    ("serve",): {"kafka", "weaviate"},  # queries → retrieval → answers
    ("http",): {"kafka", "weaviate"},  # queries/answers; search (inference/http/search.py)
    ("train", "watch"): {"kafka", "weaviate"},  # examples; the index check (cli/train.py index_check)
    ("train", "worker"): {"kafka", "weaviate"},  # refresh requests; the index check of each refresh
    ("monitor",): {"kafka", "weaviate"},  # service topics; freshness lookups (monitor/app.py)
    ("streams", "run"): {"kafka", "weaviate"},  # domain-events → chunks
}


def _runs(service: dict[str, Any]) -> tuple[str, ...] | None:
    """The long-running CLI command a resolved service runs, if any."""
    command = service.get("command") or []
    if command[:1] == ["streamtune"]:
        args = build_parser().parse_args(command[1:])
        if args.command == "train" and args.watch:
            return ("train", "watch")  # the documented alias, `train --watch`
        return tuple(part for part in (args.command, getattr(args, "action", None)) if part)
    return next((cli for cli, program in _SAME_PROGRAM.items() if program in " ".join(command)), None)


def test_every_long_running_command_has_a_service(resolved: dict[str, Any]) -> None:
    commands = _long_running_commands()
    assert commands == set(_NEEDS), "a new long-running command: say what it needs in _NEEDS, give it a service"
    served = {_runs(service) for service in resolved["services"].values()}
    assert not commands - served, f"long-running commands with no compose service: {sorted(commands - served)}"


def _waits_healthy(services: dict[str, Any], name: str, target: str) -> bool:
    """Whether `name` starts only after `target` is healthy: directly, or after a one-shot job or service that
    itself waited for it (topics waits on Kafka's health check, then exits 0)."""
    for dependency, how in services[name].get("depends_on", {}).items():
        if dependency == target and how["condition"] == "service_healthy":
            return True
        if how["condition"] in ("service_healthy", "service_completed_successfully") and _waits_healthy(
            services, dependency, target
        ):
            return True
    return False


def test_every_service_waits_for_the_health_of_what_it_needs(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for needed in ("kafka", "weaviate"):
        assert services[needed]["healthcheck"]["test"], needed
    missing = [
        f"{name} needs {needed}"
        for name, service in services.items()
        if (cli := _runs(service)) in _NEEDS
        for needed in sorted(_NEEDS[cli])
        if not _waits_healthy(services, name, needed)
    ]
    assert not missing, f"services that can start before what they need is healthy: {missing}"
    assert _waits_healthy(services, "topics", "kafka")


def test_published_ports_bind_loopback(resolved: dict[str, Any]) -> None:
    # Every host port is 127.0.0.1 with the defaults; opening one wider would be a setting the file documents
    # (a `${VAR:-127.0.0.1}` host address), and its default must still resolve to loopback.
    published = [(name, port) for name, service in resolved["services"].items() for port in service.get("ports", [])]
    assert published
    wide = [f"{name}: {port['published']}" for name, port in published if port.get("host_ip") != "127.0.0.1"]
    assert not wide, f"published on every interface: {wide}"


# -- Prometheus and Grafana ------------------------------------------------------------------------------------
PROMETHEUS = ROOT / "docker" / "prometheus"
GRAFANA = ROOT / "docker" / "grafana"
# PromQL words that are not metric names: functions are told apart by their "(", these by name.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
    "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels, durations or strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_promql_metric_names_skip_functions_labels_and_durations() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, stage) (rate(a_bucket{x="y(z)"}[5m]))) / on (tenant) b > bool 1'
    assert promql_metric_names(expr) == {"a_bucket", "b"}


def _registry_names(registry: Any) -> set[str]:
    """Every series name a prometheus-client registry can expose, whether or not a labelled child exists yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


@pytest.fixture(scope="module")
def existing_metrics() -> dict[str, set[str]]:
    """The names each source serves: our registries, instantiated; Flink's and Weaviate's from the list that
    tests/streams/test_metrics.py and tests/retrieval/test_weaviate_metrics.py check against live endpoints."""
    from inference.http.metrics import GatewayMetrics
    from inference.metrics import ServeMetrics
    from inference.question_drift import QuestionDrift
    from monitor.metrics import NAMES, MonitorMetrics
    from training.metrics import WatchMetrics

    monitor = _registry_names(MonitorMetrics().registry)
    # the monitor's own declared list: every family it names is on its registry
    assert all(any(n == name or n.startswith(name + "_") for n in monitor) for name in NAMES)
    external = yaml.safe_load((PROMETHEUS / "external-metrics.yml").read_text())
    serve = ServeMetrics().registry
    QuestionDrift(Settings(), serve, embed=lambda texts: [])  # serve's drift series join its registry (Answerer)
    return {
        "serve": _registry_names(serve),
        "gateway": _registry_names(GatewayMetrics().registry),
        "trainer": _registry_names(WatchMetrics().registry),
        "monitor": monitor,
        "flink": set(external["flink"]),
        "weaviate": set(external["weaviate"]),
    }


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "streamtune.json").read_text())


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def test_every_dashboard_query_names_only_metrics_that_exist(
    dashboard: dict[str, Any], existing_metrics: dict[str, set[str]]
) -> None:
    known = set().union(*existing_metrics.values())
    expressions = _expressions(dashboard)
    assert len(expressions) >= 20
    unknown = {
        f"{title}: {name}" for title, expr in expressions for name in promql_metric_names(expr) if name not in known
    }
    assert not unknown, f"dashboard queries name series nothing serves: {sorted(unknown)}"
    # every source has a place on the dashboard
    named = {name for _, expr in expressions for name in promql_metric_names(expr)}
    assert {source for source, names in existing_metrics.items() if names & named} == set(existing_metrics)


def test_the_dashboard_covers_the_operational_questions(dashboard: dict[str, Any]) -> None:
    named = {name for _, expr in _expressions(dashboard) for name in promql_metric_names(expr)}
    for needed in (
        "streamtune_monitor_freshness_p99_seconds",
        "streamtune_answer_stage_seconds_bucket",
        "streamtune_answers_total",
        "streamtune_monitor_errors_total",
        "flink_taskmanager_job_task_operator_dead_letter_class_dead_letters",
        "streamtune_monitor_dlq_total",
        "streamtune_refreshes_total",
        "streamtune_refresh_seconds_bucket",
        "streamtune_gate_score",
        "streamtune_adapters_loaded",
        "streamtune_adapter_evictions_total",
        "streamtune_adapter_serving",
        "streamtune_pending_examples",
        "streamtune_knowledge_gap_ratio",
        "streamtune_question_drift_p_value",
        "streamtune_monitor_live_negative_share",
    ):
        assert needed in named, needed


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(compose: dict, dashboard: dict[str, Any]) -> None:  # type: ignore[type-arg]
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus"
    prometheus_port = int(compose["services"]["prometheus"]["ports"][0].split(":")[-1])
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    uids = {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel.get("targets", [])} | {
        panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel
    }
    assert uids == {source["uid"]}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streamtune.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./docker/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    prometheus_mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    assert prometheus_mounts["./docker/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def _scrape_targets() -> list[tuple[str, str, int]]:
    """(job, compose service, port) of every target in prometheus.yml, static or by DNS."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.append((job["job_name"], host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets += [(job["job_name"], name, int(dns["port"])) for name in dns["names"]]
    return targets


def _metrics_ports(service: dict[str, Any]) -> set[int]:
    """The /metrics ports a compose service declares: in its health check, Weaviate's exporter variable, or
    Flink's reporter option."""
    text = json.dumps(service.get("healthcheck", {})) + json.dumps(service.get("command", ""))
    ports = {int(p) for p in re.findall(r":(\d+)/metrics", text)}
    ports |= {int(p) for p in re.findall(r"metrics\.reporter\.prom\.port=(\d+)", text)}
    if "PROMETHEUS_MONITORING_PORT" in service.get("environment", {}):
        ports.add(int(service["environment"]["PROMETHEUS_MONITORING_PORT"]))
    return ports


def test_every_scrape_target_is_a_compose_service_serving_that_port(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    targets = _scrape_targets()
    services = compose["services"]
    for job, host, port in targets:
        assert host in services, f"{job}: no compose service {host!r}"
        assert port in _metrics_ports(services[host]), f"{job}: {host} serves no /metrics on {port}"
    expected = {
        ("inference", defaults.inference.metrics_port),
        ("gateway", defaults.http.metrics_port),
        ("trainer", defaults.training.metrics_port),
        ("trainer-worker", defaults.training.worker_metrics_port),
        ("monitor", defaults.monitor.port),
        ("jobmanager", defaults.flink.cluster_metrics_port),
        ("taskmanager", defaults.flink.cluster_metrics_port + 1),
        ("weaviate", defaults.stack.weaviate_metrics_port),
    }
    assert {(host, port) for _, host, port in targets} == expected
    assert services["prometheus"]["ports"] and services["grafana"]["ports"]


def test_flink_processes_enable_the_reporter_as_the_local_stack_does(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    for name, port in (
        ("jobmanager", defaults.flink.cluster_metrics_port),
        ("taskmanager", defaults.flink.cluster_metrics_port + 1),
    ):
        command = " ".join(compose["services"][name]["command"])
        for key, value in prometheus_reporter(port).items():
            assert f"-D {key}={value}" in command, (name, key)
        assert "FLINK_PROPERTIES" not in compose["services"][name]["environment"]  # no script of ours reads it


# -- Alerts (docker/prometheus/alerts.yml; promtool tests them in tests/monitor/test_alert_rules.py) ---------------


def test_prometheus_loads_the_rules_and_alertmanager_is_a_service(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    config_dir = Path(mounts["./docker/prometheus/prometheus.yml"]).parent
    for rule_file in config["rule_files"]:
        assert mounts[f"./docker/prometheus/{rule_file}"] == str(config_dir / rule_file), rule_file
        assert (PROMETHEUS / rule_file).is_file()
    alertmanager = compose["services"]["alertmanager"]
    (manager,) = config["alerting"]["alertmanagers"]
    for target in manager["static_configs"][0]["targets"]:
        host, _, port = target.rpartition(":")
        assert host == "alertmanager"
        assert any(p.endswith(f":{port}") for p in alertmanager["ports"]), target
        assert f":{port}/-/ready" in " ".join(alertmanager["healthcheck"]["test"])
    am_mounts = dict(v.split(":")[:2] for v in alertmanager["volumes"])
    assert am_mounts["./docker/alertmanager/alertmanager.yml"] == "/etc/alertmanager/alertmanager.yml"
    # its host port is nothing else's, the local stack's KRaft controller port included
    assert defaults.stack.kafka_controller_port not in _host_ports(alertmanager)


def test_no_two_services_share_a_host_port(compose: dict) -> None:  # type: ignore[type-arg]
    seen: dict[int, str] = {}
    for name, service in compose["services"].items():
        for port in _host_ports(service):
            assert port not in seen, f"{name} and {seen[port]} both bind host port {port}"
            seen[port] = name


def test_every_alert_rule_names_only_metrics_that_exist(existing_metrics: dict[str, set[str]]) -> None:
    known = set().union(*existing_metrics.values()) | {"up"}  # up: Prometheus's own, per scrape target
    (group,) = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    unknown = {
        f"{rule['alert']}: {name}"
        for rule in group["rules"]
        for name in promql_metric_names(rule["expr"])
        if name not in known
    }
    assert not unknown, f"alert rules watch series nothing serves: {sorted(unknown)}"
