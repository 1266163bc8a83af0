"""Error bodies shaped like each API, and the exception request parsers raise.

The listener renders an `ApiError` in the shape of the API the downstream called, so that the
app's SDK raises its usual typed exception. Pure: no I/O, no logging.
"""

from __future__ import annotations

from typing import Any

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class ApiError(Exception):
    """A request the sidecar answers itself, with a status and a message that names the problem."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param


def openai_error(
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """`{"error": {message, type, param, code}}`, as the OpenAI API answers."""
    kind = type or _OPENAI_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def anthropic_error(status: int, message: str, *, type: str | None = None) -> dict[str, Any]:
    """`{"type": "error", "error": {type, message}}`, as the Anthropic API answers."""
    kind = type if type in set(_ANTHROPIC_TYPES.values()) | {"api_error"} else None
    kind = kind or _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
