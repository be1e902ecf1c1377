"""The adapter registry: immutable version directories per tenant, their status, and the current pointer.

Layout: ``<adapters_dir>/<tenant>/<version>/`` holds the PEFT adapter, ``manifest.json`` and the loss
curve; ``<adapters_dir>/<tenant>/registry.json`` holds each version's status (promoted / rejected) and
the history of the current pointer. Versions are written to a temporary name, fsynced and renamed;
only then are they announced on ``adapter-updates``. Published versions never change.

A version's manifest is read through ``streamtune.manifest.Manifest``: one that does not match it raises
``ContractError`` naming the file and the field.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamtune.errors import StreamtuneError
from streamtune.manifest import Manifest

__all__ = ["AdapterRegistry", "RegistryError", "Version"]


class RegistryError(StreamtuneError):
    """An adapter version is missing, or an operation on the registry is not allowed."""


@dataclass(frozen=True)
class Version:
    tenant: str
    name: str
    path: Path
    status: str
    """promoted | rejected (a version that was current once stays promoted after a rollback)."""
    manifest: Manifest


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with item.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AdapterRegistry:
    def __init__(self, root: Path, tenant: str) -> None:
        self.tenant = tenant
        self.root = root / tenant
        self.index_file = self.root / "registry.json"

    # -- index ----------------------------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        if not self.index_file.is_file():
            return {"current": None, "versions": {}, "history": []}
        return dict(json.loads(self.index_file.read_text()))

    def _write_index(self, index: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.index_file.with_suffix(f".json.{os.getpid()}")
        partial.write_text(json.dumps(index, indent=2, sort_keys=True))
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(self.index_file)
        _fsync_dir(self.root)

    # -- reading --------------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        index = self._index()
        return [self.get(name) for name in sorted(index["versions"])]

    def get(self, name: str) -> Version:
        index = self._index()
        path = self.root / name
        if name not in index["versions"] or not (path / "manifest.json").is_file():
            known = ", ".join(sorted(index["versions"])) or "none"
            raise RegistryError(f"tenant {self.tenant}: no adapter version {name!r} (known: {known})")
        return Version(self.tenant, name, path, index["versions"][name]["status"], Manifest.load(path))

    def current(self) -> Version | None:
        name = self._index()["current"]
        return self.get(name) if name else None

    def next_name(self) -> str:
        existing = [int(n[1:]) for n in self._index()["versions"] if n[1:].isdigit()]
        return f"v{max(existing, default=0) + 1:04d}"

    # -- writing --------------------------------------------------------------------------------
    def publish(self, name: str, write: Callable[[Path], None], status: str) -> Version:
        """Write a version atomically: ``write`` fills a temporary directory (``manifest.json`` included, which
        must read back as a ``Manifest``), which is fsynced and renamed."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / name
        if target.exists():
            raise RegistryError(f"tenant {self.tenant}: version {name} exists and published versions are immutable")
        partial = self.root / f".partial-{name}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            write(partial)
            Manifest.load(partial)  # a version is never published without a manifest that reads back
            _fsync_tree(partial)
            partial.rename(target)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        index = self._index()
        index["versions"][name] = {"status": status, "created_at": datetime.now(UTC).isoformat()}
        if status == "promoted":
            index["current"] = name
            index["history"].append(name)
        self._write_index(index)
        return self.get(name)

    def promote(self, name: str) -> Version:
        version = self.get(name)
        index = self._index()
        index["versions"][name]["status"] = "promoted"
        index["current"] = name
        index["history"].append(name)
        self._write_index(index)
        return version

    def rollback(self) -> Version:
        """Make the previously current version current again."""
        index = self._index()
        history = index["history"]
        if len(history) < 2:
            raise RegistryError(f"tenant {self.tenant}: nothing to roll back to (history: {history or 'empty'})")
        history.pop()
        index["current"] = history[-1]
        self._write_index(index)
        return self.get(history[-1])
