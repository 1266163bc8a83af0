"""Token usage read from either API's responses and stream events.

`input_tokens` always means every prompt token, cached or not, as OpenAI counts them; Anthropic
reports cache reads and cache writes apart from `input_tokens`, so they are added back here. The
accounting then bills `cached_input_tokens` of them at the cached price. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Tokens of one request."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def usage_from_openai(body: dict[str, Any]) -> Usage | None:
    """Usage of a chat, completion or embedding response, or of a stream's usage chunk."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), cached)


def usage_from_anthropic(message: dict[str, Any]) -> Usage | None:
    """Usage of a message (a response, or the message in a stream's message_start)."""
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return None
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    return Usage(
        _int(usage.get("input_tokens")) + cache_read + cache_write,
        _int(usage.get("output_tokens")),
        cache_read,
    )
