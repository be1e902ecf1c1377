from __future__ import annotations

from typing import Any

import pytest

from streamtune.models import embedding_model_source
from streamtune.settings import load_settings


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The packaged embedding model's tokenizer (loads in well under a second)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedding_model_source(load_settings(config_files=[])))
