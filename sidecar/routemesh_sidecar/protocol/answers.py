"""What an answer says, read from either API's response or stream: for judging it, not relaying it.

The cascade's quality gate (`upstream.cascade`) calls `answer_from_body` on a whole response, or
feeds an `AnswerReader` the bytes of a buffered stream, always in the downstream's API shape (after
any translation), and judges the `Answer`. It reads the text, the finish reason, whether tools
were called, and whether the API itself flagged a refusal (OpenAI's `message.refusal`, the finish
reasons `content_filter` and Anthropic's `refusal`). Pure: no I/O, and it never changes the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from routemesh_sidecar.protocol.sse import SSEParser
from routemesh_sidecar.routetable import Api

_CHARS_PER_TOKEN = 4  # as the signals estimate prompts: only when the upstream sent no usage


@dataclass
class Answer:
    """The parts of an answer a quality gate reads."""

    text: str = ""
    finish_reason: str | None = None  # as the downstream's API spells it
    tool_calls: bool = False
    refused: bool = False  # the API said so, apart from what the text says

    def estimated_output_tokens(self) -> int:
        """Output tokens guessed from the text, for an upstream that reported no usage."""
        return -(-len(self.text) // _CHARS_PER_TOKEN) if self.text else 0


def answer_from_body(api: Api, raw: bytes) -> Answer:
    """The answer in a whole chat or completion response; an empty answer for anything else."""
    try:
        data = orjson.loads(raw)
    except ValueError:
        return Answer()
    if not isinstance(data, dict):
        return Answer()
    return _anthropic_message(data) if api == "anthropic" else _openai_response(data)


def _openai_response(data: dict[str, Any]) -> Answer:
    choice = _first_choice(data)
    answer = Answer(finish_reason=_str(choice.get("finish_reason")))
    message = choice.get("message")
    if isinstance(message, dict):
        answer.text = _str(message.get("content")) or ""
        answer.tool_calls = bool(message.get("tool_calls") or message.get("function_call"))
        answer.refused = bool(message.get("refusal"))
    else:  # a legacy completion
        answer.text = _str(choice.get("text")) or ""
    answer.refused = answer.refused or answer.finish_reason == "content_filter"
    return answer


def _anthropic_message(data: dict[str, Any]) -> Answer:
    answer = Answer(finish_reason=_str(data.get("stop_reason")))
    texts: list[str] = []
    for block in data.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(_str(block.get("text")) or "")
        elif block.get("type") == "tool_use":
            answer.tool_calls = True
    answer.text = "".join(texts)
    answer.refused = answer.finish_reason == "refusal"
    return answer


@dataclass
class AnswerReader:
    """Reads an answer from a stream's downstream bytes, chunk by chunk, as they are buffered."""

    api: Api
    _parser: SSEParser = field(default_factory=SSEParser)
    _texts: list[str] = field(default_factory=list)
    _answer: Answer = field(default_factory=Answer)

    def feed(self, chunk: bytes) -> None:
        """Read the events the chunk completes."""
        for event in self._parser.feed(chunk):
            if event.data == "[DONE]" or not event.data.startswith("{"):
                continue
            try:
                data = orjson.loads(event.data)
            except ValueError:
                continue
            if isinstance(data, dict):
                if self.api == "anthropic":
                    self._anthropic_event(data)
                else:
                    self._openai_chunk(data)

    def answer(self) -> Answer:
        """The answer read so far."""
        self._answer.text = "".join(self._texts)
        return self._answer

    def _openai_chunk(self, data: dict[str, Any]) -> None:
        choice = _first_choice(data)
        answer = self._answer
        finish = _str(choice.get("finish_reason"))
        if finish:
            answer.finish_reason = finish
            answer.refused = answer.refused or finish == "content_filter"
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = _str(delta.get("content"))
            if content:
                self._texts.append(content)
            answer.tool_calls = answer.tool_calls or bool(
                delta.get("tool_calls") or delta.get("function_call")
            )
            answer.refused = answer.refused or bool(delta.get("refusal"))
        elif _str(choice.get("text")):  # a legacy completion's chunk
            self._texts.append(str(choice["text"]))

    def _anthropic_event(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        answer = self._answer
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                self._texts.append(_str(delta.get("text")) or "")
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            answer.tool_calls = answer.tool_calls or (
                isinstance(block, dict) and block.get("type") == "tool_use"
            )
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            stop = _str(delta.get("stop_reason")) if isinstance(delta, dict) else None
            if stop:
                answer.finish_reason = stop
                answer.refused = answer.refused or stop == "refusal"


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
