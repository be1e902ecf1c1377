from __future__ import annotations

import itertools
from typing import Any

import pytest

from streams.chunking import Chunker


def test_short_text_is_one_chunk(tokenizer: Any) -> None:
    chunks = Chunker(tokenizer, 50, 10).split("  Refunds within 30 days.  ")
    assert [(c.index, c.text) for c in chunks] == [(0, "Refunds within 30 days.")]
    assert Chunker(tokenizer, 50, 10).split("   ") == []


def test_long_text_is_split_with_overlap_on_word_boundaries(tokenizer: Any) -> None:
    text = " ".join(f"sentence{i} is about refunds." for i in range(60))
    chunks = Chunker(tokenizer, 32, 8).split(text)
    assert len(chunks) > 3
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) <= 32
        assert text[chunk.start : chunk.end].strip() == chunk.text
        assert chunk.text.split()[0] in text.split()  # starts on a whole word
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.end  # overlap
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_chunks_are_stable_across_runs(tokenizer: Any) -> None:
    text = "word " * 500
    assert Chunker(tokenizer, 64, 16).split(text) == Chunker(tokenizer, 64, 16).split(text)


def test_overlap_must_be_smaller_than_the_window(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="overlap"):
        Chunker(tokenizer, 10, 10)
