"""Shared fixtures. Integration tests use the real local stack and unique topic / group names."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamtune.harness import settings_for_env, unique_name
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
def new_topic(stack: Settings) -> Iterator[Callable[..., str]]:
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a tokenizer trained on the fly: the whole QLoRA path in seconds (DESIGN.md).
    For tests where model quality is not the subject."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").is_file():
        return folder
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [
        "user assistant system: refunds are accepted within thirty days of purchase.",
        "Orders ship from Lisbon within two business days. What is the refund window? 30 days.",
        "The capital of France is Paris. A week has seven days. Bees make honey.",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA: skipped, saying so, where there is none."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (none on this machine)"))


class PrivateStack:
    """Part of the local stack (Kafka, Weaviate or both) of one test's own, on free ports with its own data,
    that the test may stop and start: outage tests must not take down what every other test uses."""

    def __init__(self, shared: Settings, home: Path, only: tuple[str, ...]) -> None:
        from streamtune.harness import free_port

        self.only = only
        self.env = {"STREAMTUNE__STACK__HOME": str(home), "STREAMTUNE__CACHE_DIR": str(shared.cache_dir)}
        if "weaviate" in only:
            self.env.update(
                {
                    "STREAMTUNE__WEAVIATE__HTTP_PORT": str(free_port()),
                    "STREAMTUNE__WEAVIATE__GRPC_PORT": str(free_port()),
                    "STREAMTUNE__STACK__WEAVIATE_GOSSIP_PORT": str(free_port(pair=True)),
                    "STREAMTUNE__STACK__WEAVIATE_RAFT_PORT": str(free_port(pair=True)),
                    "STREAMTUNE__STACK__WEAVIATE_METRICS_PORT": str(free_port()),
                }
            )
        if "kafka" in only:
            self.env.update(
                {
                    "STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                    "STREAMTUNE__STACK__KAFKA_CONTROLLER_PORT": str(free_port()),
                }
            )
        self.settings = settings_for_env(self.env)

    def _stack(self) -> Any:
        from streamtune.stack import Stack

        return Stack(self.settings, say=lambda _: None, only=self.only)

    def start(self) -> None:
        self._stack().up()

    def stop(self) -> None:
        self._stack().down()


@pytest.fixture
def private_weaviate(stack: Settings, tmp_path: Path) -> Iterator[PrivateStack]:
    weaviate = PrivateStack(stack, tmp_path / "private-weaviate", ("weaviate",))
    weaviate.start()
    yield weaviate
    weaviate.stop()


@pytest.fixture
def private_kafka(stack: Settings, tmp_path: Path) -> Iterator[PrivateStack]:
    kafka = PrivateStack(stack, tmp_path / "private-kafka", ("kafka",))
    kafka.start()
    yield kafka
    kafka.stop()
