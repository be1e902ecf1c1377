"""The adapter registry: immutable version directories per tenant, their status, and the current pointer.

Layout: ``<adapters_dir>/<tenant>/<version>/`` holds the PEFT adapter, ``manifest.json`` and the loss
curve; ``<adapters_dir>/<tenant>/registry.json`` holds each version's status (promoted / rejected / canary /
rolled_back), the figures each rollout decision was taken on, the running canary (at most one per tenant)
and the history of the current pointer. Versions are written to a temporary name, fsynced and renamed;
only then are they announced on ``adapter-updates``. Published versions never change.

One writer per tenant, and crash-consistent. Every change (publish, promote, rollback, and a whole refresh
from reading ``current`` to writing the index) happens inside ``writing()``, which holds the tenant's lock
file ``<adapters_dir>/<tenant>/.lock`` (an OS lock through ``filelock``: the kernel drops it when its holder
dies, so a killed trainer never leaves a stale lock). A second writer *waits* for it, up to
``lock_timeout_s``, then raises ``RegistryError`` naming the tenant, the lock file and the holder's pid and
host; waiting rather than refusing at once lets a ``train run`` started beside ``train watch`` simply find
nothing new to train on. Readers (``get``, ``versions``, ``current``) take no lock: the index is replaced
atomically, so a reader sees the state before or after a change, never half of one.

Opening for writing first repairs what a crash can leave, and logs each repair: a half-written
``.partial-*`` directory or an unfinished ``registry.json.<pid>`` is removed; a version directory missing
from the index (killed between the rename and the index write) is adopted with the status its manifest's
gate verdict says (a gate-passed one meant for a canary becomes the canary again), and a promoted one
becomes current when it is newer than the current one. Whether the
current version was announced is checked against the topic itself (``training.publish.ensure_announced``).

A version's manifest is read through ``streamtune.manifest.Manifest``: one that does not match it raises
``ContractError`` naming the file and the field.

**On an object store** (``training.adapters_dir = "s3://..."``, ``streamtune.adapter_store``) the layout is the
same, but there is no rename and no lock file, so: a version's files are written in place, and its
``manifest.json`` last, as a conditional create (``If-None-Match: *``): the manifest is the version's commit
record, and a second writer of the same version name is refused (``WriteConflict``). ``registry.json`` is one
object, replaced whole with ``If-Match`` on the ETag it was read with, so a reader sees the state before or
after a change, and a writer that raced another is refused instead of losing its change. A version is listed
only through the index, so files of an unfinished publish (the store went away mid-way, the writer died) are
never listed or announced; the next opening for writing removes a version folder that has no manifest and
adopts one that has a manifest but no index entry, as on a local disk. The single-writer lock is not replaced
by a lock object: which trainer writes a tenant is decided by Kafka partition assignment, and the conditional
writes make a second writer fail loudly rather than corrupt anything. Failing requests are retried with bounded
backoff (``s3.give_up_s``); past it the operation raises and lists nothing new.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamtune.adapter_store import AdapterStore, WriteConflict, open_store
from streamtune.errors import ContractError, StreamtuneError
from streamtune.manifest import Manifest
from streamtune.settings import Settings

__all__ = [
    "LOCK_TIMEOUT_S",
    "AdapterRegistry",
    "RegistryError",
    "Version",
    "open_registry",
    "state_of",
    "status_of",
    "tenants",
]

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 900.0
"""For registries opened without settings (tests); the settings' ``training.lock_timeout_s`` otherwise."""
"""How long a writer waits for another writer of the same tenant (a refresh of the tiny default model takes
minutes on a CPU) before it gives up with ``RegistryError``."""

_VERSION_NAME = re.compile(r"v\d{4,}")


def _no_crash(name: str) -> None:
    """The production hook: nothing happens at a crash point."""


_crash_point: Callable[[str], None] = _no_crash
"""Fault tests only (tests/training/test_faults.py): called with the name of each point where a crash leaves
something for the repair to find. A test's child process replaces it (``os.kill(os.getpid(), SIGKILL)`` at
the point it wants); nothing else sets it. The points, in the order a refresh passes them:

- ``locked``: the tenant's lock is held and the repair has run (nothing half-done yet);
- ``trained``: the candidate is trained, scored and its manifest built; nothing is published yet
  (``training.refresh``; a ``train worker`` checks that it still owns the tenant right after it);
- ``partial``: a ``.partial-*`` directory holds the adapter's weights but not yet its manifest
  (``training.publish.write_version``);
- ``uploading`` (object stores only): one more of the version's files is uploaded, its manifest is not yet;
- ``renamed``: the version directory is in place, ``registry.json`` does not list it yet;
- ``index-temp``: ``registry.json.<pid>`` is written and fsynced, not yet renamed over ``registry.json``
  (at every index write);
- ``index-written``: ``registry.json`` lists the version (current, if promoted), or a promotion, rollback or
  end of a canary; not announced yet;
- ``announced``: the announcement is flushed to Kafka (``training.publish.announce``).
"""


class RegistryError(StreamtuneError):
    """An adapter version is missing, or an operation on the registry is not allowed."""


@dataclass(frozen=True)
class Version:
    tenant: str
    name: str
    path: Path
    status: str
    """promoted | rejected | canary | rolled_back (a version that was current once stays promoted after a
    rollback by hand; one rolled back by a decision, canary or current, is rolled_back)."""
    manifest: Manifest
    published_at: datetime | None = None
    """When the registry listed it (a canary's trial runs from then); None in indexes that lack it."""
    decision: dict[str, Any] | None = None
    """The last rollout decision about this version (``training/canary.py``): what was decided, why, when and
    on which figures; None when none was taken."""
    uri: str = ""
    """Where announcements say it is (``AdapterStore.uri``); the ``file://`` URI of ``path`` by default."""
    store: AdapterStore | None = field(default=None, repr=False, compare=False)
    """The store it was read from; on an object store ``path`` is only where ``local_dir`` copies it."""

    def __post_init__(self) -> None:
        if not self.uri:
            object.__setattr__(self, "uri", self.path.resolve().as_uri())

    @property
    def remote(self) -> bool:
        return self.store is not None and not self.store.local

    def local_dir(self) -> Path:
        """A local folder with this version's files: ``path`` itself, or (object store) a verified copy."""
        if self.store is None or self.store.local:
            return self.path
        return self.store.fetch(self.tenant, self.name, self.manifest.adapter.sha256)

    def read(self, name: str) -> bytes | None:
        """One of the version's files, None when it has none of that name."""
        if not self.remote:
            file = self.path / name
            return file.read_bytes() if file.is_file() else None
        assert self.store is not None
        if not self.store.exists(self.tenant, self.name, name):
            return None
        return self.store.read(self.tenant, self.name, name)


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


def _record_holder(fd: int) -> None:
    """Written into the lock file once it is held, so that a writer that waits can say who it waits for."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _number(name: str) -> int:
    return int(name[1:])


_ETAG = "__etag__"
"""Key of the ETag an object store's index was read with (kept beside it in memory, never written)."""


_writing_remote = threading.local()
"""(store location, tenant) pairs this thread is writing on an object store: a nested opening skips the repair,
which would otherwise take the outer writer's unfinished files for a crash's."""


class AdapterRegistry:
    def __init__(self, root: Path | AdapterStore, tenant: str, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.tenant = tenant
        self.store = root if isinstance(root, AdapterStore) and not root.local else None
        """The object store, when the registry is on one (None: a local folder)."""
        if isinstance(root, AdapterStore):
            # on an object store, where local_dir() copies versions
            root = Path(root.location) if root.local else root.cache_dir / "adapters-cache"
        self.root = root / tenant
        self.index_file = self.root / "registry.json"
        self.lock_file = self.root / ".lock"
        self.lock_timeout_s = lock_timeout_s
        self.repaired: list[str] = []
        """What the last opening for writing repaired (also logged), one line each."""

    @property
    def location(self) -> str:
        """Where the tenant's registry is, for messages: a folder, or the object store's URL."""
        return f"{self.store.location}/{self.tenant}" if self.store is not None else str(self.root)

    # -- the writer's lock and the repair -------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[AdapterRegistry]:
        """Hold the tenant's lock for the block; on first entry (it is reentrant within a thread) repair what
        a crash left. See the module docstring."""
        if self.store is not None:
            with self._writing_remote():
                yield self
            return
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        # One lock object per file in this process: a registry opened twice in one thread nests instead of
        # waiting for itself. The kernel lock (flock) is per open file, so other threads and processes wait.
        lock = FileLock(self.lock_file, is_singleton=True, preserve_lock_file=True, on_acquired=_record_holder)
        outermost = not lock.is_locked
        self._acquire(lock)
        try:
            if outermost:
                self.repaired = self._repair()
            _crash_point("locked")
            yield self
        finally:
            lock.release()

    @contextmanager
    def _writing_remote(self) -> Iterator[None]:
        """On an object store: no lock (one writer per tenant by Kafka assignment; conditional writes refuse a
        second one); the repair runs at the outermost opening in this thread."""
        assert self.store is not None
        mine = (self.store.location, self.tenant)
        held: set[tuple[str, str]] = _writing_remote.__dict__.setdefault("held", set())
        outermost = mine not in held
        held.add(mine)
        try:
            if outermost:
                self.repaired = self._repair_remote()
            _crash_point("locked")
            yield
        finally:
            if outermost:
                held.discard(mine)

    def _repair_remote(self) -> list[str]:
        assert self.store is not None
        repaired = []
        index = self._index()
        adopted = False
        names = [n for n in self.store.names(self.tenant) if _VERSION_NAME.fullmatch(n)]
        for name in sorted(names, key=_number):
            if name in index["versions"]:
                continue
            if not self.store.exists(self.tenant, name, "manifest.json"):
                self.store.remove(self.tenant, name)
                repaired.append(f"removed the half-written {name} (no manifest: its publish never finished)")
                continue
            note = self._adopt(index, name)
            if note:
                repaired.append(note)
                adopted = True
        if adopted:
            self._write_index(index)
        for line in repaired:
            log.warning("tenant %s: repaired: %s", self.tenant, line)
        return repaired

    def _acquire(self, lock: Any) -> None:
        from filelock import Timeout

        try:
            lock.acquire(timeout=0)
            return
        except Timeout:
            pass
        log.warning(
            "tenant %s: waiting up to %.0fs for the registry lock %s, held by %s",
            self.tenant,
            self.lock_timeout_s,
            self.lock_file,
            self._holder(),
        )
        try:
            lock.acquire(timeout=self.lock_timeout_s, poll_interval=0.2)
        except Timeout as exc:
            raise RegistryError(
                f"tenant {self.tenant}: another writer holds the registry lock {self.lock_file} "
                f"({self._holder()}) and did not release it within {self.lock_timeout_s:.0f}s. "
                "Wait for that refresh, promote or rollback to finish (the lock is released when it exits, "
                "even if it is killed); do not delete the lock file"
            ) from exc
        log.info("tenant %s: got the registry lock %s", self.tenant, self.lock_file)

    def _holder(self) -> str:
        try:
            holder = json.loads(self.lock_file.read_text() or "{}")
            return f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    def _repair(self) -> list[str]:
        """Undo or finish what a crash left; called with the lock held. Returns (and logs) what it did."""
        repaired = []
        for partial in sorted(self.root.glob(".partial-*")):
            shutil.rmtree(partial, ignore_errors=True)
            repaired.append(f"removed the half-written {partial.name}")
        for temp in sorted(self.root.glob(f"{self.index_file.name}.*")):
            if not temp.suffix[1:].isdigit():
                continue  # only ``_write_index``'s own temporary files (named by pid); never an operator's copy
            temp.unlink(missing_ok=True)
            repaired.append(f"removed the unfinished index {temp.name}")
        index = self._index()
        adopted = False
        on_disk = [p for p in self.root.iterdir() if _VERSION_NAME.fullmatch(p.name) and p.is_dir()]
        for path in sorted(on_disk, key=lambda p: _number(p.name)):
            if path.name in index["versions"]:
                continue
            note = self._adopt(index, path.name)
            if note:
                repaired.append(note)
                adopted = True
        if adopted:
            self._write_index(index)
        if repaired:
            _fsync_dir(self.root)
        for line in repaired:
            log.warning("tenant %s: repaired: %s", self.tenant, line)
        return repaired

    def _adopt(self, index: dict[str, Any], name: str) -> str | None:
        """Enter a version directory the index lacks (renamed into place, then a crash before the index write)."""
        path = self.root / name
        try:
            manifest = self._manifest(name)
        except ContractError as exc:
            # Never renamed into place without a manifest that read back: someone changed it since.
            log.error("tenant %s: %s is not in registry.json and cannot be adopted: %s", self.tenant, path.name, exc)
            return None
        if (manifest.tenant, manifest.version) != (self.tenant, path.name):
            log.error(
                "tenant %s: %s is not in registry.json and its manifest is %s %s; not adopted",
                self.tenant,
                path.name,
                manifest.tenant,
                manifest.version,
            )
            return None
        status = status_of(manifest)
        index["versions"][path.name] = {"status": status, "created_at": manifest.created_at.isoformat()}
        note = f"adopted {path.name} ({status}), which a crash had left out of {self.index_file.name}"
        if status == "canary":
            self._start_canary(index, path.name)
        current = index["current"]
        if status == "promoted" and (current is None or _number(path.name) > _number(current)):
            index["current"] = path.name
            index["history"].append(path.name)
            note += f"; it is current now (was {current or 'none'})"
        return note

    # -- index ----------------------------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        if self.store is not None:
            found = self.store.read_with_etag(self.tenant, self.index_file.name)
            if found is None:
                return {"current": None, "canary": None, "versions": {}, "history": [], _ETAG: None}
            data, etag = found
            index = dict(json.loads(data))
            index.setdefault("canary", None)
            index[_ETAG] = etag  # what _write_index replaces: the index this change was made on
            return index
        if not self.index_file.is_file():
            return {"current": None, "canary": None, "versions": {}, "history": []}
        index = dict(json.loads(self.index_file.read_text()))
        index.setdefault("canary", None)  # indexes written before canaries
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        if self.store is not None:
            etag = index.pop(_ETAG, None)
            try:
                self.store.replace(
                    self.tenant,
                    self.index_file.name,
                    data=json.dumps(index, indent=2, sort_keys=True).encode(),
                    etag=etag,
                )
            except WriteConflict as exc:
                raise RegistryError(
                    f"tenant {self.tenant}: another writer changed {self.store.location}/{self.tenant}/"
                    f"{self.index_file.name} since it was read; this change was not made. One trainer writes a "
                    "tenant at a time: stop the other one, then try again"
                ) from exc
            return
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.index_file.with_suffix(f".json.{os.getpid()}")
        partial.write_text(json.dumps(index, indent=2, sort_keys=True))
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        _crash_point("index-temp")
        partial.replace(self.index_file)
        _fsync_dir(self.root)

    # -- reading --------------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        index = self._index()
        return [self.get(name) for name in sorted(index["versions"])]

    def get(self, name: str) -> Version:
        index = self._index()
        path = self.root / name
        if name not in index["versions"] or not self._has_manifest(name):
            known = ", ".join(sorted(index["versions"])) or "none"
            raise RegistryError(f"tenant {self.tenant}: no adapter version {name!r} (known: {known})")
        entry = index["versions"][name]
        since = datetime.fromisoformat(entry["created_at"]) if entry.get("created_at") else None
        manifest = self._manifest(name)
        if self.store is None:
            return Version(self.tenant, name, path, entry["status"], manifest, since, entry.get("decision"))
        uri = self.store.uri(self.tenant, name)
        return Version(
            self.tenant, name, path, entry["status"], manifest, since, entry.get("decision"), uri, self.store
        )

    def _has_manifest(self, name: str) -> bool:
        if self.store is None:
            return (self.root / name / "manifest.json").is_file()
        return self.store.exists(self.tenant, name, "manifest.json")

    def _manifest(self, name: str) -> Manifest:
        if self.store is None:
            return Manifest.load(self.root / name)
        where = f"{self.store.uri(self.tenant, name)}/manifest.json"
        try:
            data = json.loads(self.store.read(self.tenant, name, "manifest.json"))
        except (OSError, ValueError) as exc:
            raise ContractError(f"{where}: not a readable manifest: {exc}", error_class="InvalidManifest") from exc
        return Manifest.from_json(data, where=where)

    def current(self) -> Version | None:
        name = self._index()["current"]
        return self.get(name) if name else None

    def canary(self) -> Version | None:
        """The version on trial as the tenant's canary, if one is."""
        name = self._index()["canary"]
        return self.get(name) if name else None

    def previous(self) -> Version | None:
        """The version a rollback of the current one would make current again."""
        history = self._index()["history"]
        return self.get(history[-2]) if len(history) >= 2 else None

    def covering(self, offsets: Mapping[int, int]) -> Version | None:
        """The newest version (any status) whose new examples reach ``offsets`` (per partition of
        ``training-examples``, the first offset not counted) on every partition named: the refresh asked for up to
        there has been made already. None when no version reaches them (or there is none)."""
        names = [name for name in self._index()["versions"] if _VERSION_NAME.fullmatch(name)]
        if not names:
            return None
        newest = self.get(max(names, key=_number))  # ranges only grow from one version to the next
        reached = newest.manifest.data.trained_up_to()
        return newest if all(reached.get(p, 0) >= end for p, end in offsets.items()) else None

    def next_name(self) -> str:
        """After every version the index lists *and* every version directory on disk, so that a directory the
        repair could not adopt never has its name given again."""
        if self.store is not None:
            on_disk = self.store.names(self.tenant)
        else:
            on_disk = [p.name for p in self.root.iterdir()] if self.root.is_dir() else []
        names = [n for n in [*self._index()["versions"], *on_disk] if _VERSION_NAME.fullmatch(n)]
        return f"v{max(map(_number, names), default=0) + 1:04d}"

    # -- writing --------------------------------------------------------------------------------
    def publish(self, name: str, write: Callable[[Path], None], status: str) -> Version:
        """Write a version atomically: ``write`` fills a temporary directory (``manifest.json`` included, which
        must read back as a ``Manifest``), which is fsynced and renamed; then the index lists it. On an object
        store the files are uploaded in place and ``manifest.json`` is created last (the module docstring)."""
        with self.writing():
            if self.store is not None:
                self._upload(name, write)
                return self._list_published(name, status)
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
            _crash_point("renamed")
            return self._list_published(name, status)

    def _list_published(self, name: str, status: str) -> Version:
        index = self._index()
        index["versions"][name] = {"status": status, "created_at": datetime.now(UTC).isoformat()}
        if status == "promoted":
            index["current"] = name
            index["history"].append(name)
        elif status == "canary":
            self._start_canary(index, name)
        self._write_index(index)
        _crash_point("index-written")
        return self.get(name)

    def _upload(self, name: str, write: Callable[[Path], None]) -> None:
        """A version onto the object store: files in place, then the manifest as the commit record."""
        assert self.store is not None
        store = self.store
        if name in self._index()["versions"] or store.exists(self.tenant, name, "manifest.json"):
            raise RegistryError(f"tenant {self.tenant}: version {name} exists and published versions are immutable")
        with tempfile.TemporaryDirectory(prefix=f"streamtune-{name}-") as tmp:
            folder = Path(tmp)
            write(folder)
            Manifest.load(folder)  # a version is never published without a manifest that reads back
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "manifest.json")
            try:
                for file in files:
                    store.write(self.tenant, name, file.name, data=file.read_bytes())
                    _crash_point("uploading")
                store.create(self.tenant, name, "manifest.json", data=(folder / "manifest.json").read_bytes())
            except WriteConflict as exc:  # its files may be the other writer's now: leave them to it
                raise RegistryError(
                    f"tenant {self.tenant}: another writer published {name} at the same time; one trainer writes "
                    "a tenant at a time"
                ) from exc
            except BaseException:
                # Best effort, once: with the store down this fails too, and the next writer's repair removes the
                # folder (no manifest: never listed, never announced).
                with suppress(Exception):
                    store.fs.rm(store.key(self.tenant, name), recursive=True)
                raise
        _crash_point("renamed")

    def _start_canary(self, index: dict[str, Any], name: str) -> None:
        """``name`` becomes the canary; one still running (the refresh waits for a decision, so only a crash's
        repair or an operator meets one) is rolled back, superseded."""
        running = index.get("canary")
        if running and running != name and running in index["versions"]:
            index["versions"][running]["status"] = "rolled_back"
            index["versions"][running]["decision"] = {
                "decision": "rollback",
                "reason": f"superseded by {name}",
                "at": datetime.now(UTC).isoformat(),
            }
        index["canary"] = name

    def promote(self, name: str, *, decision: dict[str, Any] | None = None) -> Version:
        """Make ``name`` current (a canary's trial ends); ``decision``: the figures it was decided on."""
        with self.writing():
            self.get(name)
            index = self._index()
            index["versions"][name]["status"] = "promoted"
            if decision is not None:
                index["versions"][name]["decision"] = decision
            if index["canary"] == name:
                index["canary"] = None
            index["current"] = name
            index["history"].append(name)
            self._write_index(index)
            _crash_point("index-written")
            return self.get(name)

    def end_canary(self, name: str, decision: dict[str, Any]) -> Version:
        """Roll the canary ``name`` back: it is marked rolled_back with ``decision``; the current version keeps
        every query."""
        with self.writing():
            index = self._index()
            if index["canary"] != name:
                raise RegistryError(f"tenant {self.tenant}: {name} is not the running canary ({index['canary']})")
            index["versions"][name]["status"] = "rolled_back"
            index["versions"][name]["decision"] = decision
            index["canary"] = None
            self._write_index(index)
            _crash_point("index-written")
            return self.get(name)

    def rollback(self, *, decision: dict[str, Any] | None = None) -> Version:
        """Make the previously current version current again. ``decision`` (a degradation found on live
        feedback): the version rolled back is marked rolled_back with it; by hand it stays promoted."""
        with self.writing():
            index = self._index()
            history = index["history"]
            if len(history) < 2:
                raise RegistryError(f"tenant {self.tenant}: nothing to roll back to (history: {history or 'empty'})")
            left = history.pop()
            if decision is not None:
                index["versions"][left]["status"] = "rolled_back"
                index["versions"][left]["decision"] = decision
            index["current"] = history[-1]
            self._write_index(index)
            _crash_point("index-written")
            return self.get(history[-1])


def status_of(manifest: Manifest) -> str:
    """The status a version's own manifest gives it when it is published (or adopted by the repair)."""
    if not manifest.gate.promoted:
        return "rejected"
    return "canary" if manifest.gate.canary_percent else "promoted"


def state_of(version: Version, current: Version | None) -> str:
    """A version's state as people are shown it (``adapters list``, the demo): ``current`` for the current version
    (``current``, read once by the caller), ``canary N%`` for a running canary, else its status."""
    if current is not None and version.name == current.name:
        return "current"
    if version.status == "canary":
        return f"canary {version.manifest.gate.canary_percent}%"
    return version.status


def open_registry(settings: Settings, tenant: str) -> AdapterRegistry:
    """``tenant``'s registry in ``training.adapters_dir`` (a folder or an object store), as every writer opens it."""
    return AdapterRegistry(open_store(settings), tenant, lock_timeout_s=settings.training.lock_timeout_s)


def tenants(root: Path | AdapterStore) -> list[str]:
    """The tenants that have a registry under ``root`` (an index, a version or a crash's leftovers)."""
    if isinstance(root, AdapterStore):
        if not root.local:
            return [t for t in root.names() if any(map(_registry_name, root.names(t)))]
        root = Path(root.location)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(map(_registry_file, d.iterdir())))


def _registry_file(path: Path) -> bool:
    return _registry_name(path.name)


def _registry_name(name: str) -> bool:
    return name == "registry.json" or name.startswith(".partial-") or bool(_VERSION_NAME.fullmatch(name))
