"""``streamtune streams run``: the Flink ingest job (run it from the Flink environment)."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    actions = commands.add_parser("streams", help="the Flink ingest job").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    actions.add_parser("run", help="run the job (local MiniCluster) until stopped").set_defaults(func=run, service=True)
    submit_ = actions.add_parser(
        "submit", help="submit the job to the standalone Flink cluster (`stack up --flink-cluster`), detached"
    )
    submit_.add_argument("-p", "--parallelism", type=int, default=None, help="default: flink.parallelism")
    submit_.set_defaults(func=submit)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from streams.job import main as job_main

    return job_main(settings)


def submit(settings: Settings, args: argparse.Namespace) -> int:
    from streamtune.stack.flink_jobs import submit_job

    parallelism = args.parallelism or settings.flink.parallelism
    job_id = submit_job(settings, parallelism=parallelism)
    print(
        f"streams: job {job_id} submitted to http://127.0.0.1:{settings.flink.rest_port} at parallelism {parallelism}"
    )
    return 0
