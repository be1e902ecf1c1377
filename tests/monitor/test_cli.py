"""`streamtune monitor` outside its environment says which environment it needs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamtune.cli.main import EXIT_CONFIG, main


def empty(folder: Path) -> Path:
    """A config file of no settings: the built-in defaults, never the developer's config/*.toml."""
    (folder / "empty.toml").write_text("")
    return folder / "empty.toml"


def test_without_faust_the_command_names_the_environment_and_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: None, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "faust", None)  # what the ML and Flink environments look like
    assert main(["--config", str(empty(tmp_path)), "monitor"]) == EXIT_CONFIG
    error = capsys.readouterr().err
    assert "make env-monitor" in error and "[monitor]" in error


def test_the_monitor_refuses_a_port_another_service_uses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: None, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMTUNE__MONITOR__PORT", "9310")  # serve's metrics port
    assert main(["--config", str(empty(tmp_path)), "monitor"]) == EXIT_CONFIG
    assert "monitor.port" in capsys.readouterr().err


def test_faust_connects_with_the_same_servers_and_credentials_as_every_client() -> None:
    from monitor.app import broker_options
    from streamtune.settings import load_settings

    plain = broker_options(load_settings(config_files=[], kafka={"bootstrap_servers": "k1:9092, k2:9093"}))
    assert plain == {"broker": ["kafka://k1:9092", "kafka://k2:9093"], "broker_credentials": None}
    sasl = broker_options(
        load_settings(
            config_files=[],
            kafka={
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "monitor",
                "sasl_password": "s3cret",
                "ssl_verify_hostname": False,
            },
        )
    )["broker_credentials"]
    assert (sasl.username, sasl.password, sasl.mechanism.value) == ("monitor", "s3cret", "SCRAM-SHA-512")
    assert sasl.ssl_context is not None and sasl.ssl_context.check_hostname is False
