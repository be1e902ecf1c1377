"""``streamtune config show``: the effective settings as TOML (secrets masked)."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    actions = commands.add_parser("config", help="settings").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    actions.add_parser("show", help="print the effective settings as TOML").set_defaults(func=show)


def show(settings: Settings, args: argparse.Namespace) -> int:
    print(settings.dump_toml())
    return 0
