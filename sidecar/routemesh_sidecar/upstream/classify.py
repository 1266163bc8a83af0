"""The one place where an attempt's failure gets its error class.

Called by the attempt runner with what it saw: an exception from the transport, or an upstream
status and body. Retries, fallbacks, breakers and outlier detection read only the class, never
status codes or exception types, so a rule about "what is retriable" lives in one table here.
It never retries, logs or records anything itself.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from routemesh_sidecar.protocol.http1 import ConnectFailed, UpstreamClosed
from routemesh_sidecar.routetable import ErrorClass

# Phrases providers use for a prompt that does not fit the model. OpenAI sends the code
# context_length_exceeded; Anthropic and vLLM only say it in the message.
_CONTEXT_LENGTH_PHRASES = (
    "context_length_exceeded",
    "context length",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "reduce the length",
)
_CONTENT_POLICY_PHRASES = ("content_policy", "content_filter", "safety system")

# What each class means for the attempt loop. A client_error is the downstream's fault and would
# fail the same way anywhere; content_policy likewise. A context_length error may fit elsewhere.
FALLBACK_CLASSES: frozenset[ErrorClass] = frozenset(
    {
        "connect_error",
        "timeout",
        "rate_limited",
        "overloaded",
        "server_error",
        "bad_response",
        "context_length",
    }
)

# Classes that say the upstream itself is unwell, which breakers and outlier detection count.
# The others (client_error, context_length, content_policy) are the request's doing: the upstream
# answered properly, so they count as successes for its health.
_UNHEALTHY_CLASSES: frozenset[ErrorClass] = frozenset(
    {
        "connect_error",
        "timeout",
        "rate_limited",
        "overloaded",
        "server_error",
        "bad_response",
        "stream_broken",
    }
)


def counts_against_backend(error_class: ErrorClass) -> bool:
    """Whether a failure of this class is evidence that the upstream is unwell."""
    return error_class in _UNHEALTHY_CLASSES


def counts_against_endpoint(error_class: ErrorClass) -> bool:
    """Whether a failure says this one endpoint is unwell.

    A 429 is about the account, shared by every endpoint of a provider, so it cools the backend
    down (see the breaker) rather than ejecting an endpoint.
    """
    return error_class != "rate_limited" and error_class in _UNHEALTHY_CLASSES


# Not frozen: exception chaining (contextlib, asyncio) assigns __context__ on the instance.
@dataclass(eq=False)
class UpstreamFailure(Exception):
    """A classified attempt failure: its class, what the upstream said, and how long to back off."""

    error_class: ErrorClass
    message: str
    status: int | None = None
    retry_after: float | None = None
    body: bytes | None = None

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{self.error_class}{status}: {self.message}"


def classify_status(status: int, body: bytes) -> ErrorClass:  # noqa: PLR0911  (a lookup table)
    """The class of an upstream error response."""
    text = body[:4096].decode("utf-8", "replace").lower()
    if status == 429:
        return "rate_limited"
    if status in (503, 529) or "overloaded" in text:
        return "overloaded"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    if any(phrase in text for phrase in _CONTEXT_LENGTH_PHRASES):
        return "context_length"
    if any(phrase in text for phrase in _CONTENT_POLICY_PHRASES):
        return "content_policy"
    return "client_error"


def classify_exception(exc: BaseException) -> ErrorClass:
    """The class of a transport failure."""
    if isinstance(exc, UpstreamFailure):
        return exc.error_class
    if isinstance(exc, ConnectFailed):
        return "connect_error"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamClosed):
        return "server_error"
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | ValueError):
        return "bad_response"
    return "server_error"


def failure_from_response(status: int, headers: Any, body: bytes, now: float) -> UpstreamFailure:
    """Classify an error response and read its Retry-After, relative to `now` (epoch seconds)."""
    return UpstreamFailure(
        error_class=classify_status(status, body),
        message=_upstream_message(body) or f"upstream answered HTTP {status}",
        status=status,
        retry_after=parse_retry_after(headers.get("retry-after"), now),
        body=body,
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _upstream_message(body: bytes) -> str | None:
    """The error message from an OpenAI- or Anthropic-shaped error body, if there is one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None
