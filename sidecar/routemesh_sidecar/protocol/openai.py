"""Requests of the OpenAI API as the downstream sends them: parsing and validation.

The listener calls these before routing; a refusal is an `ApiError` in OpenAI's terms, and nothing
goes upstream. Only what routing and translation rely on is checked; everything else is passed on
for the upstream to judge. Pure: no I/O.
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


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """POST /v1/chat/completions."""
    data = json_object(body)
    require_string(data, "model")
    require_messages(data)
    optional_bool(data, "stream")
    return data


def parse_completion_request(body: bytes) -> dict[str, Any]:
    """POST /v1/completions."""
    data = json_object(body)
    require_string(data, "model")
    if data.get("prompt") in (None, "", []):
        raise ApiError(400, "'prompt' is a required property", param="prompt")
    optional_bool(data, "stream")
    return data


def parse_embedding_request(body: bytes) -> dict[str, Any]:
    """POST /v1/embeddings."""
    data = json_object(body)
    require_string(data, "model")
    if data.get("input") in (None, "", []):
        raise ApiError(400, "'input' is a required property", param="input")
    if data.get("stream"):
        raise ApiError(400, "embeddings cannot be streamed", param="stream")
    return data
