"""Dependency rules (docs/architecture.md): core ← retrieval ← streams, inference, monitor; training on core only;
the CLI on top of everything and imported by nothing; the local stack one base, a module per system on it, and
no import circle. Checked on the source, lazy imports included."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streamtune", "streams", "retrieval", "training", "inference", "monitor")
# What each layer may import besides itself; the CLI package may import anything.
ALLOWED = {
    "streamtune": {"streamtune"},
    "retrieval": {"streamtune", "retrieval"},
    "streams": {"streamtune", "retrieval", "streams"},
    "inference": {"streamtune", "retrieval", "inference"},
    "training": {"streamtune", "training"},
    # read-only over the topics, the index and the adapter store; its own environment has no torch
    "monitor": {"streamtune", "retrieval", "monitor"},
    # the test harness: an isolated deployment includes its Weaviate collection; below it, only the CLI (the
    # demo) may import it
    "harness": {"streamtune", "retrieval", "harness"},
}


def _layer(module: str) -> str:
    # `python -m streamtune` is the command line's entry point, so it belongs to the CLI.
    if module in ("streamtune.cli", "streamtune.__main__") or module.startswith("streamtune.cli."):
        return "cli"
    if module == "streamtune.harness" or module.startswith("streamtune.harness."):
        return "harness"
    return module.split(".")[0]


def _names(nodes: Iterable[ast.AST]) -> set[str]:
    """Every module (and ``module.name``) that these nodes import, absolute imports only."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports_all(path: Path) -> set[str]:
    """What ``path`` imports anywhere, lazy imports included."""
    return _names(ast.walk(_tree(path)))


def _imports(path: Path) -> set[str]:
    return {name for name in _imports_all(path) if name.split(".")[0] in PACKAGES}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out.append((".".join(path.relative_to(ROOT).with_suffix("").parts), path))
    return out


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_no_module_imports_a_layer_above_it(module: str, path: Path) -> None:
    layer = _layer(module)
    if layer == "cli":
        return
    wrong = sorted(name for name in _imports(path) if _layer(name) not in ALLOWED[layer])
    assert not wrong, f"{module} ({layer}) imports {wrong}; allowed: {sorted(ALLOWED[layer])}"


def test_the_rules_have_teeth(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from retrieval.store import ChunkStore\n    import streamtune.cli.main\n")
    assert {_layer(n) for n in _imports(bad)} == {"retrieval", "cli"}


def test_streams_never_import_the_local_stack_installer() -> None:
    for module, path in _modules():
        if module.startswith("streams"):
            assert not any(n.startswith("streamtune.stack") for n in _imports(path)), module


def _package_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of ``package`` -> the modules of the same package that it imports, lazily or not. A package
    is named by its folder (its ``__init__``); the implicit import of a module's parent package is not an edge."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: {n for n in _imports_all(path) if n in modules and n != m} for m, path in modules.items()}


def _circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph``, as the path that closes it (``[a, b, a]``); ``[]`` where there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph[module]):
            if found := visit(imported):
                return found
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        if found := visit(module):
            return found
    return []


# The local stack's own imports: one base, one module per system built on it, the manager that lists them in
# start order, and the job client on top of the cluster. A new component is a new module on the base, listed
# here and in the manager.
_SYSTEMS = {f"streamtune.stack.{name}" for name in ("kafka", "weaviate", "s3", "connector", "flink_cluster")}
STACK_LAYOUT = {
    "streamtune.stack": {"streamtune.stack.manager"},
    "streamtune.stack.base": set(),
    **{system: {"streamtune.stack.base"} for system in _SYSTEMS},
    "streamtune.stack.flink_jobs": {"streamtune.stack.flink_cluster"},
    "streamtune.stack.manager": {"streamtune.stack.base", *_SYSTEMS},
}


def test_the_local_stack_is_one_base_and_a_module_per_system_without_a_circle() -> None:
    graph = _package_graph("streamtune.stack")
    assert _circle(graph) == []
    assert graph == STACK_LAYOUT


def test_a_lazy_import_circle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.a import A\n")
    (package / "a.py").write_text("from pkg.b import B\nA = B\n")
    (package / "b.py").write_text("def f():\n    from pkg import a\n\nB = 1\n")
    graph = _package_graph("pkg", tmp_path)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg", "pkg.a"}}
    assert _circle(graph) == ["pkg", "pkg.a", "pkg.b", "pkg"]
    assert _circle({**graph, "pkg.b": set()}) == []


# Only these may import PyFlink; every other module of streams/ (the batch work in streams.indexer among them)
# runs and is tested without it (the subprocess test below imports streams.indexer where PyFlink is not
# installed). streams.job imports it only inside its functions (checked here).
PYFLINK_MODULES = {"streams.operator", "streams.flink", "streams.job"}


def test_only_the_flink_modules_of_streams_import_pyflink() -> None:
    modules = dict(m for m in _modules() if m[0].startswith("streams."))
    assert {"streams.indexer", "streams.operator", "streams.job"} <= set(modules)
    importers = {m for m, path in modules.items() if "pyflink" in {n.split(".")[0] for n in _imports_all(path)}}
    assert importers <= PYFLINK_MODULES, sorted(importers - PYFLINK_MODULES)
    assert "streams.operator" in importers  # the rule sees the module that does import it
    # the job imports without PyFlink (its operator module only once it builds the graph): the CLI imports it
    eager = _names(_tree(modules["streams.job"]).body)
    assert not [n for n in eager if n.split(".")[0] == "pyflink" or n.startswith("streams.operator")], eager


def test_ingest_and_retrieval_import_without_ml_libraries() -> None:
    code = (
        "import sys, streamtune.cli, streamtune.settings, streamtune.contracts, streamtune.topics, "
        "streamtune.kafka, streamtune.stack, streamtune.models, streamtune.dlq, streamtune.manifest, "
        "streams.job, streams.indexer, streams.processing, retrieval, retrieval.store, retrieval.retriever\n"
        "heavy = ('torch', 'transformers', 'peft', 'trl', 'sentence_transformers')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == ""
