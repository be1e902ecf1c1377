"""docker-compose.yml cannot run here (no Docker engine); check that it parses and matches the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from streamtune.settings import Settings, load_settings
from streamtune.stack.components import Weaviate

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
        if "build" in service:
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
    one_shot = {"topics"}
    for name, service in compose["services"].items():
        if name in one_shot:
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert "healthcheck" in service and service["healthcheck"]["test"], name


def test_health_checks_use_the_configured_metrics_ports(compose: dict, defaults: Settings) -> None:  # type: ignore[type-arg]
    serve_check = " ".join(compose["services"]["inference"]["healthcheck"]["test"])
    assert f":{defaults.inference.metrics_port}/metrics" in serve_check
