"""Adapter refreshes from ``training-examples``: QLoRA with TRL/PEFT, promoted through a gate, published to a
registry and announced on ``adapter-updates``.

``refresh`` (one refresh as named steps) and ``watch`` (refresh when enough has accumulated) are the entry
points; ``data``, ``trainer``, ``gate``, ``manifest``, ``publish`` and ``registry`` each own one step.
Training reads Kafka and the registry only: what it needs from the retrieval index (which documents were
deleted) is handed in by the entry point, and it imports nothing from ``retrieval``, ``inference``,
``streams`` or the CLI.
"""
