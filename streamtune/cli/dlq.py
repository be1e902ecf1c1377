"""``streamtune dlq show``: dead letters with their reasons and source offsets."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    actions = commands.add_parser("dlq", help="the dead-letter topic").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    show_ = actions.add_parser("show", help="list dead letters with their reasons")
    show_.add_argument("--limit", type=int, default=100)
    show_.add_argument("--width", type=int, default=120, help="bytes of each value to print")
    show_.set_defaults(func=show)


def show(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.dlq import read_dead_letters

    shown = 0
    for letter in read_dead_letters(settings):
        if shown >= args.limit:
            break
        value = (letter.value or b"")[: args.width]
        size = f" (truncated from {letter.original_size} bytes)" if letter.original_size is not None else ""
        print(f"{letter.source:<28} {letter.reason}\n{'':<28} key={letter.key!r} value={value!r}{size}")
        shown += 1
    print(f"{shown} dead letter(s)")
    return 0
