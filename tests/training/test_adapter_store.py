"""The adapter store without a server: what ``training.adapters_dir`` accepts, where announcements may point,
which failures are retried, and the registry's object-store path on fsspec's in-memory filesystem (no
conditional writes there; tests/training/test_s3_store.py runs the same against SeaweedFS)."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import pytest

from streamtune.adapter_store import WEIGHTS, AdapterStore, _transient, open_store
from streamtune.errors import ConfigError, RetryExhausted
from streamtune.harness import sample_manifest
from streamtune.settings import load_settings
from training.registry import AdapterRegistry, status_of, tenants


def test_a_path_stays_a_local_store_and_a_url_names_an_object_store(tmp_path: Path) -> None:
    local = load_settings(config_files=[], training={"adapters_dir": str(tmp_path / "a")})
    assert local.training.adapters_dir == tmp_path / "a" and local.adapter_store == str(tmp_path / "a")
    assert load_settings(config_files=[], training={"adapters_dir": f"file://{tmp_path}/b"}).adapters_dir == (
        tmp_path / "b"
    )
    remote = load_settings(config_files=[], training={"adapters_dir": "s3://streamtune-adapters/"})
    assert remote.adapter_store == "s3://streamtune-adapters"
    with pytest.raises(ConfigError, match="local folder only"):
        _ = remote.adapters_dir
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        load_settings(config_files=[], training={"adapters_dir": "s3://"})


def test_the_s3_settings_default_to_the_local_stack_and_show_no_secret() -> None:
    settings = load_settings(config_files=[])
    options = settings.s3.storage_options()
    assert options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:8333" and settings.s3.port == 8333
    assert options["key"] == "streamtune" and options["secret"]
    shown = load_settings(config_files=[], s3={"secret_access_key": "s3-secret-5"}).dump_toml()
    assert "s3-secret-5" not in shown
    assert load_settings(config_files=[], s3={"endpoint_url": "https://s3.example.com"}).s3.port is None


def test_an_announcement_may_name_only_the_version_s_place_in_the_store(tmp_path: Path) -> None:
    remote = open_store(load_settings(config_files=[], training={"adapters_dir": "s3://bucket/prefix/"}))
    assert remote.uri("acme", "v0001") == "s3://bucket/prefix/acme/v0001"
    local = open_store(load_settings(config_files=[], training={"adapters_dir": str(tmp_path)}))
    assert local.uri("acme", "v0001") == (tmp_path / "acme" / "v0001").resolve().as_uri()
    with pytest.raises(ValueError, match="inside"):
        remote.fetch("..", "..", "0" * 64)


def test_only_connection_failures_time_outs_and_5xx_are_retried() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    def answered(status: int, code: str) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert _transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert _transient(TimeoutError())
    wrapped = OSError(5, "InternalError")
    wrapped.__cause__ = answered(500, "InternalError")
    assert _transient(wrapped)
    assert not _transient(FileNotFoundError("no such key"))
    denied = PermissionError("AccessDenied")
    denied.__cause__ = answered(403, "AccessDenied")
    assert not _transient(denied)
    assert not _transient(answered(412, "PreconditionFailed"))


def test_the_registry_on_an_fsspec_url_lists_only_committed_versions(tmp_path: Path) -> None:
    url = f"memory://streamtune-{uuid.uuid4().hex[:8]}/adapters"
    store = open_store(load_settings(config_files=[], cache_dir=tmp_path, training={"adapters_dir": url}))
    registry = AdapterRegistry(store, "acme")
    for name in ("v0001", "v0002"):
        weights = f"weights of {name}".encode()
        manifest = sample_manifest("acme", name, adapter={"sha256": hashlib.sha256(weights).hexdigest()})

        def write(target: Path, weights: bytes = weights, manifest_json: str = manifest.to_json()) -> None:
            (target / "adapter_model.safetensors").write_bytes(weights)
            (target / "manifest.json").write_text(manifest_json)

        registry.publish(name, write, status_of(manifest))
    store.write("acme", "v0003", "adapter_model.safetensors", data=b"an unfinished publish")
    assert [v.name for v in registry.versions()] == ["v0001", "v0002"]
    current = registry.current()
    assert current is not None and current.uri == f"{url}/acme/v0002"
    assert (current.local_dir() / "adapter_model.safetensors").read_bytes() == b"weights of v0002"
    assert tenants(store) == ["acme"]
    with registry.writing():
        assert registry.repaired == ["removed the half-written v0003 (no manifest: its publish never finished)"]
    assert registry.next_name() == "v0003"


def test_copiers_sharing_a_cache_copy_a_version_once_and_never_under_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copiers fetch one version together: here two threads, as the lock is an OS file lock either way
    (tests/training/test_s3_store.py runs four processes against a real server)."""
    url = f"memory://streamtune-{uuid.uuid4().hex[:8]}/adapters"
    store = open_store(load_settings(config_files=[], cache_dir=tmp_path, training={"adapters_dir": url}))
    weights = b"the weights of v0001"
    store.write("acme", "v0001", WEIGHTS, data=weights)
    store.write("acme", "v0001", "manifest.json", data=b"{}")
    stale = tmp_path / "adapters-cache" / "acme" / ".partial-v0001-99999"  # a copier killed mid-copy
    stale.mkdir(parents=True)
    (stale / WEIGHTS).write_bytes(b"the first half")
    reads: list[tuple[str, ...]] = []
    first_read, go_on = threading.Event(), threading.Event()
    read = AdapterStore.read

    def held_read(self: AdapterStore, *parts: str) -> bytes:
        reads.append(parts)
        if len(reads) == 1:  # the first copier stops half-way through its copy
            first_read.set()
            assert go_on.wait(timeout=60)
        return read(self, *parts)

    monkeypatch.setattr(AdapterStore, "read", held_read)
    got: dict[str, Path] = {}

    def fetch(name: str) -> None:
        got[name] = store.fetch("acme", "v0001", hashlib.sha256(weights).hexdigest())

    first = threading.Thread(target=fetch, args=("first",))
    first.start()
    assert first_read.wait(timeout=60)
    second = threading.Thread(target=fetch, args=("second",))
    second.start()
    second.join(timeout=1.0)
    went_ahead = not second.is_alive()
    go_on.set()
    assert not went_ahead, "the second fetch went ahead while the first was still copying"
    first.join(timeout=60)
    second.join(timeout=60)
    assert got["first"] == got["second"] == tmp_path.resolve() / "adapters-cache" / "acme" / "v0001"
    assert (got["first"] / WEIGHTS).read_bytes() == weights
    assert len(reads) == 2  # the weights and the manifest, copied once: the second found the verified copy
    assert not stale.exists()


def test_a_copy_held_up_by_another_process_past_the_give_up_time_is_reported_unavailable(tmp_path: Path) -> None:
    from filelock import FileLock

    url = f"memory://streamtune-{uuid.uuid4().hex[:8]}/adapters"
    settings = load_settings(config_files=[], cache_dir=tmp_path, training={"adapters_dir": url}, s3={"give_up_s": 1})
    store = open_store(settings)
    store.write("acme", "v0001", WEIGHTS, data=b"weights")
    lock = tmp_path / "adapters-cache" / "acme" / ".v0001.lock"
    lock.parent.mkdir(parents=True)
    with FileLock(lock), pytest.raises(RetryExhausted, match=r"another process has been copying .* for over 1s"):
        store.fetch("acme", "v0001", hashlib.sha256(b"weights").hexdigest())
    assert not (lock.parent / "v0001").exists()
