"""``streamtune serve``: the query consumer; start several to share the load."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    commands.add_parser("serve", help="answer queries from the queries topic").set_defaults(func=serve, service=True)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from inference.service import serve as run_server

    return run_server(settings)
