"""The Cascade strategy's quality gate, and the buffering of the answers it judges.

The attempt loop (`upstream.executor`) calls `buffer_stream` on a streamed answer from a target
that is not the cascade's last (the downstream must not see an answer that may be thrown away),
then `judge` on every such answer, whole or buffered. A verdict with reasons escalates to the next
target; one without is the answer. The last target is never judged, and streams through.

What the gate checks, in the downstream's API shape (`protocol.answers` reads it):
- `too_short`: fewer output tokens than `min_output_tokens` (the upstream's usage; the text's
  length over four when it sent none; an answer that only calls tools is never too short).
- `refusal`: the API flagged a refusal (OpenAI's `message.refusal`, finish reason
  `content_filter`, Anthropic's stop reason `refusal`), or the text opens with a refusal phrase
  (`REFUSAL`, below). Lexical and English-only: an answer that refuses in other words passes.
- `incomplete`: the finish reason is not one that means the model finished (`COMPLETE_FINISH`):
  `length` and `max_tokens` (cut off by the token limit), a missing reason, anything unknown.

It never decides which target comes next, and never writes to the downstream.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from routemesh_sidecar.protocol.answers import Answer, AnswerReader, answer_from_body
from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import ModelInfo, QualityGate
from routemesh_sidecar.upstream.classify import UpstreamFailure
from routemesh_sidecar.upstream.client import (
    DownstreamCall,
    StreamBroken,
    UpstreamReply,
    UpstreamStream,
)

# Finish reasons of both APIs that mean the model ended its answer itself.
COMPLETE_FINISH = frozenset(
    {"stop", "end_turn", "stop_sequence", "tool_calls", "tool_use", "function_call"}
)

# How a refusal opens: an optional apology ("I'm sorry, but", "Unfortunately,"), an optional
# "As an AI ...,", then "I can't/cannot/won't <help|assist|...>", "I'm not going to <help|...>",
# "I'm unable/not able to", "I must decline" or "I don't feel comfortable". Only the opening
# counts: an answer that says "I can't" later on, or opens "I'm sorry to hear that", is no refusal.
_APOLOGY = (
    r"(?:(?:i'm|i am)(?: really| very| so)? sorry|sorry|i apologi[sz]e|apologies|unfortunately)"
)
_TASK_VERBS = (
    r"(?:help|assist|comply|provide|do|fulfil|fulfill|answer|support|create|generate|write|"
    r"share|complete|engage|give|produce|continue|participate|offer|discuss)"
)
_NEGATION = (
    r"i (?:can't|cannot|can not|won't|will not) "
    + _TASK_VERBS
    + r"|i(?:'m| am) not (?:going|willing) to "
    + _TASK_VERBS
    + r"|i(?:'m| am) (?:not able|unable) to "
    + r"|i (?:must|have to|need to) decline"
    + r"|i (?:don't|do not) feel comfortable"
)
REFUSAL = re.compile(
    rf"^(?:{_APOLOGY}[,.!]* (?:but )?)?(?:as an ai\b[^,.]{{0,40}}, )?(?:{_NEGATION})"
)
_REFUSAL_HEAD = 200  # characters: a refusal says so at once
_SPACES = re.compile(r"\s+")
_LEADING = " \t\n\"'*_>#-"


def is_refusal(text: str) -> bool:
    """Whether the text opens like a refusal (see `REFUSAL`)."""
    head = text[:_REFUSAL_HEAD].replace("\u2019", "'").lower()
    return REFUSAL.match(_SPACES.sub(" ", head).lstrip(_LEADING)) is not None


@dataclass(frozen=True)
class Verdict:
    """What the gate made of an answer; no reasons means it is accepted."""

    reasons: tuple[str, ...]
    output_tokens: int
    finish_reason: str | None

    @property
    def accepted(self) -> bool:
        """Whether the answer passes the gate."""
        return not self.reasons


def judge(gate: QualityGate, answer: Answer, usage: Usage | None) -> Verdict:
    """The verdict on one answer; `usage` is the upstream's own count, when it sent one."""
    tokens = usage.output_tokens if usage is not None else answer.estimated_output_tokens()
    reasons: list[str] = []
    # Without usage, an answer that only calls tools has no text to count: not too short.
    counted = usage is not None or not answer.tool_calls
    if counted and tokens < gate.min_output_tokens:
        reasons.append("too_short")
    if gate.reject_refusals and (answer.refused or is_refusal(answer.text)):
        reasons.append("refusal")
    if gate.require_complete and answer.finish_reason not in COMPLETE_FINISH:
        reasons.append("incomplete")
    return Verdict(tuple(reasons), tokens, answer.finish_reason)


@dataclass
class BufferedStream:
    """A streamed answer read whole before the downstream saw any of it; replayed as it came.

    It offers what the listener uses of an `UpstreamStream` (`relay`, `abandon`, `usage`,
    `response_model`), so an accepted answer is written event by event like a live one.
    """

    chunks: list[bytes]
    usage: Usage | None
    response_model: str | None
    answer: Answer

    async def relay(self) -> AsyncGenerator[bytes, None]:
        """The downstream bytes, in the chunks they were read in."""
        for chunk in self.chunks:
            yield chunk

    def abandon(self) -> None:
        """Nothing to free: the upstream response was read to its end."""


class UnsentStreamBroken(UpstreamFailure):
    """A buffered stream broke before the downstream saw any of it.

    Its class stays the one the relay gave (`stream_broken`, `timeout`, ...), but it may fail
    over like a failure before the first byte, since nothing was sent.
    """


async def buffer_stream(stream: UpstreamStream) -> BufferedStream:
    """Read a stream to its end; raise `UnsentStreamBroken` if it breaks on the way.

    Reading it through `relay` keeps what the live path does: translation, usage tracking,
    the request's deadline, and health told how the stream ended.
    """
    reader = AnswerReader(stream.call.api)
    chunks: list[bytes] = []
    try:
        async with contextlib.aclosing(stream.relay()) as relayed:
            async for data in relayed:
                chunks.append(data)
                reader.feed(data)
    except StreamBroken as broken:
        raise UnsentStreamBroken(broken.error_class, broken.message) from broken
    return BufferedStream(chunks, stream.usage, stream.response_model, reader.answer())


def judge_result(
    gate: QualityGate, call: DownstreamCall, result: UpstreamReply | BufferedStream
) -> Verdict:
    """The verdict on a whole answer or a buffered stream; what is not chat or text passes."""
    if call.operation == "embeddings":
        return Verdict((), 0, None)
    if isinstance(result, BufferedStream):
        return judge(gate, result.answer, result.usage)
    return judge(gate, answer_from_body(call.api, result.body), result.usage)


@dataclass(frozen=True)
class Escalation:
    """An answer the gate rejected: who gave it, why, and what it cost (for accounting)."""

    backend_name: str
    model: str
    model_info: ModelInfo
    verdict: Verdict
    usage: Usage | None

    @property
    def label(self) -> str:
        """How traces name the target: backend/model."""
        return f"{self.backend_name}/{self.model}"
