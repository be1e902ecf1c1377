from __future__ import annotations

from pathlib import Path

import pytest

from streamtune.errors import ConfigError
from streamtune.models import base_model_source, embedding_model_source, load_embedder
from streamtune.settings import load_settings


def test_missing_model_package_is_a_config_error() -> None:
    from streamtune.models import packaged_dir

    with pytest.raises(ConfigError, match="pip install no-such-model-package"):
        packaged_dir("no-such-model-package", "embedding.model")


def test_hub_ids_and_paths_pass_through(tmp_path: Path) -> None:
    settings = load_settings(config_files=[], embedding={"model": "org/model"}, models={"base_model": str(tmp_path)})
    assert embedding_model_source(settings) == "org/model"
    assert base_model_source(settings) == str(tmp_path)


@pytest.mark.slow
def test_packaged_embedding_model_gives_384_dimensions() -> None:
    embedder = load_embedder(load_settings(config_files=[]))
    vectors = embedder.encode(["refunds within 30 days", "the refund window is thirty days", "ducks"])
    assert vectors.shape == (3, 384)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > unrelated


@pytest.mark.slow
def test_packaged_base_model_is_converted_once_and_generates(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = load_settings(config_files=[])
    folder = Path(base_model_source(settings))
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert base_model_source(settings) == str(folder)  # cached: same folder, no second conversion
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][prompt["input_ids"].shape[1] :])
