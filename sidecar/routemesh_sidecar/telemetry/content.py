"""Prompt and completion content for spans, as the OpenTelemetry GenAI conventions shape it.

The listener calls these only when the route table's `telemetry.capture_content` is set; nothing
else in the sidecar reads a request's content for telemetry. The attributes are the conventions'
opt-in `gen_ai.system_instructions`, `gen_ai.input.messages` and `gen_ai.output.messages`, as
JSON strings (span attributes cannot hold structures), each kept under a size cap: text is cut
(ending in "…") and then the oldest messages dropped until it fits, and
`routemesh.content.truncated` says so. `StreamCapture` collects a streamed answer's text from the
downstream-ready events as they are relayed, up to the same cap.

Pure: it reads request and response bodies in either API's shape, and never records, logs or
changes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from routemesh_sidecar.protocol.codec import dumps_json
from routemesh_sidecar.protocol.sse import SSEParser
from routemesh_sidecar.routetable import Api

Part = dict[str, Any]
Message = dict[str, Any]
_ELLIPSIS = "…"
_FINISH_REASONS = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_call"}


def _text_part(text: str) -> Part:
    return {"type": "text", "content": text}


def _parts(content: Any) -> list[Part]:
    """Content in either API's shape as parts; images and audio are named, never inlined."""
    if isinstance(content, str):
        return [_text_part(content)] if content else []
    parts: list[Part] = []
    for item in content if isinstance(content, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in ("text", "input_text") and isinstance(item.get("text"), str):
            parts.append(_text_part(item["text"]))
        elif kind == "tool_use":
            parts.append(
                {
                    "type": "tool_call",
                    "id": item.get("id"),
                    "name": item.get("name"),
                    "arguments": item.get("input"),
                }
            )
        elif kind == "tool_result":
            parts.append(
                {
                    "type": "tool_call_response",
                    "id": item.get("tool_use_id"),
                    "response": item.get("content"),
                }
            )
        elif isinstance(kind, str):
            parts.append({"type": kind})  # image_url, image, input_audio: named only
    return parts


def _openai_tool_calls(message: dict[str, Any]) -> list[Part]:
    calls = message.get("tool_calls")
    parts: list[Part] = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments"),
                }
            )
    return parts


def input_content(api: Api, body: dict[str, Any]) -> tuple[list[Part], list[Message]]:
    """The system instructions and the input messages of a request body."""
    system: list[Part] = _parts(body.get("system")) if api == "anthropic" else []
    messages: list[Message] = []
    raw = body.get("messages")
    for message in raw if isinstance(raw, list) else ():
        if not isinstance(message, dict):
            continue
        role = str(message.get("role", "user"))
        parts = _parts(message.get("content")) + _openai_tool_calls(message)
        if role == "tool":
            parts = [
                {
                    "type": "tool_call_response",
                    "id": message.get("tool_call_id"),
                    "response": message.get("content"),
                }
            ]
        messages.append({"role": role, "parts": parts})
    for key in ("prompt", "input"):  # completions and embeddings
        value = body.get(key)
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        messages.extend(
            {"role": "user", "parts": [_text_part(t)]} for t in texts if isinstance(t, str)
        )
    return system, messages


def output_messages(api: Api, body: bytes) -> list[Message]:
    """The answer's messages (one per choice) from a complete response body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(data, dict):
        return []
    if api == "anthropic":
        reason = data.get("stop_reason")
        return [
            {
                "role": "assistant",
                "parts": _parts(data.get("content")),
                "finish_reason": _FINISH_REASONS.get(str(reason), str(reason or "")),
            }
        ]
    messages: list[Message] = []
    choices = data.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            parts = _parts(message.get("content")) + _openai_tool_calls(message)
        else:
            parts = _parts(choice.get("text"))
        messages.append(
            {"role": "assistant", "parts": parts, "finish_reason": choice.get("finish_reason")}
        )
    return messages


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class StreamCapture:
    """A streamed answer's text, collected from the downstream events up to `limit` characters."""

    api: Api
    limit: int
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    truncated: bool = False
    _size: int = 0
    _parser: SSEParser = field(default_factory=SSEParser)

    def feed(self, data: bytes) -> None:
        """Read the text deltas out of relayed bytes (whole events or pieces of them)."""
        for event in self._parser.feed(data):
            if event.data and event.data != "[DONE]":
                self._event(event.data)

    def _event(self, data: str) -> None:
        try:
            chunk = json.loads(data)
        except ValueError:
            return
        if not isinstance(chunk, dict):
            return
        if self.api == "anthropic":
            delta = _mapping(chunk.get("delta"))
            self._add(delta.get("text"))
            if isinstance(delta.get("stop_reason"), str):
                reason = delta["stop_reason"]
                self.finish_reason = _FINISH_REASONS.get(reason, reason)
            return
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                delta = _mapping(choice.get("delta"))
                self._add(delta.get("content") or choice.get("text"))
                if choice.get("finish_reason"):
                    self.finish_reason = str(choice["finish_reason"])

    def _add(self, text: Any) -> None:
        if not isinstance(text, str) or not text:
            return
        room = self.limit - self._size
        if len(text) > room:
            text, self.truncated = text[:room], True
        self.text.append(text)
        self._size += len(text)

    def messages(self) -> list[Message]:
        """The streamed answer as one output message."""
        return [
            {
                "role": "assistant",
                "parts": [_text_part("".join(self.text))] if self.text else [],
                "finish_reason": self.finish_reason,
            }
        ]


def content_attributes(
    limit: int,
    *,
    system: list[Part] | None = None,
    inputs: list[Message] | None = None,
    outputs: list[Message] | None = None,
    truncated: bool = False,
) -> dict[str, Any]:
    """The GenAI content attributes, each a JSON string of at most `limit` bytes."""
    attributes: dict[str, Any] = {}
    for name, value in (
        ("gen_ai.system_instructions", system),
        ("gen_ai.input.messages", inputs),
        ("gen_ai.output.messages", outputs),
    ):
        if not value:
            continue
        encoded, cut = _capped(value, limit)
        attributes[name] = encoded
        truncated = truncated or cut
    if truncated:
        attributes["routemesh.content.truncated"] = True
    return attributes


def _capped(items: list[Any], limit: int) -> tuple[str, bool]:
    """`items` as JSON within `limit` bytes: long texts cut first, then the oldest items dropped."""
    encoded = dumps_json(items)
    if len(encoded.encode()) <= limit:
        return encoded, False
    texts = [part for part in _all_parts(items) if isinstance(part.get("content"), str)]
    share = max(16, limit // (2 * max(1, len(texts))))
    for part in texts:
        if len(part["content"]) > share:
            part["content"] = part["content"][:share] + _ELLIPSIS
    kept = list(items)
    encoded = dumps_json(kept)
    while len(kept) > 1 and len(encoded.encode()) > limit:
        kept.pop(0)
        encoded = dumps_json(kept)
    if len(encoded.encode()) > limit:
        encoded = dumps_json([])
    return encoded, True


def _all_parts(items: list[Any]) -> list[Part]:
    """Every part of a list of messages (or a list of parts itself), to cut their texts."""
    parts: list[Part] = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("parts"), list):
            parts.extend(p for p in item["parts"] if isinstance(p, dict))
        elif isinstance(item, dict):
            parts.append(item)
    return parts
