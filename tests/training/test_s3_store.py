"""The adapter store on S3, against a real server: the local stack's SeaweedFS (component ``s3``), or a private one
for the outage tests. Each test writes under its own uuid-named prefix of the stack's bucket.

What is promised (training/registry.py, streamtune/adapter_store.py): a version published to ``s3://...`` reads
back through the registry, exports, is copied and verified for loading (once, by processes sharing a cache); a
second writer is refused, never lost;
and a store that goes away during a publish is waited out (bounded) or fails the publish with nothing listed,
while what serve loaded keeps serving.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import training.registry as registry_module
from inference.adapters import AdapterBook
from streamtune.adapter_store import AdapterStore, WriteConflict, open_store
from streamtune.contracts import AdapterUpdate
from streamtune.errors import RetryExhausted
from streamtune.harness import adapter_update, sample_manifest
from streamtune.settings import Settings
from streamtune.stack import Stack
from tests.streamtune.test_stack import free_s3_ports
from training.publish import export_version
from training.registry import AdapterRegistry, RegistryError, Version, status_of, tenants

pytestmark = pytest.mark.integration

WEIGHTS = "adapter_model.safetensors"


def _in_store(settings: Settings, url: str, cache: Path, **s3: object) -> Settings:
    training = settings.training.model_copy(update={"adapters_dir": url})
    return settings.model_copy(
        update={"training": training, "cache_dir": cache, "s3": settings.s3.model_copy(update=s3)}
    )


@pytest.fixture
def s3_settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The stack's settings with the adapter store at a fresh prefix of the stack's bucket; removed afterwards."""
    url = f"s3://{stack.s3.bucket}/test-{uuid.uuid4().hex[:12]}"
    settings = _in_store(stack, url, tmp_path / "cache")
    yield settings
    store = open_store(settings)
    store.fs.rm(store.root, recursive=True)


def _publish(registry: AdapterRegistry, name: str, weights: bytes | None = None, **manifest: object) -> Version:
    weights = weights if weights is not None else f"weights of {name}".encode()
    made = sample_manifest(registry.tenant, name, adapter={"sha256": hashlib.sha256(weights).hexdigest()}, **manifest)

    def write(target: Path) -> None:
        (target / WEIGHTS).write_bytes(weights)
        (target / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        (target / "manifest.json").write_text(made.to_json())

    return registry.publish(name, write, status_of(made))


def _update(version: Version, base_model: str = "tiny", uri: str | None = None) -> AdapterUpdate:
    return adapter_update(
        version.tenant,
        version.name,
        uri=uri or version.uri,
        base_model=base_model,
        manifest=version.manifest,
        state="current",
    )


def test_versions_published_to_s3_read_back_through_the_registry(s3_settings: Settings) -> None:
    store = open_store(s3_settings)
    writer = AdapterRegistry(store, "acme")
    first = _publish(writer, writer.next_name())
    second = _publish(writer, writer.next_name())

    reader = AdapterRegistry(open_store(s3_settings), "acme")  # another process, as serve or the CLI would be
    assert [v.name for v in reader.versions()] == ["v0001", "v0002"]
    current = reader.current()
    assert current is not None and current.name == "v0002"
    assert current.manifest == second.manifest
    assert current.uri == f"{s3_settings.adapter_store}/acme/v0002"
    assert reader.next_name() == "v0003"
    assert tenants(store) == ["acme"]
    assert store.exists("acme", "registry.json") and store.exists("acme", "v0001", "manifest.json")

    assert writer.rollback().name == "v0001"  # the index is replaced (If-Match), not renamed
    assert reader.current() == first
    with pytest.raises(RegistryError, match="immutable"):
        _publish(writer, "v0001")


def test_export_and_a_local_copy_read_a_version_from_s3(s3_settings: Settings, tmp_path: Path) -> None:
    registry = AdapterRegistry(open_store(s3_settings), "acme")
    version = _publish(registry, "v0001", b"the weights")
    written = export_version(version, str(tmp_path / "exported"))
    assert set(written) >= {WEIGHTS, "adapter_config.json", "README.md", "manifest.json"}
    assert (tmp_path / "exported" / WEIGHTS).read_bytes() == b"the weights"

    # what replay and a refresh train on: a verified local copy under <cache>/adapters-cache
    local = version.local_dir()
    assert local == s3_settings.cache_dir.resolve() / "adapters-cache" / "acme" / "v0001"
    assert (local / WEIGHTS).read_bytes() == b"the weights"
    assert (local / "manifest.json").is_file()


def test_serve_loads_only_a_verified_copy_from_inside_the_store(s3_settings: Settings) -> None:
    store = open_store(s3_settings)
    registry = AdapterRegistry(store, "acme")
    version = _publish(registry, "v0001", b"good weights")
    book = AdapterBook(store, "tiny")
    assert book.record(_update(version))
    loaded = book.resolve("acme", None)
    assert loaded is not None and (loaded.path / WEIGHTS).read_bytes() == b"good weights"
    assert loaded.path.is_relative_to(s3_settings.cache_dir)

    elsewhere = f"s3://{s3_settings.s3.bucket}/another-store/acme/v0001"
    assert not book.record(_update(version, uri=elsewhere))
    assert not book.record(_update(version, uri=version.uri.replace("/acme/", "/globex/")))
    # weights changed in the store after publishing: the copy is refused (a fresh cache, so nothing is reused)
    other = _publish(registry, "v0002", b"published weights")
    store.write("acme", "v0002", WEIGHTS, data=b"changed weights")
    assert not book.record(_update(other))
    assert any("sha256" in reason for reason in book.refused)
    assert book.resolve("acme", None) == loaded


_FETCHER = """
import hashlib, sys, time
from pathlib import Path
from streamtune.adapter_store import open_store
from streamtune.settings import load_settings

ready, go, sha256 = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
store = open_store(load_settings(config_files=[]))
ready.touch()
while not go.exists():
    time.sleep(0.01)
path = store.fetch("acme", "v0001", sha256)
for _ in range(10):  # what serve and a trainer do next: read the copy
    assert hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest() == sha256
print(path)
"""


def test_processes_sharing_a_cache_fetch_one_version_together(s3_settings: Settings, tmp_path: Path) -> None:
    """Four processes (serve replicas, trainer workers) on one host, one cache, fetching the same version at the
    same moment. Without the copy lock one of them failed in 2 of 6 runs of this test: it read a copy that
    another had just removed, or its own rename was refused. tests/training/test_adapter_store.py pins that
    interleaving; this runs it for real."""
    weights = os.urandom(16 << 20)
    _publish(AdapterRegistry(open_store(s3_settings), "acme"), "v0001", weights)
    sha256 = hashlib.sha256(weights).hexdigest()
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "STREAMTUNE__TRAINING__ADAPTERS_DIR": s3_settings.adapter_store,
        "STREAMTUNE__CACHE_DIR": str(s3_settings.cache_dir),
    }
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCHER, str(r), str(go), sha256],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        assert all(c.poll() is None for c in children), [c.communicate() for c in children]
        time.sleep(0.05)
    assert all(r.exists() for r in ready), "the fetchers did not start within 120 s"
    go.touch()
    outputs = [c.communicate(timeout=120) for c in children]
    assert [c.returncode for c in children] == [0, 0, 0, 0], [err.splitlines()[-1:] for _, err in outputs]
    copy = s3_settings.cache_dir.resolve() / "adapters-cache" / "acme" / "v0001"
    assert [out.strip() for out, _ in outputs] == [str(copy)] * 4
    assert [p.name for p in copy.parent.iterdir() if p.suffix != ".lock"] == ["v0001"]  # no partial copy left


def test_a_second_writer_is_refused_and_nothing_is_lost(s3_settings: Settings) -> None:
    store = open_store(s3_settings)
    one, two = AdapterRegistry(store, "acme"), AdapterRegistry(open_store(s3_settings), "acme")
    _publish(one, "v0001")
    with pytest.raises(WriteConflict):  # the manifest is the commit record: created once
        store.create("acme", "v0001", "manifest.json", data=b"{}")
    stale = one._index()  # read before the other writer's change
    _publish(two, "v0002")
    with pytest.raises(RegistryError, match="another writer changed"):
        one._write_index(stale)
    assert [v.name for v in one.versions()] == ["v0001", "v0002"]


def test_an_unfinished_publish_is_never_listed_and_is_cleaned_up(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = AdapterRegistry(open_store(s3_settings), "acme")
    _publish(registry, "v0001")

    def die(point: str) -> None:
        if point == "uploading":
            raise KeyboardInterrupt("killed mid-upload")

    monkeypatch.setattr(registry_module, "_crash_point", die)
    with pytest.raises(KeyboardInterrupt):
        _publish(registry, "v0002")
    monkeypatch.undo()
    store = registry.store
    assert store is not None
    store.write("acme", "v0002", WEIGHTS, data=b"left by a writer that died")  # as if its clean-up never ran
    assert [v.name for v in registry.versions()] == ["v0001"]
    with registry.writing():
        assert registry.repaired == ["removed the half-written v0002 (no manifest: its publish never finished)"]
    assert "v0002" not in store.names("acme")
    assert _publish(registry, registry.next_name()).name == "v0002"


# -- outages: a private SeaweedFS, stopped and started by the test ---------------------------------------


@pytest.fixture
def private_s3(stack: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Stack]]:
    """A SeaweedFS of this test's own (free ports, own home; the build is shared through the cache)."""
    ports = free_s3_ports()
    base = stack.model_copy(update={"stack": stack.stack.model_copy(update={"home": tmp_path / "stack"})})
    base = base.model_copy(update={"s3": base.s3.model_copy(update=ports)})
    private = Stack(base, say=lambda _: None, only=["s3"])  # base keeps the shared cache: the build is there
    private.up()
    yield _in_store(base, f"s3://{stack.s3.bucket}/outage", tmp_path / "cache", give_up_s=30.0), private
    _kill(private)  # its data is thrown away: no need for its graceful stop (10-25 s)
    private.down()


def _kill(private: Stack) -> None:
    """The server dies at once (SIGKILL to its process group), as in a crash or a lost machine."""
    (status,) = private.status()
    if status.pid is not None:
        os.killpg(status.pid, signal.SIGKILL)
        while private.status()[0].state == "healthy":
            time.sleep(0.1)


def _outage_at_upload(private: Stack, restart_after_s: float | None) -> tuple[threading.Event, list[Exception]]:
    """A crash-point hook that stops the private server at the first upload and, unless None, starts it again
    ``restart_after_s`` later."""
    stopped, errors = threading.Event(), []

    def restart() -> None:
        time.sleep(restart_after_s or 0)
        try:
            private.up()
        except Exception as exc:
            errors.append(exc)

    def hook(point: str) -> None:
        if point == "uploading" and not stopped.is_set():
            _kill(private)
            stopped.set()
            if restart_after_s is not None:
                threading.Thread(target=restart, daemon=True).start()

    registry_module._crash_point = hook
    return stopped, errors


@pytest.fixture
def restore_crash_point() -> Iterator[None]:
    yield
    registry_module._crash_point = registry_module._no_crash


@pytest.mark.fault
@pytest.mark.usefixtures("restore_crash_point")
def test_s3_outage_during_a_publish_is_waited_out_and_serve_keeps_what_it_loaded(
    private_s3: tuple[Settings, Stack],
) -> None:
    settings, private = private_s3
    store = open_store(settings)
    registry = AdapterRegistry(store, "acme")
    first = _publish(registry, "v0001", b"first")
    book = AdapterBook(store, "tiny")
    assert book.record(_update(first))

    stopped, errors = _outage_at_upload(private, restart_after_s=3.0)
    begin = time.monotonic()
    second = _publish(registry, "v0002", b"second")
    assert stopped.is_set() and not errors and time.monotonic() - begin >= 3.0
    assert [v.name for v in AdapterRegistry(open_store(settings), "acme").versions()] == ["v0001", "v0002"]
    assert second.local_dir().joinpath(WEIGHTS).read_bytes() == b"second"

    # the store down again: serve keeps answering with what it loaded, and refuses (does not crash on) a new
    # version it cannot fetch
    third = _publish(registry, "v0003", b"third")
    _kill(private)
    impatient = AdapterBook(_store_giving_up_in(store, 1.0), "tiny")
    assert impatient.record(_update(first))  # its verified copy is in the cache already
    assert not impatient.record(_update(third))
    assert impatient.refused[-1].startswith("acme v0003: unavailable")
    for serving in (book, impatient):
        loaded = serving.resolve("acme", None)
        assert loaded is not None and loaded.version == "v0001" and (loaded.path / WEIGHTS).read_bytes() == b"first"


@pytest.mark.fault
@pytest.mark.usefixtures("restore_crash_point")
def test_an_outage_past_the_give_up_time_fails_the_publish_and_lists_nothing(
    private_s3: tuple[Settings, Stack],
) -> None:
    settings, private = private_s3
    store = _store_giving_up_in(open_store(settings), 2.0)
    registry = AdapterRegistry(store, "acme")
    _publish(registry, "v0001")

    stopped, _ = _outage_at_upload(private, restart_after_s=None)
    with pytest.raises(RetryExhausted, match="adapter store"):
        _publish(registry, "v0002")
    assert stopped.is_set()
    registry_module._crash_point = registry_module._no_crash
    private.up()

    fresh = AdapterRegistry(open_store(settings), "acme")
    assert [v.name for v in fresh.versions()] == ["v0001"]
    current = fresh.current()
    assert current is not None and current.name == "v0001"
    with fresh.writing():  # whatever the failed publish left (no manifest) goes; the name is free again
        pass
    assert "v0002" not in fresh.store.names("acme")  # type: ignore[union-attr]
    assert _publish(fresh, fresh.next_name()).name == "v0002"


def _store_giving_up_in(store: AdapterStore, seconds: float) -> AdapterStore:
    from dataclasses import replace

    return replace(store, backoff=replace(store.backoff, give_up_s=seconds))
