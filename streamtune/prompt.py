"""The prompt an answer is generated from: a system message with numbered retrieved context, then the question.

One function renders it, so that everything that generates from retrieved context (``serve`` today) builds
exactly the same text; it needs no model and no tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["chat_messages", "numbered_context"]


def numbered_context(passages: Sequence[tuple[str, str]], context_chars: int) -> str:
    """``[1] Title: text`` lines, each passage's text cut to ``context_chars`` characters."""
    return "\n".join(
        f"[{i}] {title + ': ' if title else ''}{text[:context_chars]}" for i, (title, text) in enumerate(passages, 1)
    )


def chat_messages(
    system_prompt: str, question: str, passages: Sequence[tuple[str, str]], context_chars: int
) -> list[dict[str, str]]:
    """Chat messages for the model's chat template: system (instructions + numbered context), user (question)."""
    context = numbered_context(passages, context_chars)
    return [
        {"role": "system", "content": f"{system_prompt}\n\nContext:\n{context or '(none)'}"},
        {"role": "user", "content": question},
    ]
