"""The prompt an answer is generated from: a system message with numbered retrieved context, then the question.

One function renders it, so that everything that generates from retrieved context builds exactly the same
text: ``serve`` for a query and its retrieval, training and the promotion gate for an example and the
context stored with it (``TrainingExample.context``). The context is cut to a token budget (titles
included), so a prompt can never outgrow the model's context window however long the retrieved chunks are;
the tokenizer is passed in, so this needs no model.

``PromptFormat`` is everything besides the tokenizer that decides the text (serve's ``inference`` settings
of the same names). Each adapter's manifest records the format it was trained in, so that ``train replay``
renders the same bytes whatever the settings say by then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from streamtune.settings import InferenceSettings

__all__ = [
    "PromptFormat",
    "chat_messages",
    "conversation",
    "numbered_context",
    "prompt_messages",
    "render_prompt",
    "token_codec",
    "trimmed_context",
]

Passage = tuple[str, str]
"""(title, text) of one retrieved chunk, in rank order."""


class PromptFormat(BaseModel):
    """How a prompt is rendered, besides the tokenizer: serve's settings of the same names."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    system_prompt: str
    """``inference.system_prompt``."""
    context_chars: int = Field(ge=1)
    """``inference.context_chars``: characters of each passage."""
    context_tokens: int = Field(ge=0)
    """``inference.context_tokens``: tokens of the whole numbered context, titles included."""

    @classmethod
    def of(cls, inference: InferenceSettings) -> PromptFormat:
        return cls(
            system_prompt=inference.system_prompt,
            context_chars=inference.context_chars,
            context_tokens=inference.context_tokens,
        )


def _lines(passages: Sequence[Passage], context_chars: int) -> list[str]:
    return [
        f"[{i}] {title + ': ' if title else ''}{text[:context_chars]}" for i, (title, text) in enumerate(passages, 1)
    ]


def numbered_context(passages: Sequence[Passage], context_chars: int) -> str:
    """``[1] Title: text`` lines, each passage's text cut to ``context_chars`` characters."""
    return "\n".join(_lines(passages, context_chars))


def trimmed_context(
    passages: Sequence[Passage],
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


def token_codec(tokenizer: Any) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """(encode, decode) of a Hugging Face tokenizer as the context budget counts: no special tokens."""

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    return encode, decode


def prompt_messages(
    tokenizer: Any,
    form: PromptFormat,
    question: str,
    passages: Sequence[Passage],
    *,
    budget_tokens: int | None = None,
) -> list[dict[str, str]]:
    """The chat messages of a prompt: ``form``'s system prompt with the passages numbered and cut to
    ``form.context_tokens`` tokens of ``tokenizer`` (or to ``budget_tokens``, when that is smaller), then the
    question. No passages render as ``(none)``."""
    encode, decode = token_codec(tokenizer)
    budget = form.context_tokens if budget_tokens is None else min(budget_tokens, form.context_tokens)
    context = trimmed_context(passages, form.context_chars, budget, encode, decode)
    return chat_messages(form.system_prompt, question, context)


def render_prompt(tokenizer: Any, form: PromptFormat, question: str, passages: Sequence[Passage]) -> str:
    """The text a model generates the answer from: the prompt messages through the model's chat template,
    ending with the generation prompt (what ``serve`` tokenizes)."""
    messages = prompt_messages(tokenizer, form, question, passages)
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def conversation(
    tokenizer: Any,
    form: PromptFormat,
    question: str,
    passages: Sequence[Passage],
    answer: str,
    *,
    history: Sequence[dict[str, str]] = (),
    max_length: int | None = None,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt, completion) messages of an example to train or score on: the prompt ``serve`` would build for
    ``question`` and ``passages`` (earlier turns, if any, between the system message and the question), the
    completion ``answer``. Through the chat template with the generation prompt, the prompt is byte for byte
    what ``render_prompt`` gives.

    With ``max_length`` (the trainer's, which truncates longer sequences from the end, i.e. the answer), the
    context budget is lowered just enough for prompt and answer to fit, cutting the lowest-ranked context
    first: the example stays in serve's format with less context, and its answer is never cut off.
    """
    encode, decode = token_codec(tokenizer)
    completion = [{"role": "assistant", "content": answer}]
    budget = form.context_tokens
    while True:
        context = trimmed_context(passages, form.context_chars, budget, encode, decode)
        prompt = chat_messages(form.system_prompt, question, context)
        prompt[1:1] = [dict(turn) for turn in history]
        if max_length is None or not context:
            return prompt, completion
        over = len(encode(str(tokenizer.apply_chat_template(prompt + completion, tokenize=False)))) - max_length
        if over <= 0:
            return prompt, completion
        # lowered from what the context uses (the budget may be larger), so each round is strictly smaller
        budget = max(min(budget, len(encode(context))) - over, 0)
