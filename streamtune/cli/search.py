"""``streamtune search TEXT --tenant T``: hybrid search over one tenant's chunks."""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser("search", help="hybrid search over one tenant's chunks")
    parser.add_argument("text")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("-k", type=int, default=None, help="results (default: retrieval.top_k)")
    parser.add_argument("--alpha", type=float, default=None, help="0 = BM25 only, 1 = vector only")
    parser.set_defaults(func=search)


def search(settings: Settings, args: argparse.Namespace) -> int:
    from retrieval import Retriever

    with Retriever(settings) as retriever:
        hits = retriever.search(args.tenant, args.text, args.k, args.alpha)
    for rank, hit in enumerate(hits, 1):
        print(f"{rank}. {hit.score:.3f}  {hit.chunk_id}  {hit.title}\n   {hit.text[:300]}")
    if not hits:
        print(f"no chunks for tenant {args.tenant!r}")
    return 0
