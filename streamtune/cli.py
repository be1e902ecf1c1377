"""The one command line: ``streamtune <command>``.

Each subcommand is a function ``main(settings, args) -> int`` that can run on its own; settings are
loaded once, here, at the entry point.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from streamtune.errors import StreamtuneError
from streamtune.settings import Settings, load_settings

if TYPE_CHECKING:
    from streamtune.stack import ComponentStatus

__all__ = ["build_parser", "main", "run"]

Command = Callable[[Settings, argparse.Namespace], int]


def _stack_up(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack import Stack

    statuses = Stack(settings).up()
    _print_status(statuses)
    return 0 if all(s.ok for s in statuses) else 1


def _stack_down(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack import Stack

    Stack(settings).down()
    return 0


def _stack_status(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack import Stack

    statuses = Stack(settings).status()
    _print_status(statuses)
    return 0 if all(s.ok for s in statuses) else 1


def _print_status(statuses: Sequence[ComponentStatus]) -> None:
    for s in statuses:
        pid = f" pid={s.pid}" if s.pid else ""
        detail = f" ({s.detail})" if s.detail else ""
        print(f"{s.name:<16} {s.state:<14} {s.address}{pid}{detail}")


def _stack_logs(settings: Settings, args: argparse.Namespace) -> int:
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


def _topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.kafka import create_topics

    for result in create_topics(settings.kafka, settings.topics):
        state = "created" if result.created else "exists"
        print(f"{result.name:<32} {state:<8} partitions={result.partitions}")
    return 0


def _config_show(settings: Settings, args: argparse.Namespace) -> int:
    print(settings.dump_toml())
    return 0


def _streams_run(settings: Settings, args: argparse.Namespace) -> int:
    from streams.job import main as job_main

    return job_main(settings)


def _dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.dlq import read_dead_letters

    shown = 0
    for letter in read_dead_letters(settings):
        if shown >= args.limit:
            break
        source = f"{letter.headers.get('source.topic')}[{letter.headers.get('source.partition')}]@" + (
            letter.headers.get("source.offset") or "?"
        )
        value = (letter.value or b"")[: args.width]
        print(f"{source:<28} {letter.reason}\n{'':<28} key={letter.key!r} value={value!r}")
        shown += 1
    print(f"{shown} dead letter(s)")
    return 0


def _search(settings: Settings, args: argparse.Namespace) -> int:
    from retrieval import connect
    from retrieval.store import ChunkStore
    from streamtune.models import load_embedder

    embedder = load_embedder(settings)
    vector = embedder.encode([args.text], normalize_embeddings=True)[0].tolist()
    with connect(settings.weaviate) as client:
        store = ChunkStore(client, settings)
        hits = store.search(args.tenant, args.text, vector, args.k or settings.retrieval.top_k, args.alpha)
    for rank, hit in enumerate(hits, 1):
        print(f"{rank}. {hit.score:.3f}  {hit.chunk_id}  {hit.title}\n   {hit.text[:300]}")
    if not hits:
        print(f"no chunks for tenant {args.tenant!r}")
    return 0


def _train(settings: Settings, args: argparse.Namespace) -> int:
    if args.what and (args.what[0] != "replay" or len(args.what) != 2):
        print("usage: streamtune train [--tenant T] [--watch] | streamtune train replay VERSION", file=sys.stderr)
        return 2
    if args.what:
        from training.refresh import replay

        outcome = replay(settings, args.tenant, args.what[1])
        verdict = "identical" if outcome.identical else "DIFFERENT"
        print(f"{args.tenant} {outcome.version}: recorded sha256 {outcome.recorded_sha256}")
        print(f"{args.tenant} {outcome.version}: replayed sha256 {outcome.replayed_sha256} ({verdict})")
        return 0 if outcome.identical else 1
    if args.watch:
        from training.watch import watch

        return watch(settings)
    from training.refresh import refresh

    result = refresh(settings, args.tenant)
    print(f"{args.tenant}: {result.status} {result.version or ''} ({result.reason})")
    return 0


def _adapters(settings: Settings, args: argparse.Namespace) -> int:
    from training.refresh import announce
    from training.registry import AdapterRegistry

    registry = AdapterRegistry(settings.adapters_dir, args.tenant)
    if args.action == "list":
        current = registry.current()
        for v in registry.versions():
            held = v.manifest.get("metrics", {}).get("candidate", {}).get("held_out", {})
            mark = "*" if current and v.name == current.name else " "
            print(
                f"{mark} {v.name}  {v.status:<9} held-out loss {held.get('loss', float('nan')):.4f}  "
                f"examples {v.manifest['data']['new_examples']}  {v.manifest['created_at']}"
            )
        if not registry.versions():
            print(f"no adapters for tenant {args.tenant!r} under {registry.root}")
    elif args.action == "show":
        import json

        version = registry.get(args.version)
        print(json.dumps({"status": version.status, "path": str(version.path), **version.manifest}, indent=2))
    elif args.action == "promote":
        version = registry.promote(args.version)
        announce(settings, args.tenant, version)
        print(f"{args.tenant}: {version.name} is current and announced")
    elif args.action == "rollback":
        version = registry.rollback()
        announce(settings, args.tenant, version)
        print(f"{args.tenant}: rolled back; {version.name} is current and announced")
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from inference.service import serve

    return serve(settings, say=lambda line: print(line, flush=True))


def _ask(settings: Settings, args: argparse.Namespace) -> int:
    from inference.service import ask

    answer = ask(settings, args.question, args.tenant, top_k=args.k, adapter=args.adapter, timeout_s=args.timeout)
    if answer.error is not None:
        print(f"error {answer.error.code}: {answer.error.message}")
        return 1
    print(answer.answer)
    for i, c in enumerate(answer.citations, 1):
        print(f"  [{i}] {c.doc_id} ({c.chunk_id}, score {c.score:.3f})")
    print(f"  adapter {answer.adapter_version or 'none (base model)'}, model {answer.model}, {answer.timings_ms}")
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.demo import main as demo_main

    return demo_main(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamtune", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        action="append",
        type=Path,
        metavar="FILE",
        help="TOML settings file (repeatable); default: config/*.toml in the current directory",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    stack = commands.add_parser("stack", help="the local Kafka / Weaviate / Flink stack").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    stack.add_parser("up", help="install what is missing and start everything").set_defaults(func=_stack_up)
    stack.add_parser("down", help="stop what `up` started").set_defaults(func=_stack_down)
    stack.add_parser("status", help="each component, its address and health").set_defaults(func=_stack_status)
    logs = stack.add_parser("logs", help="print a component's log")
    logs.add_argument("component", choices=["kafka", "weaviate"])
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=_stack_logs)

    topics = commands.add_parser("topics", help="Kafka topics").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    topics.add_parser("create", help="create every declared topic (harmless to repeat)").set_defaults(
        func=_topics_create
    )

    config = commands.add_parser("config", help="settings").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    config.add_parser("show", help="print the effective settings as TOML").set_defaults(func=_config_show)

    streams = commands.add_parser("streams", help="the Flink ingest job").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    streams.add_parser("run", help="run the job (local MiniCluster) until stopped").set_defaults(func=_streams_run)

    dlq = commands.add_parser("dlq", help="the dead-letter topic").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    show = dlq.add_parser("show", help="list dead letters with their reasons")
    show.add_argument("--limit", type=int, default=100)
    show.add_argument("--width", type=int, default=120, help="bytes of each value to print")
    show.set_defaults(func=_dlq_show)

    search = commands.add_parser("search", help="hybrid search over one tenant's chunks")
    search.add_argument("text")
    search.add_argument("--tenant", default="default")
    search.add_argument("-k", type=int, default=None, help="results (default: retrieval.top_k)")
    search.add_argument("--alpha", type=float, default=None, help="0 = BM25 only, 1 = vector only")
    search.set_defaults(func=_search)

    train = commands.add_parser("train", help="refresh the adapter; `train replay V` rebuilds V from its manifest")
    train.add_argument("what", nargs="*", metavar="replay VERSION")
    train.add_argument("--tenant", default="default")
    train.add_argument("--watch", action="store_true", help="train whenever enough new examples accumulate")
    train.set_defaults(func=_train)

    adapters = commands.add_parser("adapters", help="the adapter registry")
    adapters.add_argument("action", choices=["list", "show", "promote", "rollback"])
    adapters.add_argument("version", nargs="?")
    adapters.add_argument("--tenant", default="default")
    adapters.set_defaults(func=_adapters)

    commands.add_parser("serve", help="answer queries from the queries topic").set_defaults(func=_serve)
    ask = commands.add_parser("ask", help="send one question through queries and print its answer")
    ask.add_argument("question")
    ask.add_argument("--tenant", default="default")
    ask.add_argument("-k", type=int, default=None, help="chunks to retrieve (default: retrieval.top_k)")
    ask.add_argument("--adapter", default=None, help="pin an adapter version")
    ask.add_argument("--timeout", type=float, default=180.0)
    ask.set_defaults(func=_ask)

    commands.add_parser("demo", help="the end-to-end demonstration (`make demo`)").set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        func: Command = args.func
        return func(settings, args)
    except StreamtuneError as exc:
        print(f"streamtune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())
