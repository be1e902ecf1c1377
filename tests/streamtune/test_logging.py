"""Structured logs: services write JSON lines carrying their context, librdkafka speaks through our logger,
secrets never reach a log line, and the CLI keeps third-party noise to itself unless asked with -v."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from streamtune import logs
from streamtune.cli import build_parser
from streamtune.cli.main import _configure_logging
from streamtune.harness import ServiceProcess, free_port, isolated_env, wait_for
from streamtune.settings import KafkaSettings, LoggingSettings, Settings, load_settings

_TOUCHED = (*logs.OURS, logs.KAFKA_LOGGER, "py.warnings", "transformers")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``configure`` changes the process's logging; put it back for the tests that follow."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in _TOUCHED}
    root_level = root.level
    with warnings.catch_warnings():
        yield
    for handler in [h for h in root.handlers if h.get_name() == "streamtune"]:
        root.removeHandler(handler)
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as JSON (fails the test on the first line that is not)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.usefixtures("restore_logging")
def test_service_lines_are_json_with_time_level_component_and_context(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(LoggingSettings(), service=True)
    log = logging.getLogger("inference.service")
    with logs.context(tenant="acme", query_id="q-1", source=logs.source("queries", 2, 41)):
        log.info("serve: answered %s", "q-1")
        with logs.context(event_id="e-7"):
            log.warning("nested")
    log.info("outside", extra={"tenant": "other"})
    lines = _json_lines(capsys.readouterr().err)
    assert [line["message"] for line in lines] == ["serve: answered q-1", "nested", "outside"]
    first, nested, outside = lines
    assert list(first)[:4] == ["time", "level", "component", "message"]
    assert first["level"] == "INFO" and first["component"] == "inference.service"
    assert first["time"].endswith("+00:00")
    assert (first["tenant"], first["query_id"], first["source"]) == ("acme", "q-1", "queries[2]@41")
    assert "event_id" not in first
    assert (nested["level"], nested["event_id"], nested["tenant"]) == ("WARNING", "e-7", "acme")
    assert outside["tenant"] == "other" and "query_id" not in outside and "source" not in outside


@pytest.mark.usefixtures("restore_logging")
def test_settings_and_secrets_never_reach_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(LoggingSettings(format="json"), service=False)
    kafka = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="svc", sasl_password=SecretStr("hunter2")
    )
    logging.getLogger("streamtune.test").info(
        "connecting",
        extra={"kafka": kafka, "token": SecretStr("tok-secret"), "config": {"sasl.password": "pw-in-dict"}},
    )
    err = capsys.readouterr().err
    (line,) = _json_lines(err)
    assert line["kafka"]["sasl_username"] == "svc" and line["kafka"]["sasl_password"] == "**********"
    assert line["config"]["sasl.password"] == "**********"
    for secret in ("hunter2", "tok-secret", "pw-in-dict"):
        assert secret not in err


@pytest.mark.usefixtures("restore_logging")
def test_one_shot_commands_log_plain_lines_with_their_context(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(LoggingSettings(), service=False)
    with logs.context(tenant="acme"):
        logging.getLogger("training.refresh").info("refreshing")
    err = capsys.readouterr().err.strip()
    assert not err.startswith("{")
    assert err.endswith("INFO training.refresh: refreshing [tenant=acme]")


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("argv", "service"),
    [
        (["serve"], True),
        (["http"], True),
        (["http", "hash-key", "k"], False),
        (["train", "watch"], True),
        (["train", "--watch"], True),
        (["train", "run"], False),
        (["streams", "run"], True),
        (["search", "refund"], False),
        (["-v", "serve"], True),
    ],
)
def test_the_cli_logs_json_for_services_and_plain_lines_for_one_shot_commands(
    argv: list[str], service: bool, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    args = build_parser().parse_args(argv)
    settings = _configure_logging(load_settings(config_files=[]), args)
    assert settings.logging.verbose == args.verbose
    logging.getLogger("streamtune.cli").info("hello")
    err = capsys.readouterr().err.strip()
    if service:
        assert _json_lines(err)[0]["message"] == "hello"
    else:
        assert err.endswith("INFO streamtune.cli: hello")


@pytest.mark.usefixtures("restore_logging")
def test_the_format_setting_overrides_auto(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(LoggingSettings(format="plain"), service=True)
    logging.getLogger("streamtune").info("plain service")
    logs.configure(LoggingSettings(format="json"), service=False)
    logging.getLogger("streamtune").info("json command")
    plain, as_json = capsys.readouterr().err.strip().splitlines()
    assert plain.endswith("INFO streamtune: plain service")
    assert json.loads(as_json)["message"] == "json command"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("verbose", [0, 1])
def test_library_warnings_and_chatter_show_only_with_verbose(verbose: int, capsys: pytest.CaptureFixture[str]) -> None:
    import pydantic

    logs.configure(LoggingSettings(verbose=verbose), service=True)
    ours, theirs = logs.__file__, pydantic.__file__
    warnings.warn_explicit("torch kernel fallback", UserWarning, theirs, 1, module="torch.nn.ops")
    # a library's deprecation is usually attributed to our call site: still the library's noise
    warnings.warn_explicit("old argument", FutureWarning, ours, 1, module="streamtune.logs")
    warnings.warn_explicit("our own", UserWarning, ours, 1, module="streamtune.logs")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("kernels not installed")
    logging.getLogger("inference.engine").info("ours")
    messages = " | ".join(line["message"] for line in _json_lines(capsys.readouterr().err))
    assert "our own" in messages and "ours" in messages  # ours always
    for chatter in ("torch kernel fallback", "old argument", "kernels not installed"):
        assert (chatter in messages) == bool(verbose), messages


@pytest.mark.usefixtures("restore_logging")
def test_librdkafka_messages_arrive_as_json_lines_of_our_logger(capsys: pytest.CaptureFixture[str]) -> None:
    """A real client built by streamtune.kafka, pointed at a port nobody listens on, logs its refused
    connections through the ``librdkafka`` logger, served by poll()."""
    from streamtune.kafka import producer

    logs.configure(LoggingSettings(), service=True)
    client = producer(KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    seen: list[dict[str, Any]] = []

    def librdkafka_lines() -> list[dict[str, Any]]:
        client.poll(0.2)
        seen.extend(_json_lines(capsys.readouterr().err))
        return [line for line in seen if line["component"] == logs.KAFKA_LOGGER]

    lines = wait_for(librdkafka_lines, 30, "a librdkafka log line")
    assert lines[0]["level"] in ("ERROR", "WARNING", "CRITICAL")
    assert "rdkafka#producer" in lines[0]["message"]


def test_a_service_process_writes_only_json_lines_librdkafka_included(tmp_path: Path) -> None:
    """`streamtune train watch` with Kafka unreachable: every line it writes parses as JSON, and librdkafka's
    refused connections are among them (none printed raw by librdkafka itself)."""
    env = isolated_env(
        tmp_path,
        "logs",
        STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        STREAMTUNE__KAFKA__REQUEST_TIMEOUT_S="2",
    )
    watch = ServiceProcess(["train", "watch"], b'"component": "librdkafka"', tmp_path / "logs", env)
    try:
        watch.start(timeout_s=180)
    finally:
        watch.stop()
    lines = _json_lines(watch.output())
    components = {line["component"] for line in lines}
    assert {"training.watch", logs.KAFKA_LOGGER} <= components
    assert all({"time", "level", "component", "message"} <= set(line) for line in lines)


def _search(stack: Settings, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {
        **isolated_env(tmp_path, "quiet"),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "streamtune", *flags, "search", "refund", "--tenant", f"t{uuid.uuid4().hex[:8]}"],
        cwd=tmp_path,  # no config/*.toml of the developer's
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.integration
def test_a_first_search_prints_no_progress_bars_or_library_warnings_unless_verbose(
    stack: Settings, tmp_path: Path
) -> None:
    quiet = _search(stack, tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "no chunks for tenant" in quiet.stdout
    assert quiet.stderr == "", quiet.stderr[-3000:]
    verbose = _search(stack, tmp_path, "-v")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "%|" in verbose.stderr  # the weight-loading progress bar, shown when asked for
    assert " INFO " in verbose.stderr  # and the libraries' own log lines


class _Record:
    """A consumed query record as confluent-kafka's Message presents it (the subject is our logging)."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def topic(self) -> str:
        return "queries"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self._offset


class _Scheduler:
    def admit(self, queries: list[Any], arrived: list[float]) -> list[Any]:
        from streamtune.contracts import Answer

        return [Answer(query_id=q.query_id, tenant=q.tenant, answer="ok", adapter_version="v0001") for q in queries]


@pytest.mark.usefixtures("restore_logging")
def test_serve_logs_each_query_with_its_tenant_id_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    from inference.service import _admit, _Offsets
    from streamtune.contracts import Query
    from streamtune.topics import QUERIES

    logs.configure(LoggingSettings(verbose=2), service=True)  # -vv: the per-query debug lines
    good = QUERIES.encode(Query(query_id="q-good", tenant="acme", question="Where do orders ship from?"))
    offsets = _Offsets()
    answers = _admit(_Scheduler(), [_Record(b'{"query_id": "q-bad"}', 7), _Record(good, 8)], offsets, 65_536)
    assert [a.query_id for a in answers] == ["q-bad", "q-good"]
    bad, answered = (line for line in _json_lines(capsys.readouterr().err) if line["component"] == "inference.service")
    assert (bad["level"], bad["query_id"], bad["source"]) == ("WARNING", "q-bad", "queries[1]@7")
    assert (answered["tenant"], answered["query_id"], answered["source"]) == ("acme", "q-good", "queries[1]@8")
    assert offsets.committable() == {("queries", 1): 7}  # neither answer is delivered yet: nothing moves past them
