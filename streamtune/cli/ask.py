"""``streamtune ask QUESTION --tenant T``: one question through ``queries``, its answer from ``answers``."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser("ask", help="send one question through queries and print its answer")
    parser.add_argument("question")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("-k", type=int, default=None, help="chunks to retrieve (default: retrieval.top_k)")
    parser.add_argument("--adapter", default=None, help="pin an adapter version")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.set_defaults(func=ask)


def ask(settings: Settings, args: argparse.Namespace) -> int:
    from inference.service import ask as ask_once

    def show(piece: str) -> None:
        print(piece, end="", flush=True)

    answer = ask_once(
        settings,
        args.question,
        args.tenant,
        top_k=args.k,
        adapter=args.adapter,
        timeout_s=args.timeout,
        on_delta=show if args.stream else None,
    )
    if answer.error is not None:
        print(f"error {answer.error.code}: {answer.error.message}")
        return 1
    print("" if args.stream else answer.answer)
    for i, c in enumerate(answer.citations, 1):
        print(f"  [{i}] {c.doc_id} ({c.chunk_id}, score {c.score:.3f})")
    print(f"  adapter {answer.adapter_version or 'none (base model)'}, model {answer.model}, {answer.timings_ms}")
    if answer.usage is not None:
        print(
            f"  tokens: prompt {answer.usage.prompt_tokens}, completion {answer.usage.completion_tokens} "
            f"({answer.finish_reason})"
        )
    return 0
