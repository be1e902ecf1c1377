"""``streamtune http``: the OpenAI-compatible gateway; ``streamtune http hash-key [KEY]``: a key's digest for
``http.api_keys`` (read from stdin without KEY, which keeps the key out of the shell history)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "http",
        help="OpenAI-compatible HTTP gateway: chat completions through queries → serve → answers",
        description="Without an action: run the gateway on http.host:http.port until SIGTERM / Ctrl-C.",
    )
    parser.set_defaults(func=serve, service=True)
    actions = parser.add_subparsers(dest="action", metavar="[action]")
    hash_ = actions.add_parser("hash-key", help="print the sha256 digest of an API key, to put in http.api_keys")
    hash_.add_argument("key", nargs="?", default=None, help="the key; omit it to read one line from stdin")
    hash_.set_defaults(func=hash_key, service=False)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from inference.http import main

    return main(settings)


def hash_key(settings: Settings, args: argparse.Namespace) -> int:
    from inference.http.auth import hash_key as digest

    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    if not key:
        print("streamtune: error: an empty key; pass KEY or one line on stdin", file=sys.stderr)
        return 2
    print(digest(key))
    return 0
