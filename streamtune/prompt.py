"""The prompt an answer is generated from: a system message with numbered retrieved context, then the question.

One function renders it, so that everything that generates from retrieved context builds exactly the same
text. The context is cut to a token budget (titles included), so a prompt can never outgrow the model's
context window however long the retrieved chunks are; the tokenizer is passed in, so this needs no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["chat_messages", "numbered_context", "trimmed_context"]


def _lines(passages: Sequence[tuple[str, str]], context_chars: int) -> list[str]:
    return [
        f"[{i}] {title + ': ' if title else ''}{text[:context_chars]}" for i, (title, text) in enumerate(passages, 1)
    ]


def numbered_context(passages: Sequence[tuple[str, str]], context_chars: int) -> str:
    """``[1] Title: text`` lines, each passage's text cut to ``context_chars`` characters."""
    return "\n".join(_lines(passages, context_chars))


def trimmed_context(
    passages: Sequence[tuple[str, str]],
    context_chars: int,
    budget_tokens: int,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
) -> str:
    """The numbered context in at most ``budget_tokens`` tokens: whole passages in rank order, the first one
    that does not fit cut at a token boundary, the rest left out."""
    kept: list[str] = []
    used = 0
    for line in _lines(passages, context_chars):
        ids = encode(line + "\n")
        if used + len(ids) <= budget_tokens:
            kept.append(line)
            used += len(ids)
            continue
        room = budget_tokens - used - 1
        if room > 0:
            kept.append(decode(ids[:room]).rstrip())
        break
    return "\n".join(kept)


def chat_messages(system_prompt: str, question: str, context: str) -> list[dict[str, str]]:
    """Chat messages for the model's chat template: system (instructions + numbered context), user (question)."""
    return [
        {"role": "system", "content": f"{system_prompt}\n\nContext:\n{context or '(none)'}"},
        {"role": "user", "content": question},
    ]
