"""Translation between the OpenAI Chat Completions and Anthropic Messages APIs.

The attempt code calls these only when the downstream and the chosen upstream speak different
APIs: requests one way, responses and streams the other way, tool calls and usage included.
When both sides speak the same API, nothing here runs and the request passes through.

What cannot be expressed on the other side is refused (`n` > 1 for Anthropic) or dropped and
documented here: OpenAI's logprobs, seed, response_format and presence/frequency penalties have
no Anthropic counterpart; Anthropic's thinking blocks and cache_control markers have no OpenAI
counterpart. Pure: dicts in, dicts out; no clock reads (callers pass `created`), no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from routemesh_sidecar.protocol.errors import ApiError
from routemesh_sidecar.protocol.usage import Usage, usage_from_anthropic, usage_from_openai

_ANTHROPIC_TO_OPENAI_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_OPENAI_TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ----------------------------------------------------------------------------- requests


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request."""
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages", []):
        messages.extend(_anthropic_message_to_openai(message))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    _copy(body, out, ("max_tokens", "temperature", "top_p", "stream"))
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        out["tools"] = [_anthropic_tool_to_openai(tool) for tool in body["tools"]]
    choice = _anthropic_tool_choice_to_openai(body.get("tool_choice"))
    if choice is not None:
        out["tool_choice"] = choice
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = metadata["user_id"]
    return out


def _anthropic_message_to_openai(message: dict[str, Any]) -> list[dict[str, Any]]:
    role, content = message.get("role"), message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [b for b in content or [] if isinstance(b, dict)]
    if role == "assistant":
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        calls = [
            {
                "id": b.get("id"),
                "type": "function",
                "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})},
            }
            for b in blocks
            if b.get("type") == "tool_use"
        ]
        assistant: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            assistant["tool_calls"] = calls
        return [assistant]
    # Tool results answer the previous assistant turn, so they come before the user's own parts.
    out = [
        {
            "role": "tool",
            "tool_call_id": b.get("tool_use_id"),
            "content": _text_of(b.get("content")),
        }
        for b in blocks
        if b.get("type") == "tool_result"
    ]
    parts = [p for p in (_anthropic_part_to_openai(b) for b in blocks) if p is not None]
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        content_value: Any = "".join(p["text"] for p in parts) if only_text else parts
        out.append({"role": role, "content": content_value})
    return out


def _anthropic_part_to_openai(block: dict[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        else:
            url = source.get("url", "")
        return {"type": "image_url", "image_url": {"url": url}}
    return None


def _anthropic_tool_to_openai(tool: dict[str, Any]) -> dict[str, Any]:
    function = {
        "name": tool.get("name"),
        "parameters": tool.get("input_schema") or {"type": "object"},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _anthropic_tool_choice_to_openai(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))


def openai_request_to_anthropic(body: dict[str, Any], *, default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise ApiError(400, "n > 1 is not supported by this model's API", param="n")
    system, messages = _openai_messages_to_anthropic(body.get("messages", []))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    out: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": max_tokens,
    }
    if system:
        out["system"] = "\n\n".join(part for part in system if part)
    if isinstance(body.get("temperature"), int | float):
        # OpenAI's range is 0 to 2, Anthropic's 0 to 1.
        out["temperature"] = min(float(body["temperature"]), 1.0)
    _copy(body, out, ("top_p", "stream"))
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [_openai_tool_to_anthropic(tool) for tool in body["tools"]]
    choice = _openai_tool_choice_to_anthropic(
        body.get("tool_choice"), body.get("parallel_tool_calls")
    )
    if choice is not None and body.get("tools"):
        out["tool_choice"] = choice
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    return out


def _openai_messages_to_anthropic(
    openai_messages: list[dict[str, Any]],
) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts (Anthropic has one top-level system) and the conversation turns."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in openai_messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(message.get("content")))
        elif role == "tool":
            _append_tool_result(messages, message)
        elif role == "assistant":
            blocks = _openai_assistant_blocks(message)
            if blocks:
                messages.append({"role": "assistant", "content": blocks})
        else:
            messages.append(
                {"role": "user", "content": _openai_user_content(message.get("content"))}
            )
    return system, messages


def _append_tool_result(messages: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """Consecutive tool messages become one user turn of tool_result blocks."""
    block = {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id"),
        "content": _text_of(message.get("content")),
    }
    last = messages[-1] if messages else None
    if (
        last
        and last["role"] == "user"
        and isinstance(last["content"], list)
        and all(b.get("type") == "tool_result" for b in last["content"])
    ):
        last["content"].append(block)
    else:
        messages.append({"role": "user", "content": [block]})


def _openai_assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments)
        except ValueError as exc:
            raise ApiError(
                400, f"tool call arguments are not valid JSON: {exc}", param="messages"
            ) from exc
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": parsed,
            }
        )
    return blocks


def _openai_user_content(content: Any) -> Any:
    if not isinstance(content, list):
        return _text_of(content)
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            blocks.append(_image_block(str((part.get("image_url") or {}).get("url", ""))))
    return blocks


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _openai_tool_to_anthropic(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    out = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object"},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _openai_tool_choice_to_anthropic(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        out: dict[str, Any] = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    elif choice in ("auto", "required", "none"):
        out = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif parallel is False:
        out = {"type": "auto"}
    else:
        return None
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# ----------------------------------------------------------------------------- responses


def anthropic_response_to_openai(
    body: dict[str, Any], *, model: str, created: int
) -> dict[str, Any]:
    """An Anthropic message as an OpenAI chat completion."""
    blocks = [b for b in body.get("content") or [] if isinstance(b, dict)]
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish = _ANTHROPIC_TO_OPENAI_FINISH.get(str(body.get("stop_reason")), "stop")
    return {
        "id": f"chatcmpl-{body.get('id', '')}",
        "object": "chat.completion",
        "created": created,
        "model": body.get("model") or model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": openai_usage(usage_from_anthropic(body) or Usage()),
    }


def openai_response_to_anthropic(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic message."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = _openai_assistant_blocks(message)
    stop_reason = _OPENAI_TO_ANTHROPIC_STOP.get(str(choice.get("finish_reason")), "end_turn")
    return {
        "id": f"msg_{body.get('id', '')}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or model,
        "content": content or [{"type": "text", "text": ""}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(usage_from_openai(body) or Usage()),
    }


def openai_usage(usage: Usage) -> dict[str, Any]:
    """Usage in OpenAI's shape."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Usage in Anthropic's shape (input_tokens there excludes cache reads)."""
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": 0,
    }


# ----------------------------------------------------------------------------- streams


class AnthropicToOpenAIStream:
    """Anthropic stream events in, OpenAI chat.completion.chunk dicts out.

    Ends with a usage-only chunk (empty choices), as OpenAI's `include_usage` does; the caller
    drops it for a downstream that did not ask for usage.
    """

    def __init__(self, model: str, created: int) -> None:
        self.model = model
        self.created = created
        self.id = "chatcmpl-routemesh"
        self.usage: Usage | None = None
        self.finished = False
        self._tools: dict[int, int] = {}

    def feed(self, name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event becomes (often none)."""
        if name == "message_start":
            message = data.get("message") or {}
            self.id = f"chatcmpl-{message.get('id', 'routemesh')}"
            self.usage = usage_from_anthropic(message)
            return [self._chunk({"role": "assistant", "content": ""})]
        if name == "content_block_start":
            return self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        if name == "content_block_delta":
            return self._block_delta(int(data.get("index", 0)), data.get("delta") or {})
        if name == "message_delta":
            return self._message_delta(data)
        if name == "message_stop":
            self.finished = True
            return [
                {**self._chunk(None), "choices": [], "usage": openai_usage(self.usage or Usage())}
            ]
        return []

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}
            ],
        }

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        if block.get("type") == "tool_use":
            position = len(self._tools)
            self._tools[index] = position
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        if delta.get("type") == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if delta.get("type") == "input_json_delta" and index in self._tools:
            call = {
                "index": self._tools[index],
                "function": {"arguments": delta.get("partial_json", "")},
            }
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        usage = data.get("usage") or {}
        base = self.usage or Usage()
        self.usage = Usage(
            input_tokens=base.input_tokens,
            output_tokens=int(usage.get("output_tokens", base.output_tokens)),
            cached_input_tokens=base.cached_input_tokens,
        )
        stop = (data.get("delta") or {}).get("stop_reason")
        return [self._chunk({}, _ANTHROPIC_TO_OPENAI_FINISH.get(str(stop), "stop"))]


class OpenAIToAnthropicStream:
    """OpenAI chunks in, Anthropic (event name, data) pairs out; `finish()` at `[DONE]`."""

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self.usage: Usage | None = None
        self.finished = False
        self._started = False
        self._open: int | None = None
        self._next_index = 0
        self._text_index: int | None = None
        self._tools: dict[int, int] = {}
        self._stop_reason = "end_turn"

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The events one chunk becomes."""
        events = self._start()
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(str(delta["content"]))
            for call in delta.get("tool_calls") or []:
                events += self._tool(call)
            if choice.get("finish_reason"):
                self._stop_reason = _OPENAI_TO_ANTHROPIC_STOP.get(
                    choice["finish_reason"], "end_turn"
                )
        return events

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        """Close the open block and the message."""
        events = self._start() + self._close()
        usage = self.usage or Usage()
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                    "usage": {
                        "output_tokens": usage.output_tokens,
                        "input_tokens": usage.input_tokens - usage.cached_input_tokens,
                        "cache_read_input_tokens": usage.cached_input_tokens,
                    },
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        self.finished = True
        return events

    def _start(self) -> list[tuple[str, dict[str, Any]]]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open_block(self, block: dict[str, Any]) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
        events = self._close()
        index = self._next_index
        self._next_index += 1
        self._open = index
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        return index, events

    def _text(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if self._text_index is None or self._open != self._text_index:
            self._text_index, events = self._open_block({"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": self._text_index, "delta": delta},
            )
        )
        return events

    def _tool(self, call: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        position = int(call.get("index", 0))
        function = call.get("function") or {}
        if position not in self._tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": {},
            }
            self._tools[position], events = self._open_block(block)
        if function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": self._tools[position], "delta": delta},
                )
            )
        return events


def _text_of(content: Any) -> str:
    """The text of a content value of either API: a string, or a list of text blocks/parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def _copy(source: dict[str, Any], target: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if source.get(key) is not None:
            target[key] = source[key]
