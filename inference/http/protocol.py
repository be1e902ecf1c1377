"""OpenAI's chat completion protocol as the gateway speaks it: the request bodies (validated, with the field at
fault named in a 400), ``model`` as ``<tenant>`` or ``<tenant>/<version>``, and the responses built from an
``Answer`` (pure).

The generation controls a chat request may carry go into its ``Query`` (``ChatCompletionRequest.controls``):
``max_tokens`` or its newer name ``max_completion_tokens`` (at least 1, at most 2**31 - 1; serve caps it at
``inference.max_new_tokens``; if both are sent they must be equal), ``stop`` (a string or up to 4, none
empty), ``temperature`` (0 to 2; absent or 0: greedy), ``top_p`` (over 0, at most 1) and ``seed`` (an integer
of 64 bits). They are checked strictly, as OpenAI does: a string or a float where an integer belongs is a 400
naming the field, never coerced."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, field_validator

from inference.http.errors import ApiError
from streamtune.contracts import MAX_ID_CHARS, MAX_QA_CHARS, MAX_STOP_SEQUENCES, TENANT_PATTERN, Answer

__all__ = [
    "ChatCompletionRequest",
    "FeedbackRequest",
    "RetrieveRequest",
    "chunk",
    "completion",
    "final_chunks",
    "param_of",
    "parse_body",
    "parse_model",
    "sse",
]

# A chat body carries the whole conversation although only its last user message is asked; this bounds what
# one request can make the gateway read (the question itself is bounded by inference.max_query_bytes).
_MAX_BODY_BYTES = 4 * 1024 * 1024
# A token budget beyond any model's context is a client's mistake, not a wish to be capped: the bound is a signed
# 32-bit integer, as OpenAI-compatible servers take it. Anything up to it is capped by inference.max_new_tokens.
_MAX_TOKENS = 2**31 - 1


class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI's clients send many (frequency_penalty, logprobs, user, ...) that
    # serve does not apply.
    model_config = ConfigDict(frozen=True, extra="ignore")


class _ContentPart(_Body):
    type: str
    text: str | None = None


class _MessageIn(_Body):
    role: str
    content: str | list[_ContentPart] | None = None


class _StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str = Field(min_length=1, description="'<tenant>' (current adapter) or '<tenant>/<version>' (pinned).")
    messages: list[_MessageIn] = Field(min_length=1, description="The last user message is the question.")
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One answer per question.")
    top_k: int | None = Field(None, ge=1, le=100, description="streamtune extension: chunks to retrieve.")
    max_tokens: StrictInt | None = Field(
        None, ge=1, le=_MAX_TOKENS, description="At most this many answer tokens (capped by the server's limit)."
    )
    max_completion_tokens: StrictInt | None = Field(
        None, ge=1, le=_MAX_TOKENS, description="OpenAI's newer name for max_tokens."
    )
    stop: str | list[str] | None = Field(
        None, description=f"Up to {MAX_STOP_SEQUENCES} sequences that end the answer (not part of it)."
    )
    temperature: StrictFloat | None = Field(None, ge=0.0, le=2.0, description="0 or absent: greedy decoding.")
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling (with a temperature).")
    seed: StrictInt | None = Field(
        None, ge=-(2**63), le=2**63 - 1, description="The same seed, question and model give the same answer."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_sequences(cls, value: Any) -> Any:
        # Checked here, not by the union's own errors, so that a 400 names `stop` (not `stop.list[str][1]`).
        sequences = [value] if isinstance(value, str) else value
        if isinstance(sequences, list):
            if len(sequences) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, not {len(sequences)}")
            if any(s == "" for s in sequences):
                raise ValueError("a stop sequence may not be empty")
            if not all(isinstance(s, str) for s in sequences):
                raise ValueError("stop is a string or a list of strings")
        elif value is not None:
            raise ValueError("stop is a string or a list of strings")
        return value

    def controls(self) -> dict[str, Any]:
        """The generation controls as ``Query`` fields; a 400 when ``max_tokens`` and ``max_completion_tokens``
        disagree (one budget was meant, and which one is unclear)."""
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ApiError(
                400,
                f"max_tokens ({self.max_tokens}) and max_completion_tokens ({self.max_completion_tokens}) differ; "
                "send one of them (max_completion_tokens is the newer name)",
                code="invalid_value",
                param="max_completion_tokens",
            )
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return {
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "stop": stop or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def question(self) -> str:
        for index in range(len(self.messages) - 1, -1, -1):
            message = self.messages[index]
            if message.role != "user":
                continue
            where = f"messages[{index}].content"
            if isinstance(message.content, list):
                if any(part.type != "text" for part in message.content):
                    raise ApiError(400, "only text content parts are supported", code="invalid_value", param=where)
                text = "\n".join(part.text or "" for part in message.content)
            else:
                text = message.content or ""
            if not text.strip():
                raise ApiError(400, "the last user message is empty", code="invalid_value", param=where)
            return text
        raise ApiError(400, "messages holds no user message (the last one is the question)", param="messages")


class FeedbackRequest(_Body):
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The completion's id (chatcmpl-...).")
    rating: Literal[1, -1] = Field(description="1: a good answer, -1: a bad one.")
    correction: str | None = Field(
        None, min_length=1, max_length=MAX_QA_CHARS, description="The answer it should have been (for -1)."
    )


class RetrieveRequest(_Body):
    query: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=100, description="Chunks to return (default retrieval.top_k).")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="0 = BM25 only, 1 = vector only.")
    tenant: str | None = Field(None, description="Needed only when the key may use several tenants.")


def param_of(loc: Sequence[int | str]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


async def parse_body(request: Request, model: type[_Body]) -> Any:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {_MAX_BODY_BYTES} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {first['msg']}", code="invalid_json") from exc
        where = param_of(first["loc"])
        raise ApiError(
            400, f"{where or 'body'}: {first['msg']}", code="invalid_value" if where else "invalid_body", param=where
        ) from exc


def parse_model(model: str) -> tuple[str, str | None]:
    """``<tenant>`` → (tenant, None): the tenant's current adapter; ``<tenant>/<version>`` pins a version."""
    tenant, slash, version = model.partition("/")
    if not re.fullmatch(TENANT_PATTERN, tenant) or (
        slash and (not version or version != version.strip() or len(version) > 512)
    ):
        raise ApiError(
            404,
            f"the model {model!r} does not exist: use '<tenant>' or '<tenant>/<version>' (a tenant is letters, "
            "digits, '_' and '-', at most 64 characters; GET /v1/models lists yours)",
            code="model_not_found",
            param="model",
        )
    return tenant, version if slash else None


def _served_model(answer: Answer) -> str:
    return f"{answer.tenant}/{answer.adapter_version}" if answer.adapter_version else answer.tenant


def _extras(answer: Answer) -> dict[str, Any]:
    return {
        "query_id": answer.query_id,
        "citations": [c.model_dump() for c in answer.citations],
        "adapter_version": answer.adapter_version,
        "base_model": answer.model,
        "timings_ms": answer.timings_ms,
        "grounded": answer.grounded,
    }


def _usage(answer: Answer) -> dict[str, int]:
    usage = answer.usage
    prompt, completion_ = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion_, "total_tokens": prompt + completion_}


def completion(answer: Answer, created: int) -> dict[str, Any]:
    """A ``chat.completion`` of one answer; ``model`` names what answered (``<tenant>/<version>`` or the tenant)."""
    return {
        "id": answer.query_id,
        "object": "chat.completion",
        "created": created,
        "model": _served_model(answer),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.answer},
                "logprobs": None,
                "finish_reason": answer.finish_reason or "stop",
            }
        ],
        "usage": _usage(answer),
        **_extras(answer),
    }


def chunk(
    completion_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``completion_id``: the query's id)."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def final_chunks(answer: Answer, created: int, *, include_usage: bool) -> list[dict[str, Any]]:
    """The chunks that close a stream: the finish with the citations, and the usage when it was asked for."""
    usage: dict[str, Any] = {"usage": None} if include_usage else {}
    model = _served_model(answer)
    out = [chunk(answer.query_id, model, created, {}, answer.finish_reason or "stop", **usage, **_extras(answer))]
    if include_usage:
        out.append({**chunk(answer.query_id, model, created, {}), "choices": [], "usage": _usage(answer)})
    return out


def sse(item: dict[str, Any] | str) -> bytes:
    """One server-sent event (``[DONE]`` as it is)."""
    data = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
