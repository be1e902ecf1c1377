"""``streamtune stack up|down|status|logs``: the local Kafka / Weaviate / Flink stack."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamtune.settings import Settings

if TYPE_CHECKING:
    from streamtune.stack import ComponentStatus


def register(commands: Any) -> None:
    actions = commands.add_parser("stack", help="the local Kafka / Weaviate / Flink stack").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    up = actions.add_parser("up", help="install what is missing and start everything")
    up.add_argument(
        "--flink-cluster", action="store_true", help="also start a standalone Flink session cluster (flink.cluster)"
    )
    up.set_defaults(func=up_)
    actions.add_parser("down", help="stop what `up` started").set_defaults(func=down)
    actions.add_parser("status", help="each component, its address and health").set_defaults(func=status)
    logs_ = actions.add_parser("logs", help="print a component's log")
    logs_.add_argument("component")
    logs_.add_argument("-n", "--lines", type=int, default=50)
    logs_.add_argument("-f", "--follow", action="store_true")
    logs_.set_defaults(func=logs)


def _with_cluster(settings: Settings, args: argparse.Namespace) -> Settings:
    if getattr(args, "flink_cluster", False) and not settings.flink.cluster:
        return settings.model_copy(update={"flink": settings.flink.model_copy(update={"cluster": True})})
    return settings


def up_(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack import Stack

    statuses = Stack(_with_cluster(settings, args)).up()
    _print_status(statuses)
    return 0 if all(s.ok for s in statuses) else 1


def down(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack import Stack

    Stack(settings).down()
    return 0


def status(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack import Stack

    statuses = Stack(settings).status()
    _print_status(statuses)
    return 0 if all(s.ok for s in statuses) else 1


def _print_status(statuses: Sequence[ComponentStatus]) -> None:
    for s in statuses:
        pid = f" pid={s.pid}" if s.pid else ""
        detail = f" ({s.detail})" if s.detail else ""
        print(f"{s.name:<20} {s.state:<14} {s.address}{pid}{detail}")


def logs(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack import Stack

    path = Stack(settings).log_file(args.component)
    if not path.exists():
        print(f"{args.component}: no log yet at {path}", file=sys.stderr)
        return 1
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines :]))
    if args.follow:
        with path.open(errors="replace") as handle:
            handle.seek(0, 2)
            while True:
                line = handle.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.5)
    return 0
