"""Translation between the OpenAI and Anthropic APIs, and request validation."""

import json
from typing import Any

import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from routemesh_sidecar.protocol.anthropic import parse_messages_request
from routemesh_sidecar.protocol.errors import ApiError, anthropic_error, openai_error
from routemesh_sidecar.protocol.openai import parse_chat_request
from routemesh_sidecar.protocol.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
    openai_response_to_anthropic,
)
from routemesh_sidecar.protocol.usage import Usage, usage_from_anthropic

ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "claude",
    "max_tokens": 100,
    "system": [{"type": "text", "text": "Be brief."}],
    "stop_sequences": ["END"],
    "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "any"},
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
}


def test_anthropic_request_to_openai():
    out = anthropic_request_to_openai(ANTHROPIC_REQUEST)
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}
    assert out["messages"][2]["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": '{"city": "Paris"}',
    }
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"}
    assert out["messages"][4] == {"role": "user", "content": "And tomorrow?"}
    assert out["tool_choice"] == "required"
    assert out["stop"] == ["END"]
    assert out["tools"][0]["function"]["parameters"] == {"type": "object"}


def test_round_trip_keeps_text_system_tools_and_tool_results():
    back = openai_request_to_anthropic(
        anthropic_request_to_openai(ANTHROPIC_REQUEST), default_max_tokens=1
    )
    assert back["system"] == "Be brief."
    assert back["max_tokens"] == 100
    assert back["tool_choice"] == {"type": "any"}
    assert back["tools"] == ANTHROPIC_REQUEST["tools"]
    assert back["messages"][1]["content"] == ANTHROPIC_REQUEST["messages"][1]["content"]
    assert back["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": "Sunny",
    }
    assert back["messages"][3] == {"role": "user", "content": "And tomorrow?"}


def test_openai_only_features_are_refused_or_mapped():
    with pytest.raises(ApiError, match="n > 1"):
        openai_request_to_anthropic({"model": "x", "messages": [], "n": 2}, default_max_tokens=10)
    bad_arguments = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
    }
    with pytest.raises(ApiError) as refused:
        openai_request_to_anthropic(
            {"model": "x", "messages": [bad_arguments]}, default_max_tokens=10
        )
    assert refused.value.status == 400
    image = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
    }
    out = openai_request_to_anthropic(
        {"model": "x", "messages": [image], "temperature": 1.7}, default_max_tokens=64
    )
    assert out["messages"][0]["content"][0]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAAA",
    }
    assert out["temperature"] == 1.0
    assert out["max_tokens"] == 64


def test_responses_translate_into_valid_sdk_objects():
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4},
    }
    completion = ChatCompletion.model_validate(
        anthropic_response_to_openai(message, model="c", created=1)
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (14, 5)
    back = Message.model_validate(openai_response_to_anthropic(completion.model_dump(), model="c"))
    assert back.stop_reason == "tool_use"
    assert back.usage.cache_read_input_tokens == 4
    assert back.usage.input_tokens == 10


def test_anthropic_usage_counts_cache_reads_and_writes_as_input():
    assert usage_from_anthropic(
        {
            "usage": {
                "input_tokens": 3,
                "output_tokens": 2,
                "cache_read_input_tokens": 5,
                "cache_creation_input_tokens": 7,
            }
        }
    ) == Usage(15, 2, 5)


def test_stream_translators_produce_sdk_valid_events():
    to_openai = AnthropicToOpenAIStream(model="claude", created=1)
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"id": "m", "usage": {"input_tokens": 9, "output_tokens": 1}},
            },
        ),
        (
            "content_block_start",
            {
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a"'}},
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "input_json_delta", "partial_json": ": 1}"}},
        ),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
        ("message_stop", {}),
    ]
    chunks = [
        ChatCompletionChunk.model_validate(c)
        for name, data in events
        for c in to_openai.feed(name, data)
    ]
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[union-attr]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments) == {"a": 1}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7
    assert to_openai.finished

    to_anthropic = OpenAIToAnthropicStream(model="gpt", message_id="msg_x")
    out = []
    for chunk in chunks:
        out += to_anthropic.feed(chunk.model_dump(exclude_none=True))
    out += to_anthropic.finish()
    names = [name for name, _ in out]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert out[-2][1]["delta"]["stop_reason"] == "tool_use"
    partial = "".join(d["delta"]["partial_json"] for n, d in out if n == "content_block_delta")
    assert json.loads(partial) == {"a": 1}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "parse the JSON"),
        (b"[]", "JSON object"),
        (b'{"messages": [{"role": "user"}]}', "'model'"),
        (b'{"model": "m", "messages": "hi"}', "'messages'"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "'role'"),
        (b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "'stream'"),
    ],
)
def test_chat_requests_are_refused_naming_the_field(body: bytes, words: str):
    with pytest.raises(ApiError) as refused:
        parse_chat_request(body)
    assert refused.value.status == 400
    assert words in refused.value.message


def test_messages_request_needs_a_positive_max_tokens():
    for bad in (
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}',
    ):
        with pytest.raises(ApiError, match="max_tokens"):
            parse_messages_request(bad)


def test_error_bodies_have_each_apis_shape():
    assert openai_error(429, "slow down")["error"]["type"] == "rate_limit_error"
    assert anthropic_error(404, "no such model") == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such model"},
    }
