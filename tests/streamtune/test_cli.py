"""The command line: every group registers its commands, aliases keep working, errors map to exit codes."""

from __future__ import annotations

import pytest

from streamtune.cli import build_parser, main
from streamtune.cli.main import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_USAGE


def test_every_command_group_is_registered() -> None:
    parser = build_parser()
    groups = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(groups) == {
        "stack", "topics", "config", "streams", "dlq", "search", "train", "adapters", "serve", "ask", "demo",
        "http", "examples", "contracts", "monitor",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "func", "tenant"),
    [
        (["train"], "_run_or_watch", "default"),
        (["train", "--tenant", "acme"], "_run_or_watch", "acme"),
        (["train", "run", "--tenant", "acme"], "run", "acme"),
        (["train", "--tenant", "acme", "run"], "run", "acme"),
        (["train", "replay", "v0003", "--tenant", "acme"], "replay", "acme"),
        (["adapters", "show", "v0001", "--tenant", "acme"], "show", "acme"),
        (["adapters", "--tenant", "acme", "list"], "list_versions", "acme"),
    ],
)
def test_train_and_adapters_subcommands_and_aliases(argv: list[str], func: str, tenant: str) -> None:
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == func and args.tenant == tenant


def test_the_watch_alias_selects_watch() -> None:
    args = build_parser().parse_args(["train", "--watch"])
    assert args.watch and args.func.__name__ == "_run_or_watch"


def test_usage_config_and_unavailable_errors_have_their_own_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["train", "replay"])  # VERSION missing
    assert usage.value.code == EXIT_USAGE
    monkeypatch.setenv("STREAMTUNE__WEAVIATE__HTTP_PORT", "99999")
    assert main(["config", "show"]) == EXIT_CONFIG
    assert "weaviate.http_port" in capsys.readouterr().err
    monkeypatch.delenv("STREAMTUNE__WEAVIATE__HTTP_PORT")
    monkeypatch.setenv("STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("STREAMTUNE__KAFKA__REQUEST_TIMEOUT_S", "1")
    assert main(["topics", "create"]) == EXIT_UNAVAILABLE
