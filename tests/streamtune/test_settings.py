from __future__ import annotations

from pathlib import Path

import pytest

from streamtune.errors import ConfigError
from streamtune.settings import Settings, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults_match_the_local_stack() -> None:
    s = load_settings(config_files=[])
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.weaviate.host, s.weaviate.http_port, s.weaviate.grpc_port) == ("127.0.0.1", 8080, 50051)
    assert s.stack_home == s.cache_dir / "stack"
    assert "~" not in str(s.cache_dir)


def test_precedence_explicit_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "a.toml"
    first.write_text('[kafka]\nbootstrap_servers = "toml-a:1"\n[topics]\npartitions = 5\nprefix = "a-"\n')
    second = tmp_path / "b.toml"
    second.write_text('[topics]\nprefix = "b-"\n')
    s = load_settings(config_files=[first, second])
    assert (s.kafka.bootstrap_servers, s.topics.partitions, s.topics.prefix) == ("toml-a:1", 5, "b-")

    monkeypatch.setenv("STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS", "env:2")
    s = load_settings(config_files=[first, second])
    assert s.kafka.bootstrap_servers == "env:2"
    assert s.topics.partitions == 5  # untouched by env, still from TOML

    s = load_settings(config_files=[first], cache_dir=tmp_path / "explicit")
    assert s.cache_dir == tmp_path / "explicit"


def test_settings_are_frozen() -> None:
    s = load_settings(config_files=[])
    with pytest.raises(Exception, match="frozen"):
        s.kafka.bootstrap_servers = "x:1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "value", "names"),
    [
        ("STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS", "no-port", "kafka.bootstrap_servers"),
        ("STREAMTUNE__WEAVIATE__HTTP_PORT", "70000", "weaviate.http_port"),
        ("STREAMTUNE__EMBEDDING__BATCH_SIZE", "0", "embedding.batch_size"),
        ("STREAMTUNE__WEAVIATE__COLLECTION", "lowercase", "weaviate.collection"),
        ("STREAMTUNE__TOPICS__PREFIX", "bad/prefix", "topics.prefix"),
        ("STREAMTUNE__MEMORY__KEEP_FREED_MB", "4096", "memory.keep_freed_mb"),  # past mallopt's int
    ],
)
def test_bad_values_name_the_setting_the_value_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, names: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings(config_files=[])
    message = str(info.value)
    assert names in message and env in message and repr(value) in message
    assert info.value.fix  # says what would be valid


def test_unknown_environment_setting_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTUNE__KAFKA__BOOTSTRAP_SERVER", "typo:9092")
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        load_settings(config_files=[])
    monkeypatch.delenv("STREAMTUNE__KAFKA__BOOTSTRAP_SERVER")
    monkeypatch.setenv("STREAMTUNE__KAFKAA__X", "1")
    with pytest.raises(ConfigError, match="valid sections"):
        load_settings(config_files=[])


def test_unknown_toml_key_and_missing_file_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap = 'x:1'\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap"):
        load_settings(config_files=[bad])
    with pytest.raises(ConfigError, match="config file"):
        load_settings(config_files=[tmp_path / "absent.toml"])
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_settings(config_files=[broken])


def test_default_config_files_come_from_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "local.toml").write_text("[topics]\npartitions = 7\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().topics.partitions == 7


def test_dump_toml_round_trips(tmp_path: Path) -> None:
    s = load_settings(config_files=[], topics={"prefix": "x-"})
    dumped = tmp_path / "dump.toml"
    dumped.write_text(s.dump_toml())
    assert load_settings(config_files=[dumped]) == load_settings(config_files=[], topics={"prefix": "x-"})
    assert isinstance(s, Settings)


def test_config_show_masks_every_secret() -> None:
    s = load_settings(
        config_files=[],
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "user",
            "sasl_password": "kafka-pw-1",
            "client_config": {"sasl.oauthbearer.client.secret": "oauth-secret-2", "linger.ms": "5"},
            "flink_client_config": {"sasl.jaas.config": "... password='jaas-pw-3';"},
        },
        weaviate={"api_key": "weaviate-key-4"},
    )
    shown = s.dump_toml()
    for secret in ("kafka-pw-1", "oauth-secret-2", "jaas-pw-3", "weaviate-key-4"):
        assert secret not in shown
    assert '"linger.ms" = "5"' in shown and 'sasl_username = "user"' in shown


def test_sasl_without_credentials_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError, match="sasl_mechanism, sasl_username and sasl_password"):
        load_settings(config_files=[], kafka={"security_protocol": "SASL_SSL"})
