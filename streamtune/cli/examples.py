"""``streamtune examples import FILE --tenant T`` and ``streamtune examples export --tenant T [--version V]``:
OpenAI chat JSONL in (checked line by line, valid lines published as ``qa.recorded``) and out (the examples a
version was made from). What maps and what is refused: ``training/jsonl.py``.

``import`` exits 0 when every line was valid, 1 when some were refused (the valid ones are published all the
same; the report names each refused line and its class).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    actions = commands.add_parser(
        "examples", help="training examples as OpenAI chat JSONL: import, export"
    ).add_subparsers(dest="action", required=True, metavar="action")
    import_ = actions.add_parser(
        "import", help="check an OpenAI chat JSONL file and publish its valid lines as qa.recorded events"
    )
    import_.add_argument("file", type=Path, metavar="FILE.jsonl")
    import_.add_argument("--tenant", default="default")
    import_.add_argument("--dry-run", action="store_true", help="check and report only; publish nothing")
    import_.add_argument(
        "--no-length-check",
        dest="check_length",
        action="store_false",
        help="skip the training.max_length check (it loads the base model's tokenizer)",
    )
    import_.add_argument("--source", default=None, help="the events' source field (default: jsonl:<file name>)")
    import_.set_defaults(func=import_file)
    export_ = actions.add_parser("export", help="write the examples an adapter version was made from as JSONL")
    export_.add_argument("--tenant", default="default")
    export_.add_argument("--version", default=None, help="an adapter version (default: the tenant's current one)")
    export_.add_argument(
        "--split",
        choices=("all", "train", "held-out"),
        default="all",
        help="all new examples of the version's window (default), or the manifest's train or held-out part",
    )
    export_.add_argument("--out", type=Path, default=None, help="file to write (default: standard output)")
    export_.set_defaults(func=export)


def import_file(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.topics import DOMAIN_EVENTS, topic_name
    from training.jsonl import import_jsonl

    report = import_jsonl(
        settings, args.file, args.tenant, check_length=args.check_length, dry_run=args.dry_run, source=args.source
    )
    print(report.render(topic=topic_name(DOMAIN_EVENTS, settings.topics), tenant=args.tenant, dry_run=args.dry_run))
    return 1 if report.refused else 0


def export(settings: Settings, args: argparse.Namespace) -> int:
    from training.jsonl import export_version

    exported = export_version(settings, args.tenant, args.version, args.split)
    text = "".join(f"{line}\n" for line in exported.lines())
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    print(f"{exported.tenant} {exported.version}: {len(exported.examples)} examples ({args.split})", file=sys.stderr)
    return 0
