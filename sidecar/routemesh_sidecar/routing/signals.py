"""Signals: the features of a request that route matches and filters read.

Computed once per request, lazily, from the request body in either API's shape. The token estimate
is deliberately cheap (no tokenizer): it runs on every request that reads signals, and routing
mostly needs to know whether a prompt is short or long; where the exact number matters,
`routing.tokens` counts it. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from routemesh_sidecar.routetable import Api

# Code in a prompt: a fenced block, or lines that look like statements of common languages.
_CODE = re.compile(
    r"```|^\s*(def |class |import |from \S+ import |function |const |let |var |#include|"
    r"public |private |func |fn |package |SELECT |INSERT |<\?php|<script)"
    r"|[;{}]\s*$",
    re.MULTILINE,
)
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class RequestSignals:
    """What routing knows about a request's content."""

    prompt_tokens: int  # the estimate: see `routing.tokens` for the exact count
    max_output_tokens: int | None
    text: str
    modalities: frozenset[str]
    tools_present: bool
    message_count: int = 0

    @cached_property
    def code_present(self) -> bool:
        """Whether the prompt contains code; searched only when a route asks."""
        return bool(_CODE.search(self.text))


def read_signals(api: Api, body: dict[str, Any]) -> RequestSignals:
    """The signals of an OpenAI- or Anthropic-shaped request body."""
    texts: list[str] = []
    modalities: set[str] = set()
    messages = body.get("messages")
    message_count = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                message_count += 1
                _collect(message.get("content"), texts, modalities)
    for key in ("system", "prompt", "input"):
        _collect(body.get(key), texts, modalities)
    text = "\n".join(texts)
    tokens = -(-len(text) // _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * message_count
    max_output = body.get("max_completion_tokens") or body.get("max_tokens")
    return RequestSignals(
        prompt_tokens=tokens,
        max_output_tokens=max_output if isinstance(max_output, int) else None,
        text=text,
        modalities=frozenset(modalities or {"Text"}),
        tools_present=bool(body.get("tools")),
        message_count=message_count,
    )


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of either API's body (else a prompt or input string).

    A user message that only carries tool results is not what the user asked, so it is passed
    over for the one before it.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                texts = _user_texts(message.get("content"))
                if texts:
                    return "\n".join(texts)
        return ""
    for key in ("prompt", "input"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return ""


def _user_texts(content: Any) -> list[str]:
    """The text parts a user wrote (tool results left out)."""
    if isinstance(content, str):
        return [content] if content else []
    texts: list[str] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


def _collect(content: Any, texts: list[str], modalities: set[str]) -> None:
    """Gather text and note modalities from a content value of either API."""
    if isinstance(content, str):
        texts.append(content)
        modalities.add("Text")
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                modalities.add("Text")
            elif isinstance(part, dict):
                _collect_part(part, texts, modalities)


def _collect_part(part: dict[str, Any], texts: list[str], modalities: set[str]) -> None:
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        texts.append(part["text"])
        modalities.add("Text")
    elif kind in ("image_url", "image"):
        modalities.add("Image")
    elif kind in ("input_audio", "audio"):
        modalities.add("Audio")
    elif kind == "tool_result":
        _collect(part.get("content"), texts, modalities)
