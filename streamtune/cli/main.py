"""``streamtune``: settings are loaded once here, logging is configured once here, and errors become exit codes.

Exit codes: 0 success; 1 a domain error (or a result that says no, such as a replay that differs);
2 a usage error (argparse); 69 a dependency is unavailable (Kafka, Weaviate; ``EX_UNAVAILABLE``);
78 a setting that cannot work (``EX_CONFIG``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from streamtune.cli import adapters, ask, config, demo, dlq, http, search, serve, stack, streams, topics, train
from streamtune.errors import ConfigError, StreamtuneError, UnavailableError
from streamtune.settings import load_settings

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_UNAVAILABLE", "EXIT_USAGE", "build_parser", "main", "run"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78

_GROUPS = (stack, topics, config, streams, dlq, search, train, adapters, serve, ask, demo, http)


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


_OURS = ("streamtune", "streams", "retrieval", "training", "inference")


def _configure_logging(verbose: int) -> None:
    """Services log through module loggers; this is the one place they are given a handler.

    Our packages log at INFO (DEBUG with -vv); third-party libraries only their warnings (INFO with -v).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in _OURS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = load_settings(args.config)
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
