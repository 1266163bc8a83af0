"""The SSE parser: whatever way the bytes are split, the same events come out."""

import random

import pytest

from routemesh_sidecar.protocol.sse import SSEEvent, SSEParser, encode_event

STREAM = (
    b": a comment the parser skips\n"
    b'event: message_start\ndata: {"type": "message_start"}\n\n'
    b'data: {"text": "caf\xc3\xa9"}\n\n'
    b"data: line one\ndata: line two\n\n"
    b"event: ping\r\ndata: {}\r\n\r\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", '{"type": "message_start"}'),
    SSEEvent(None, '{"text": "café"}'),
    SSEEvent(None, "line one\nline two"),
    SSEEvent("ping", "{}"),
    SSEEvent(None, "[DONE]"),
]


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + parser.flush()


def test_whole_stream():
    assert parse([STREAM]) == EXPECTED


def test_byte_by_byte_including_split_utf8_and_crlf():
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), 12))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    assert parse(chunks) == EXPECTED


def test_an_event_without_its_blank_line_is_kept_at_the_end():
    assert parse([b"data: last"]) == [SSEEvent(None, "last")]


def test_encode_round_trips():
    encoded = encode_event("a\nb", "delta") + encode_event("[DONE]")
    assert parse([encoded]) == [SSEEvent("delta", "a\nb"), SSEEvent(None, "[DONE]")]
