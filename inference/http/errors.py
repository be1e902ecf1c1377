"""The gateway's errors as OpenAI error objects with their HTTP status, and serve's error codes mapped to them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse

from streamtune.contracts import AnswerError

__all__ = ["ANSWER_ERRORS", "ApiError", "ErrorType", "answer_error"]

ErrorType = Literal[
    "invalid_request_error", "authentication_error", "permission_error", "rate_limit_error", "server_error"
]


# -- errors ---------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An OpenAI error object with its HTTP status; ``retry`` sets ``x-should-retry`` for OpenAI's clients."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: ErrorType = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param, self.retry = code, param, retry
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {} if self.retry is None else {"x-should-retry": "true" if self.retry else "false"}
        return JSONResponse(self.body(), status_code=self.status, headers={**headers, **self.headers})


ANSWER_ERRORS: dict[str, tuple[int, ErrorType, str | None]] = {
    "unknown_tenant": (404, "invalid_request_error", "model"),
    "unknown_adapter": (404, "invalid_request_error", "model"),
    "question_too_long": (400, "invalid_request_error", "messages"),
    "invalid_query": (400, "invalid_request_error", None),
    "retrieval_unavailable": (503, "server_error", None),
    "deadline_exceeded": (503, "server_error", None),
    "internal_error": (500, "server_error", None),
}
"""serve's error codes (docs/contract.md) → HTTP status, OpenAI error type and the request field at fault.
A code not listed is treated like ``internal_error``, as the contract asks."""


def answer_error(error: AnswerError) -> ApiError:
    status, kind, param = ANSWER_ERRORS.get(error.code, ANSWER_ERRORS["internal_error"])
    # OpenAI's code for a model that does not exist, which is what a tenant without documents or adapters is
    code = "model_not_found" if error.code == "unknown_tenant" else error.code
    # A deterministic refusal is not worth a retry; Weaviate may be back by the next attempt.
    return ApiError(status, error.message, kind=kind, code=code, param=param, retry=status == 503)
