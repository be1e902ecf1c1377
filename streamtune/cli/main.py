"""``streamtune``: settings are loaded once here, logging is configured once here, and errors become exit codes.

Exit codes: 0 success; 1 a domain error (or a result that says no, such as a replay that differs);
2 a usage error (argparse); 69 a dependency is unavailable (Kafka, Weaviate; ``EX_UNAVAILABLE``);
78 a setting that cannot work (``EX_CONFIG``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from streamtune import logs
from streamtune.cli import (
    adapters,
    ask,
    config,
    contracts,
    demo,
    dlq,
    examples,
    http,
    monitor,
    search,
    serve,
    stack,
    streams,
    topics,
    train,
)
from streamtune.errors import ConfigError, StreamtuneError, UnavailableError
from streamtune.settings import Settings, load_settings

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_UNAVAILABLE", "EXIT_USAGE", "build_parser", "main", "run"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78

_GROUPS = (
    stack, topics, config, streams, dlq, search, train, adapters, examples, contracts, serve, ask, demo, http, monitor
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamtune", description="Keep a language model current with a live Kafka event stream."
    )
    parser.add_argument(
        "--config",
        action="append",
        type=Path,
        metavar="FILE",
        help="TOML settings file (repeatable); default: config/*.toml in the current directory",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for group in _GROUPS:
        group.register(commands)
    return parser


def _configure_logging(settings: Settings, args: argparse.Namespace) -> Settings:
    """The one place logging is configured; returns the settings with ``-v`` folded into ``logging.verbose``
    (the model loaders read it there to keep third-party progress bars and warnings quiet).

    A command is a long-running service when its parser says so (``set_defaults(service=True)``: ``serve``,
    ``http``, ``train watch``, ``streams run``) or it is ``train --watch``, the alias of ``train watch``;
    services log JSON lines (``logging.format`` auto), one-shot commands plain ones.
    """
    verbose = max(settings.logging.verbose, min(args.verbose, 2))
    settings = settings.model_copy(update={"logging": settings.logging.model_copy(update={"verbose": verbose})})
    service = bool(getattr(args, "service", False) or getattr(args, "watch", False))
    logs.configure(settings.logging, service=service)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _configure_logging(load_settings(args.config), args)
        code: int = args.func(settings, args)
        return code
    except ConfigError as exc:
        print(f"streamtune: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UnavailableError as exc:
        print(f"streamtune: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except StreamtuneError as exc:
        print(f"streamtune: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())
