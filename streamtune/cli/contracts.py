"""``streamtune contracts schemas --out DIR [--check]``: each topic's JSON Schema, generated from the contract's
pydantic models; ``--check`` writes nothing and exits 1 when DIR's files are out of date or when the models
would break a ``schema_version`` they describe (``streamtune/schemas.py``). Without ``--check`` a breaking
change is refused too (nothing written) unless ``--allow-breaking``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    actions = commands.add_parser("contracts", help="the wire contract: JSON Schema per topic").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    schemas_ = actions.add_parser("schemas", help="write each topic's JSON Schema (or --check the written ones)")
    schemas_.add_argument("--out", type=Path, default=Path("docs/schemas"), help="folder (default: docs/schemas)")
    schemas_.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files are stale or a change breaks them"
    )
    schemas_.add_argument(
        "--allow-breaking", action="store_true", help="write even when a change breaks the files' schema_version"
    )
    schemas_.set_defaults(func=schemas)


def schemas(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.schemas import compare, write_schemas

    if args.check:
        drift = compare(args.out)
        print(drift.describe(args.out))
        return 0 if drift.clean else 1
    drift = compare(args.out)
    if drift.breaking and not args.allow_breaking:
        # The checked-in files are what external producers validate against: never overwritten silently.
        print(drift.describe(args.out))
        print("Nothing written (--allow-breaking writes them all the same, for a deliberate break).")
        return 1
    for path in write_schemas(args.out):
        print(path)
    return 0
