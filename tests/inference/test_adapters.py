"""The trust boundary around adapters and the bounded adapter cache, without Kafka."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from inference.adapters import ADAPTER_WEIGHTS, AdapterBook, AdapterCache, verify
from streamtune.adapter_store import open_store
from streamtune.contracts import AdapterUpdate
from streamtune.harness import adapter_update, sample_manifest
from streamtune.models import sha256_file
from streamtune.settings import load_settings

BASE = "tiny-base"


def _adapter(store: Path, tenant: str, version: str, weights: bytes = b"weights") -> Path:
    folder = store / tenant / version
    folder.mkdir(parents=True)
    (folder / ADAPTER_WEIGHTS).write_bytes(weights)
    return folder


def _update(tenant: str, version: str, uri: str, sha256: str, manifest_tenant: str | None = None) -> AdapterUpdate:
    owner = sample_manifest(manifest_tenant or tenant, version, adapter={"sha256": sha256})
    return adapter_update(tenant, version, uri=uri, base_model=BASE, manifest=owner)


def test_a_genuine_announcement_passes(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "acme", "v0001")
    announced = verify(_update("acme", "v0001", folder.as_uri(), sha256_file(folder / ADAPTER_WEIGHTS)), tmp_path, BASE)
    assert announced.path == folder.resolve() and announced.tenant == "acme"


@pytest.mark.parametrize(
    ("forge", "refusal"),
    [
        ("other tenant's path", "is not"),
        ("outside the store", "is not"),
        ("wrong checksum", "sha256"),
        ("a pickle", "pickled"),
        ("dot-dot escape", "is not"),
        ("manifest of another tenant", "manifest is for"),
        ("another base model", "base model"),
        ("http uri", "not a local file URI"),
        ("tenant case differs", "is not"),
    ],
)
def test_forged_announcements_are_refused(tmp_path: Path, forge: str, refusal: str) -> None:
    store = tmp_path / "store"
    acme = _adapter(store, "acme", "v0001")
    digest = sha256_file(acme / ADAPTER_WEIGHTS)
    outside = _adapter(tmp_path / "elsewhere", "beta", "v0001")
    beta_dir = store / "beta" / "v0001"
    updates = {
        "other tenant's path": _update("beta", "v0001", acme.as_uri(), digest),
        "outside the store": _update("beta", "v0001", outside.as_uri(), sha256_file(outside / ADAPTER_WEIGHTS)),
        "wrong checksum": _update("acme", "v0001", acme.as_uri(), "0" * 64),
        "a pickle": _update("acme", "v0001", acme.as_uri(), digest),
        "dot-dot escape": _update("beta", "v0001", f"file://{beta_dir}/../../acme/v0001", digest),
        "manifest of another tenant": _update("acme", "v0001", acme.as_uri(), digest, manifest_tenant="beta"),
        "another base model": _update("acme", "v0001", acme.as_uri(), digest).model_copy(update={"base_model": "x"}),
        "http uri": _update("acme", "v0001", "http://example.invalid/acme/v0001", digest),
        "tenant case differs": _update("ACME", "v0001", acme.as_uri(), digest),
    }
    if forge == "a pickle":
        (acme / "adapter_model.bin").write_bytes(b"\x80\x04 not loaded")
    refused: list[str] = []
    book = AdapterBook(store, BASE, on_refusal=refused.append)
    assert not book.record(updates[forge])
    assert refusal in book.refused[0] and len(refused) == 1
    assert book.latest == {} and book.resolve("beta", None) is None and book.resolve("acme", None) is None


def test_a_version_that_cannot_be_copied_is_refused_and_the_tenant_keeps_what_it_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"memory://streamtune-{tmp_path.name}/adapters"
    store = open_store(load_settings(config_files=[], cache_dir=tmp_path, training={"adapters_dir": url}))
    book = AdapterBook(store, BASE)
    for version in ("v0001", "v0002"):
        store.write("acme", version, ADAPTER_WEIGHTS, data=b"weights")
    digest = sha256_file(_adapter(tmp_path / "plain", "acme", "v0001") / ADAPTER_WEIGHTS)
    assert book.record(_update("acme", "v0001", store.uri("acme", "v0001"), digest))

    write_bytes = Path.write_bytes

    def full_disk(path: Path, data: Any) -> int:
        if path.parent.name.startswith(".partial-v0002"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(path, data)

    refusals: list[str] = []
    book.on_refusal = refusals.append
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", full_disk)
        assert not book.record(_update("acme", "v0002", store.uri("acme", "v0002"), digest))
    assert refusals == ["copy"] and "No space left on device" in book.refused[-1]
    assert book.latest == {"acme": "v0001"}
    cached = tmp_path / "adapters-cache" / "acme"
    assert sorted(p.name for p in cached.iterdir() if p.suffix != ".lock") == ["v0001"]  # no partial copy left
    # with room on the disk again, the next announcement of it is copied: the failure let go of the lock
    assert book.record(_update("acme", "v0002", store.uri("acme", "v0002"), digest))
    assert book.latest == {"acme": "v0002"}


def test_pinned_versions_are_looked_up_among_verified_announcements_only(tmp_path: Path) -> None:
    book = AdapterBook(tmp_path, BASE)
    for version in ("v0001", "v0002"):
        folder = _adapter(tmp_path, "acme", version, weights=version.encode())
        assert book.record(_update("acme", version, folder.as_uri(), sha256_file(folder / ADAPTER_WEIGHTS)))
    assert book.resolve("acme", None).version == "v0002"  # type: ignore[union-attr]
    assert book.resolve("acme", "v0001").version == "v0001"  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        book.resolve("acme", "v0042")
    with pytest.raises(KeyError):
        book.resolve("beta", "v0001")  # another tenant's version is not this tenant's


@pytest.fixture(scope="module")
def small_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Any]]:
    """Twelve real (tiny) LoRA adapters for the tiny model, announced and verified."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    store = tmp_path_factory.mktemp("store")
    book = AdapterBook(store, BASE)
    for i in range(12):
        torch.manual_seed(i)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
        )
        folder = store / f"t{i:02d}" / "v0001"
        model.save_pretrained(folder)
        book.record(_update(f"t{i:02d}", "v0001", folder.as_uri(), sha256_file(folder / ADAPTER_WEIGHTS)))
    return AutoModelForCausalLM.from_pretrained(tiny_model), [book.resolve(f"t{i:02d}", None) for i in range(12)]


@pytest.mark.slow
def test_the_cache_holds_at_most_its_capacity_and_memory_stays_flat(small_adapters: tuple[Any, list[Any]]) -> None:
    base, adapters = small_adapters
    cache = AdapterCache(base, capacity=3)
    sizes = []
    for _ in range(3):
        for start in range(0, 12, 2):
            cache.ensure(adapters[start : start + 2])
            assert len(cache.loaded) <= 3
            assert len(cache.model.peft_config) <= 3  # what PEFT itself holds
            sizes.append(sum(p.numel() for p in cache.model.parameters()))
    assert len(set(sizes[2:])) == 1  # after warm-up the parameter count never grows
    assert cache.loads == 36 and cache.evictions == 36 - 3
    with pytest.raises(ValueError, match="cache holds 3"):
        cache.ensure(adapters[:4])


@pytest.mark.slow
def test_a_file_changed_after_its_announcement_is_not_loaded(small_adapters: tuple[Any, list[Any]]) -> None:
    base, adapters = small_adapters
    cache = AdapterCache(base, capacity=2)
    weights = adapters[5].path / ADAPTER_WEIGHTS
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ValueError, match="changed after it was announced"):
            cache.ensure([adapters[5]])
    finally:
        weights.write_bytes(original)
    assert json.loads((adapters[5].path / "adapter_config.json").read_text())["r"] == 2
