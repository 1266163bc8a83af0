"""Content capture's shapes, table-driven.

The GenAI conventions' messages from either API, the size cap, and a streamed answer collected
from the events the downstream was sent.
"""

import json

import pytest

from routemesh_sidecar.protocol.sse import encode_event
from routemesh_sidecar.telemetry.content import (
    StreamCapture,
    content_attributes,
    input_content,
    output_messages,
)

WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


@pytest.mark.parametrize(
    ("api", "body", "system", "inputs"),
    [
        (
            "openai",
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"},
                ]
            },
            [],
            [
                {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
                {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
            ],
        ),
        (
            "anthropic",
            {
                "system": "Be brief.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "こんにちは"}]}],
            },
            [{"type": "text", "content": "Be brief."}],
            [{"role": "user", "parts": [{"type": "text", "content": "こんにちは"}]}],
        ),
        (
            "openai",
            {
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "rainy"},
                ]
            },
            [],
            [
                {
                    "role": "assistant",
                    "parts": [
                        {
                            "type": "tool_call",
                            "id": "call_1",
                            "name": "get_weather",
                            "arguments": '{"city":"Paris"}',
                        }
                    ],
                },
                {
                    "role": "tool",
                    "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy"}],
                },
            ],
        ),
        (
            "openai",
            {"prompt": "Once upon"},
            [],
            [{"role": "user", "parts": [{"type": "text", "content": "Once upon"}]}],
        ),
        (
            "openai",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:..."}}],
                    }
                ]
            },
            [],
            [{"role": "user", "parts": [{"type": "image_url"}]}],  # named, never inlined
        ),
        ("openai", {"messages": []}, [], []),
    ],
)
def test_input_content_follows_the_genai_message_schema(api, body, system, inputs):
    assert input_content(api, body) == (system, inputs)


def test_output_messages_of_both_apis():
    openai_body = {
        "choices": [{"message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}]
    }
    assert output_messages("openai", json.dumps(openai_body).encode()) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Hello"}],
            "finish_reason": "stop",
        }
    ]
    anthropic_body = {"content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn"}
    assert output_messages("anthropic", json.dumps(anthropic_body).encode()) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Hello"}],
            "finish_reason": "stop",
        }
    ]
    assert output_messages("openai", b"not json") == []


def test_the_size_cap_cuts_text_then_drops_the_oldest_messages_and_says_so():
    long = [{"role": "user", "parts": [{"type": "text", "content": "x" * 200_000}]}]
    attributes = content_attributes(1024, inputs=long)
    assert len(attributes["gen_ai.input.messages"].encode()) <= 1024
    assert json.loads(attributes["gen_ai.input.messages"])[0]["parts"][0]["content"].endswith("…")
    assert attributes["routemesh.content.truncated"] is True
    many = [
        {"role": "user", "parts": [{"type": "text", "content": f"message {i}"}]} for i in range(500)
    ]
    kept = json.loads(content_attributes(1024, inputs=many)["gen_ai.input.messages"])
    assert kept[-1]["parts"][0]["content"] == "message 499", "the newest messages are kept"
    small = content_attributes(
        1024, inputs=[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]
    )
    assert "routemesh.content.truncated" not in small
    assert content_attributes(1024) == {}


def test_a_streamed_openai_answer_is_collected_from_its_chunks_even_split_mid_event():
    chunks = [
        {"choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ]
    wire = b"".join(encode_event(json.dumps(c)) for c in chunks) + encode_event("[DONE]")
    capture = StreamCapture("openai", 100)
    for i in range(0, len(wire), 7):  # relayed in arbitrary pieces
        capture.feed(wire[i : i + 7])
    assert capture.messages() == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Hello"}],
            "finish_reason": "stop",
        }
    ]
    assert capture.truncated is False


def test_a_streamed_anthropic_answer_is_collected_up_to_the_limit():
    events = [
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "abcdef"}},
        ),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}),
    ]
    capture = StreamCapture("anthropic", 4)
    for name, data in events:
        capture.feed(encode_event(json.dumps(data), name))
    (message,) = capture.messages()
    assert message["parts"] == [{"type": "text", "content": "abcd"}]
    assert message["finish_reason"] == "length", "read past the limit: the end still counts"
    assert capture.truncated is True
