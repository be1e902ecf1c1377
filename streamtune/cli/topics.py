"""``streamtune topics create``: every declared topic with its settings."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    actions = commands.add_parser("topics", help="Kafka topics").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    actions.add_parser("create", help="create every declared topic (harmless to repeat)").set_defaults(func=create)


def create(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.kafka import create_topics

    for result in create_topics(settings.kafka, settings.topics):
        state = "created" if result.created else "exists"
        print(f"{result.name:<32} {state:<8} partitions={result.partitions}")
    return 0
