"""Requests of the Anthropic Messages API as the downstream sends them: parsing and validation.

The listener calls `parse_messages_request` before routing; a refusal is an `ApiError` that the
listener renders in Anthropic's error shape. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from routemesh_sidecar.protocol.errors import ApiError
from routemesh_sidecar.protocol.validation import (
    json_object,
    optional_bool,
    require_messages,
    require_string,
)


def parse_messages_request(body: bytes) -> dict[str, Any]:
    """POST /v1/messages: model, messages and a positive max_tokens are required."""
    data = json_object(body)
    require_string(data, "model")
    require_messages(data)
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise ApiError(400, "max_tokens: Field required", param="max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, "max_tokens: must be a positive integer", param="max_tokens")
    optional_bool(data, "stream")
    return data
