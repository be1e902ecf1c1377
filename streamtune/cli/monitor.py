"""``streamtune monitor``: /metrics and a status page per tenant, read-only (run it from .venv/monitor)."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.errors import ConfigError
from streamtune.settings import Settings


def register(commands: Any) -> None:
    commands.add_parser(
        "monitor", help="serve /metrics and per-tenant status pages from the service topics (read-only)"
    ).set_defaults(func=monitor, service=True)


def monitor(settings: Settings, args: argparse.Namespace) -> int:
    try:
        import faust  # noqa: F401  (only to say which environment is missing it)
    except ImportError as exc:
        raise ConfigError(
            "environment",
            "faust-streaming missing",
            "run the monitor from its own environment: `make env-monitor`, then .venv/monitor/bin/streamtune "
            "monitor (the `monitor` extra: pip install -e '.[monitor]')",
        ) from exc
    from monitor.app import main as run_monitor

    return run_monitor(settings)
