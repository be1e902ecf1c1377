"""Shared fixtures. Integration tests use the real local stack and unique topic / group names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from streamtune.settings import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Built-in defaults plus any STREAMTUNE__ environment (never the developer's config/*.toml)."""
    return load_settings(config_files=[])


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """The local stack, started if it is not running (idempotent, like `streamtune stack up`)."""
    from streamtune.stack import Stack

    statuses = Stack(settings, say=lambda _: None).up()
    bad = [s for s in statuses if not s.ok]
    assert not bad, f"local stack not healthy: {bad}"
    return settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STREAMTUNE__ variables from the shell: for tests about the built-in defaults."""
    for key in [k for k in os.environ if k.startswith("STREAMTUNE__")]:
        monkeypatch.delenv(key)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def new_topic(stack: Settings, unique_name: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """Create uuid-named topics for one test; deleted afterwards."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": stack.kafka.bootstrap_servers})
    created: list[str] = []

    def make(partitions: int = 1) -> str:
        name = unique_name("test")
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=15)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(created).values():
            future.result(timeout=15)
