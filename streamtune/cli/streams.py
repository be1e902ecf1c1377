"""``streamtune streams run``: the Flink ingest job (run it from the Flink environment)."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    actions = commands.add_parser("streams", help="the Flink ingest job").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    actions.add_parser("run", help="run the job (local MiniCluster) until stopped").set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from streams.job import main as job_main

    return job_main(settings)
