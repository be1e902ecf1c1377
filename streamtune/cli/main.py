"""``streamtune``: settings are loaded once here, logging is configured once here, and errors become exit codes.

Exit codes: 0 success; 1 a domain error (or a result that says no, such as a replay that differs);
2 a usage error (argparse); 69 a dependency is unavailable (Kafka, Weaviate; ``EX_UNAVAILABLE``: one line naming
it, its address and the fix, also for a client error that escaped unwrapped; ``-v`` shows that one's traceback);
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
    settings: Settings | None = None
    try:
        settings = _configure_logging(load_settings(args.config), args)
        code: int = args.func(settings, args)
        return code
    except ConfigError as exc:
        print(f"streamtune: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UnavailableError as exc:
        print(f"streamtune: unavailable: {_unavailable(exc, exc.component, settings)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except StreamtuneError as exc:
        print(f"streamtune: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        # A client error that escaped unwrapped (a bug where it enters: it should be wrapped there) still ends a
        # command in the one line an outage gets; -v shows its traceback.
        component = _client_of(exc)
        if component is None or args.verbose:
            raise
        print(f"streamtune: unavailable: {_unavailable(exc, component, settings)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


_CLIENTS = {"cimpl": "kafka", "confluent_kafka": "kafka", "weaviate": "weaviate", "grpc": "weaviate"}


def _client_of(exc: BaseException) -> str | None:
    """``kafka`` or ``weaviate`` for an exception raised by that dependency's client library, else None."""
    return _CLIENTS.get(type(exc).__module__.split(".")[0])


def _unavailable(exc: BaseException, component: str | None, settings: Settings | None) -> str:
    """One line: the message, and for Kafka or Weaviate its address and the fix."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if settings is None or component not in ("kafka", "weaviate"):
        return message
    if component == "kafka":
        name, address, setting = "Kafka", settings.kafka.bootstrap_servers, "kafka.bootstrap_servers"
    else:
        w = settings.weaviate
        name, address, setting = "Weaviate", f"{w.host}:{w.http_port} (gRPC {w.grpc_port})", "the [weaviate] ports"
    fix = "" if "stack up" in message else f" Start it with `make stack-up` or point {setting} at a running one."
    return f"{name} at {address} is unreachable ({message.rstrip('.')}).{fix}"


def run() -> None:
    sys.exit(main())
