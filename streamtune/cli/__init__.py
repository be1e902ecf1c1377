"""The one command line, ``streamtune <command>``: the top of the house.

Only this package wires the others together (core, retrieval, streams, training, inference); none of them
imports it. ``main.py`` builds the parser from one module per command group, each registering its own
arguments beside its handler.
"""

from streamtune.cli.main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
