"""Token-aware chunking with overlap. Chunk boundaries depend only on the text and the settings,
so chunk ids (``<doc_id>#<index>``) are stable across re-runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Chunk", "Chunker", "chunk_id"]


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int
    end: int


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


class Chunker:
    """Windows of ``max_tokens`` tokens of the embedding model's tokenizer, ``overlap`` tokens shared.

    Windows are cut back to the last whitespace inside them where one exists, so words are not split.
    """

    def __init__(self, tokenizer: Any, max_tokens: int, overlap: int) -> None:
        if not 0 <= overlap < max_tokens:
            raise ValueError(f"overlap must be in [0, max_tokens), got overlap={overlap}, max_tokens={max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap

    def split(self, text: str) -> list[Chunk]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        offsets: list[tuple[int, int]] = [tuple(o) for o in encoded["offset_mapping"]]
        if len(offsets) <= self.max_tokens:
            return [Chunk(0, text.strip(), 0, len(text))] if text.strip() else []

        def starts_word(i: int) -> bool:
            return i == 0 or offsets[i][0] > offsets[i - 1][1]

        chunks: list[Chunk] = []
        first = 0
        while first < len(offsets):
            last = min(first + self.max_tokens, len(offsets))
            if last < len(offsets):
                # end before a token that starts a word, keeping at least half the window
                last = next((i for i in range(last, first + self.max_tokens // 2, -1) if starts_word(i)), last)
            start, end = offsets[first][0], offsets[last - 1][1]
            chunks.append(Chunk(len(chunks), text[start:end].strip(), start, end))
            if last >= len(offsets):
                break
            # the next window starts `overlap` tokens back, moved back further to the start of its word
            following = max(last - self.overlap, first + 1)
            first = next((i for i in range(following, first, -1) if starts_word(i)), following)
        return chunks
