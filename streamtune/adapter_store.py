"""The adapter store: where the registry keeps its versions, a local folder or any fsspec URL (``s3://...``).

``open_store(settings)`` gives every reader and writer (registry, publish, export, replay, ``serve``) the same
view of ``training.adapters_dir``: an fsspec filesystem and a root, with the ``[s3]`` settings' endpoint and
credentials for ``s3://``. A version lives at ``<store>/<tenant>/<version>/``; ``uri`` is how an announcement
names it (a ``file://`` URI for a local folder, the URL itself otherwise), and nothing outside exactly that
place is ever loaded (``inference/adapters.py``).

Object stores have no rename, so the registry's promises rest on three things there (training/registry.py):
every object is written whole by one PUT, so a reader sees all of it or none of it; a version's
``manifest.json`` is its commit record, written last with ``create`` (``If-None-Match: *``); and the index is
replaced with ``replace`` (``If-Match: <the ETag read>``), so a second writer's change is refused with
``WriteConflict``, never silently overwritten. A conditional write whose answer was lost and that is sent again
finds its own object: the object is read back, and identical bytes count as success.

A request that fails on a connection, a time-out or a 5xx is retried with the one backoff policy
(``streamtune.retry``) until ``s3.give_up_s`` has passed, then ``RetryExhausted`` is raised; other failures
(a missing object, a refused credential) are raised at once.

``fetch`` copies a version of a remote store into ``<cache_dir>/adapters-cache/<tenant>/<version>`` (safetensors
only, the weights' sha256 checked against the manifest's) so that PEFT and the trainer read local files. Processes
that share the cache copy each version once, under a lock file beside it (``.<version>.lock``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from streamtune.errors import RetryExhausted, StreamtuneError
from streamtune.retry import Backoff, retrying
from streamtune.settings import Settings

__all__ = ["WEIGHTS", "AdapterStore", "CopyFailed", "WriteConflict", "open_store", "store_at"]

log = logging.getLogger(__name__)

T = TypeVar("T")

WEIGHTS = "adapter_model.safetensors"
PICKLES = ("adapter_model.bin", "pytorch_model.bin")
_CACHE = "adapters-cache"
_COPY_WAIT_S = 600.0
"""How long a copier waits for another process's copy of the same version when ``s3.give_up_s`` is unset."""


class WriteConflict(StreamtuneError):
    """A conditional write was refused: another writer created or changed the object first."""


class CopyFailed(StreamtuneError):
    """A version could not be copied into the local cache: a read the store refused, or a write the disk refused
    (full, read-only)."""


@dataclass(frozen=True)
class AdapterStore:
    location: str
    """An absolute local path, or a URL without a trailing ``/``."""
    fs: Any
    """The fsspec filesystem."""
    root: str
    """``location`` as the filesystem names it (no protocol)."""
    cache_dir: Path
    """Where ``fetch`` copies versions of a remote store."""
    backoff: Backoff

    @property
    def local(self) -> bool:
        return "://" not in self.location

    def key(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if parts else self.root

    def uri(self, tenant: str, version: str) -> str:
        """The one place an announcement of ``tenant`` ``version`` may name."""
        if self.local:
            return (Path(self.location) / tenant / version).resolve().as_uri()
        return f"{self.location}/{tenant}/{version}"

    # -- requests, retried while transient ------------------------------------------------------
    def _call(self, what: str, operation: Callable[[], T]) -> T:
        if self.local:
            return operation()
        return retrying(
            operation,
            transient=_transient,
            backoff=self.backoff,
            what=f"adapter store {self.location} ({what})",
            fix="check that the store is up (`streamtune stack status` for the local one) and reachable",
            log=log,
        )

    def read(self, *parts: str) -> bytes:
        return bytes(self._call(f"read {'/'.join(parts)}", lambda: self.fs.cat_file(self.key(*parts))))

    def exists(self, *parts: str) -> bool:
        return bool(self._call(f"look up {'/'.join(parts)}", lambda: self.fs.exists(self.key(*parts))))

    def names(self, *parts: str) -> list[str]:
        """The names directly under ``parts`` that hold an object (an object, or a folder with one below it);
        none when there are none. Empty folders do not count: SeaweedFS, for one, lists a prefix for a while
        after its last object is deleted."""
        base = self.key(*parts).rstrip("/") + "/"

        def listing() -> list[str]:
            try:
                found = self.fs.find(base, withdirs=False)
            except FileNotFoundError:
                return []
            below = (str(p)[len(base) :] for p in found if str(p).startswith(base))
            return sorted({rel.split("/", 1)[0] for rel in below if rel and not rel.endswith("/")})

        return self._call(f"list {'/'.join(parts) or 'the root'}", listing)

    def _isdir(self, *parts: str) -> bool:
        return bool(self._call(f"look up {'/'.join(parts)}", lambda: self.fs.isdir(self.key(*parts))))

    def write(self, *parts: str, data: bytes) -> None:
        """Write one object whole (a retry writes the same bytes again: harmless)."""
        self._call(f"write {'/'.join(parts)}", lambda: self.fs.pipe_file(self.key(*parts), data))

    def create(self, *parts: str, data: bytes) -> None:
        """Write an object that must not exist yet (``If-None-Match: *``); ``WriteConflict`` if another writer
        made it. A retried request that finds its own bytes there succeeded the first time."""
        self._conditional(parts, data, {"mode": "create"})

    def replace(self, *parts: str, data: bytes, etag: str | None) -> None:
        """Replace the object last read with ``etag`` (``If-Match``), or create it when ``etag`` is None;
        ``WriteConflict`` if it changed since. A filesystem without ETags (``""``: memory, local) is simply
        overwritten: there only the single writer keeps it consistent."""
        if etag is None:
            return self.create(*parts, data=data)
        if not etag or self.fs.protocol[0] not in ("s3", "s3a"):
            return self.write(*parts, data=data)
        self._conditional(parts, data, {"IfMatch": etag})

    def _conditional(self, parts: tuple[str, ...], data: bytes, condition: dict[str, Any]) -> None:
        key = self.key(*parts)
        try:
            self._call(f"write {'/'.join(parts)}", lambda: self.fs.pipe_file(key, data, **condition))
        except (FileExistsError, OSError) as exc:
            if not _precondition_failed(exc):
                raise
            if self.read(*parts) == data:
                return  # our own earlier attempt landed; its answer was lost
            raise WriteConflict(
                f"adapter store {self.location}: {'/'.join(parts)} was written by another writer first"
            ) from exc

    def read_with_etag(self, *parts: str) -> tuple[bytes, str] | None:
        """The object and the ETag to ``replace`` it with (``""`` where the filesystem has none); None when it
        does not exist."""

        def read() -> tuple[bytes, str] | None:
            try:
                info = self.fs.info(self.key(*parts))
                return bytes(self.fs.cat_file(self.key(*parts))), str(info.get("ETag") or "")
            except FileNotFoundError:
                return None

        return self._call(f"read {'/'.join(parts)}", read)

    def remove(self, *parts: str) -> None:
        """Remove a folder and everything under it (no error when it is gone)."""

        def remove() -> None:
            with suppress(FileNotFoundError):
                self.fs.rm(self.key(*parts), recursive=True)

        self._call(f"remove {'/'.join(parts)}", remove)

    # -- local copies ---------------------------------------------------------------------------
    def fetch(self, tenant: str, version: str, sha256: str) -> Path:
        """A local folder holding ``tenant`` ``version`` (a local store's own; a remote one's copy under
        ``<cache_dir>/adapters-cache``), its weights checked against ``sha256``. ValueError when a check fails,
        ``CopyFailed`` when the copy could not be made, ``RetryExhausted`` when the store stayed unreachable or
        another process held the version's copy lock past ``s3.give_up_s``.

        Processes on one host (``serve`` replicas, trainer workers) share the cache: one copies a version under
        the lock file ``.<version>.lock`` while the others wait, then find the copy verified. Without the lock a
        second copier removed the first one's copy while it was being read."""
        if self.local:
            return Path(self.location) / tenant / version
        cache = (self.cache_dir / _CACHE).resolve()
        target = (cache / tenant / version).resolve()
        if target.parent.parent != cache:
            raise ValueError(f"{tenant} {version} does not name a place inside {cache}")
        from filelock import FileLock, Timeout

        wait_s = self.backoff.give_up_s or _COPY_WAIT_S
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(target.with_name(f".{version}.lock"), timeout=wait_s):
                if (target / WEIGHTS).is_file() and _sha256_file(target / WEIGHTS) == sha256:
                    return target  # published versions never change, so a verified copy stays good
                self._copy(tenant, version, sha256, target)
        except Timeout as exc:
            raise RetryExhausted(
                f"another process has been copying {self.uri(tenant, version)} into {target.parent} for over "
                f"{wait_s:.0f}s; the store is slow or down (`streamtune stack status` for the local one)"
            ) from exc
        except OSError as exc:
            raise CopyFailed(f"could not copy {self.uri(tenant, version)} into {target.parent}: {exc}") from exc
        return target

    def _copy(self, tenant: str, version: str, sha256: str, target: Path) -> None:
        """Copy, check and rename into place; the caller holds the version's lock."""
        names = self.names(tenant, version)
        if pickled := [n for n in names if n in PICKLES]:
            raise ValueError(
                f"{self.uri(tenant, version)} holds pickled weights ({', '.join(pickled)}); only safetensors are loaded"
            )
        if WEIGHTS not in names:
            raise ValueError(f"{self.uri(tenant, version)}/{WEIGHTS} is missing")
        for stale in target.parent.glob(f".partial-{version}-*"):  # a copier that was killed mid-copy
            shutil.rmtree(stale, ignore_errors=True)
        partial = target.with_name(f".partial-{version}-{os.getpid()}")
        partial.mkdir(parents=True)
        try:
            for name in names:
                if self._isdir(tenant, version, name):
                    continue  # a version is flat; nothing below it is ever loaded
                (partial / name).write_bytes(self.read(tenant, version, name))
            digest = _sha256_file(partial / WEIGHTS)
            if digest != sha256:
                raise ValueError(f"the weights' sha256 {digest[:16]}... is not the manifest's {sha256[:16]}...")
            shutil.rmtree(target, ignore_errors=True)  # a copy that failed its check
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    return None


def _precondition_failed(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    return any(_status(e) == 412 or "PreconditionFailed" in str(e) for e in _chain(exc))


def _transient(exc: BaseException) -> bool:
    """Connection refused or reset, time-outs and 5xx answers: the store may come back. Everything else (a
    missing object, a refused credential, a failed precondition) is not retried."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # an fsspec backend other than s3fs
        boto: tuple[type[BaseException], ...] = ()
    else:
        boto = (BotoConnectionError, HTTPClientError)
    for error in _chain(exc):
        if isinstance(error, (*boto, ConnectionError, TimeoutError)):
            return True
        if type(error).__module__.startswith("aiohttp") and "Error" in type(error).__name__:
            return True
        status = _status(error)
        if status is not None:
            return status >= 500
        if isinstance(error, OSError) and error.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT):
            return True
    return False


def store_at(location: str, settings: Settings) -> AdapterStore:
    """The store at ``location`` (a local path or an fsspec URL), opened with ``settings``' ``[s3]`` options."""
    import fsspec

    s3 = settings.s3
    backoff = Backoff(initial_s=0.2, max_s=5.0, give_up_s=s3.give_up_s, report_every_s=5.0)
    if "://" not in location:
        path = str(Path(location).expanduser().resolve())
        return AdapterStore(path, fsspec.filesystem("file"), path, settings.cache_dir, backoff)
    protocol = location.split("://", 1)[0]
    options = s3.storage_options() if protocol in ("s3", "s3a") else {}
    fs, root = fsspec.core.url_to_fs(location, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = 1  # s3fs's own retry loop (a class attribute): one attempt, the backoff is ours
    return AdapterStore(location.rstrip("/"), fs, root.rstrip("/"), settings.cache_dir, backoff)


def open_store(settings: Settings) -> AdapterStore:
    """``training.adapters_dir`` as a store (default ``<cache_dir>/adapters``)."""
    return store_at(settings.adapter_store, settings)
