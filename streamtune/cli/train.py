"""``streamtune train run|watch|worker|replay V``: refresh a tenant's adapter, keep refreshing (or, with
``training.distribute = "kafka"``, keep requesting refreshes), run the requested refreshes as one of the trainer
group's workers, or rebuild a version.

``streamtune train [--tenant T]`` and ``streamtune train --watch`` stay as aliases of ``run`` and ``watch``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser("train", help="refresh adapters: run (default), watch, replay VERSION")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--watch", action="store_true", help="alias of `train watch`")
    parser.set_defaults(func=_run_or_watch)
    actions = parser.add_subparsers(dest="action", required=False, metavar="action")
    run_ = actions.add_parser("run", help="one refresh of one tenant")
    run_.add_argument("--tenant", default=argparse.SUPPRESS)
    run_.set_defaults(func=run)
    actions.add_parser("watch", help="refresh every tenant whenever enough new examples accumulate").set_defaults(
        func=watch, service=True
    )
    actions.add_parser(
        "worker", help="run the refreshes requested on refresh-requests, as one of the training.worker_group_id group"
    ).set_defaults(func=worker, service=True)
    replay_ = actions.add_parser("replay", help="rebuild a version from its manifest and compare the sha256")
    replay_.add_argument("version")
    replay_.add_argument("--tenant", default=argparse.SUPPRESS)
    replay_.set_defaults(func=replay)


def index_check(settings: Settings) -> Callable[[str, set[str]], Any]:
    """The document check that training is handed (``training.data.MissingDocs``): which of a tenant's doc ids
    the index lacks, told apart into deleted (their last event on ``domain-events`` is a deletion) and not
    indexed yet (the job has not written them: their examples are deferred, not lost)."""

    def missing(tenant: str, doc_ids: set[str]) -> Any:
        from retrieval import connect
        from retrieval.store import ChunkStore
        from training.data import DocGaps, deleted_documents

        with connect(settings.weaviate) as client:
            lacking = ChunkStore(client, settings).missing(tenant, doc_ids)
        deleted = deleted_documents(settings, tenant, lacking) if lacking else set()
        return DocGaps(frozenset(deleted), frozenset(lacking - deleted))

    return missing


def _run_or_watch(settings: Settings, args: argparse.Namespace) -> int:
    return watch(settings, args) if args.watch else run(settings, args)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from training.refresh import refresh

    result = refresh(settings, args.tenant, missing_docs=index_check(settings))
    print(f"{args.tenant}: {result.status} {result.version or ''} ({result.reason})")
    return 0


def watch(settings: Settings, args: argparse.Namespace) -> int:
    from training.watch import watch as watch_forever

    return watch_forever(settings, missing_docs=index_check(settings))


def worker(settings: Settings, args: argparse.Namespace) -> int:
    from training.worker import work

    return work(settings, missing_docs=index_check(settings))


def replay(settings: Settings, args: argparse.Namespace) -> int:
    from training.refresh import replay as replay_version

    outcome = replay_version(settings, args.tenant, args.version)
    verdict = "identical" if outcome.identical else "DIFFERENT"
    print(f"{args.tenant} {outcome.version}: recorded sha256 {outcome.recorded_sha256}")
    print(f"{args.tenant} {outcome.version}: replayed sha256 {outcome.replayed_sha256} ({verdict})")
    return 0 if outcome.identical else 1
