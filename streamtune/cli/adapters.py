"""``streamtune adapters list|show V|promote V|rollback|decide|export V DIR``: the adapter registry of one tenant.

``list`` names each version's state (``current``, ``canary``, ``promoted`` for one current before,
``rolled_back``, ``rejected``) and the decision that put it there with the figures it was taken on;
``decide`` runs the rollout decision step once (``training.canary``: a canary promoted or rolled back on its
live ratings, a degraded current version rolled back).

``export`` writes a version as a plain PEFT adapter folder (to a path, ``file://`` or any fsspec URL) that
``PeftModel.from_pretrained`` loads on a machine with only the base model (``training.publish.export_version``).
"""

from __future__ import annotations

import argparse
from typing import Any

from streamtune.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser("adapters", help="the adapter registry")
    parser.add_argument("--tenant", default="default")
    actions = parser.add_subparsers(dest="action", required=True, metavar="action")
    list_ = actions.add_parser("list", help="every version, its status and held-out loss")
    list_.add_argument("--tenant", default=argparse.SUPPRESS)
    list_.set_defaults(func=list_versions)
    for name, func, text in (
        ("show", show, "a version's manifest, on one screen (--json: all of it)"),
        ("promote", promote, "make a version current and announce it"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("version")
        action.add_argument("--tenant", default=argparse.SUPPRESS)
        if name == "show":
            action.add_argument("--json", action="store_true")
        action.set_defaults(func=func)
    export_ = actions.add_parser(
        "export", help="write a version as a plain PEFT adapter folder with its model card (DIR: a path or fsspec URL)"
    )
    export_.add_argument("version")
    export_.add_argument("destination", metavar="DIR")
    export_.add_argument("--tenant", default=argparse.SUPPRESS)
    export_.set_defaults(func=export)
    rollback_ = actions.add_parser("rollback", help="make the previously current version current again")
    rollback_.add_argument("--tenant", default=argparse.SUPPRESS)
    rollback_.set_defaults(func=rollback)
    decide_ = actions.add_parser(
        "decide", help="judge running canaries (and current versions) on live feedback once; every tenant by default"
    )
    decide_.add_argument("--tenant", dest="only", default=None, help="one tenant (default: every tenant)")
    decide_.set_defaults(func=decide)


def _registry(settings: Settings, tenant: str) -> Any:
    from training.registry import open_registry

    return open_registry(settings, tenant)


def list_versions(settings: Settings, args: argparse.Namespace) -> int:
    from training.registry import state_of

    registry = _registry(settings, args.tenant)
    current = registry.current()
    versions = registry.versions()
    for v in versions:
        state = state_of(v, current)
        held = v.manifest.metrics.candidate.held_out
        print(
            f"{'*' if state == 'current' else ' '} {v.name}  {state:<11} held-out loss {held.loss:.4f}  "
            f"examples {v.manifest.data.new_examples}  {v.manifest.created_at.isoformat()}"
        )
        if v.decision:
            print(f"      {_decision_line(v.decision)}")
    if not versions:
        print(f"no adapters for tenant {args.tenant!r} under {registry.location}")
    return 0


def _decision_line(decision: dict[str, Any]) -> str:
    """``rollback at <time>: <reason>; canary 0+ 10- of 10 rated, incumbent 12+ 0- of 12 rated``."""
    line = f"{decision.get('decision')} at {decision.get('at', '?')[:19]}: {decision.get('reason', '')}"
    arms = [
        ("canary", decision.get("canary_figures")),
        (f"incumbent {decision.get('incumbent') or 'base'}", decision.get("incumbent_figures")),
        ("live", decision.get("figures")),
    ]
    for name, figures in arms:
        if figures:
            line += (
                f"; {name} {figures['positive']}+ {figures['negative']}- of {figures['rated']} rated "
                f"({figures['served']} served, {figures['corrections']} corrected)"
            )
    return line


def show(settings: Settings, args: argparse.Namespace) -> int:
    version = _registry(settings, args.tenant).get(args.version)
    if args.json:
        print(version.manifest.to_json())
    else:
        print(f"{version.status} at {version.uri if version.remote else version.path}")
        if version.decision:
            print(f"  decision     {_decision_line(version.decision)}")
        print(version.manifest.summary())
    return 0


def decide(settings: Settings, args: argparse.Namespace) -> int:
    from training.canary import decide as decide_step

    # `adapters --tenant T decide` names one tenant as well; the group's own default means every tenant
    decisions = decide_step(settings, args.only or (args.tenant if args.tenant != "default" else None))
    if not decisions:
        print("no decision: every canary waits for more rated answers, and no current version degraded")
    for d in decisions:
        print(f"{d.tenant}: {d.action} {d.version}: {d.reason}")
    return 0


def promote(settings: Settings, args: argparse.Namespace) -> int:
    from training.publish import promote_and_announce

    version = promote_and_announce(settings, args.tenant, args.version)
    print(f"{args.tenant}: {version.name} is current and announced")
    return 0


def export(settings: Settings, args: argparse.Namespace) -> int:
    from training.modelcard import portable_base
    from training.publish import export_version

    version = _registry(settings, args.tenant).get(args.version)
    files = export_version(version, args.destination)
    base = portable_base(version.manifest.base_model)
    print(f"{args.tenant} {version.name}: exported {', '.join(files)} to {args.destination}")
    print(f"  base model {base.name} ({'portable' if base.portable else 'a local path: not portable'})")
    return 0


def rollback(settings: Settings, args: argparse.Namespace) -> int:
    from training.publish import rollback_and_announce

    version = rollback_and_announce(settings, args.tenant)
    print(f"{args.tenant}: rolled back; {version.name} is current and announced")
    return 0
