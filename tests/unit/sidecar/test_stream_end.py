"""How a relayed stream's end is reported to health: the upstream's fault or not.

The upstream response is replaced at its seam by a scripted one (headers, chunks, close), so the
test drives `UpstreamStream.relay` exactly as the listener does.
"""

import asyncio
import contextlib
from typing import Any

import pytest

from routemesh_sidecar.upstream.client import (
    AttemptTarget,
    DownstreamCall,
    StreamBroken,
    UpstreamStream,
)
from routemesh_testing.tables import backend, model_info

pytestmark = pytest.mark.timeout(10)

CALL = DownstreamCall("openai", "chat", {"model": "m", "messages": [], "stream": True}, {})
B = backend("http://b/v1")
TARGET = AttemptTarget("b", B, B.endpoints[0], "m", model_info())


def chunk(text: str) -> bytes:
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"' + text.encode() + b'"}}]}\n\n'
    )


class Content:
    def __init__(self, chunks: list[bytes], stall: bool = False) -> None:
        self.chunks = chunks
        self.stall = stall  # out of chunks, wait for more that never come
        self.failure: tuple[float, BaseException] | None = None

    async def readany(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.stall:  # as the real response: its deadline fails the read that waits
            assert self.failure is not None, "a stream's relay must set its deadline"
            when, error = self.failure
            await asyncio.sleep(max(0.0, when - asyncio.get_running_loop().time()))
            raise error
        return b""


class Response:
    def __init__(self, chunks: list[bytes], stall: bool = False) -> None:
        self.headers = {"content-type": "text/event-stream"}
        self.content = Content(chunks, stall)
        self.closed = False

    def fail_at(self, when: float, error: BaseException) -> None:
        self.content.failure = (when, error)

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:  # done with it: the real response may keep its connection
        self.closed = True
        self.released = True


async def stream_of(
    chunks: list[bytes], ended: list[Any], *, stall: bool = False, seconds: float = 5
) -> tuple[UpstreamStream, Response]:
    response = Response(chunks, stall)
    loop_time = asyncio.get_running_loop().time()
    stream = UpstreamStream(CALL, TARGET, response, loop_time + seconds)  # type: ignore[arg-type]
    stream.on_end = ended.append
    await stream.read_first_event()
    return stream, response


@pytest.mark.asyncio
async def test_a_stream_that_reaches_its_end_is_reported_as_fine_once():
    ended: list[Any] = []
    stream, response = await stream_of([chunk("a"), chunk("b"), b"data: [DONE]\n\n"], ended)
    relayed = [data async for data in stream.relay()]
    assert relayed[-1] == b"data: [DONE]\n\n"
    assert ended == [None]
    assert response.closed


@pytest.mark.asyncio
async def test_an_upstream_that_ends_early_is_reported_as_stream_broken():
    ended: list[Any] = []
    stream, _ = await stream_of([chunk("a")], ended)
    with pytest.raises(StreamBroken):
        async for _ in stream.relay():
            pass
    assert ended == ["stream_broken"]


@pytest.mark.asyncio
async def test_a_stream_still_going_at_the_requests_deadline_breaks_as_a_timeout():
    ended: list[Any] = []
    stream, response = await stream_of([chunk("a")], ended, stall=True, seconds=0.05)
    relayed: list[bytes] = []

    async def relay_all() -> None:
        async for data in stream.relay():
            relayed.append(data)

    with pytest.raises(StreamBroken) as broken:
        await relay_all()
    assert relayed == [chunk("a")], "what came before the deadline went out"
    assert broken.value.error_class == "timeout"
    assert ended == ["timeout"]
    assert response.closed


@pytest.mark.asyncio
async def test_a_downstream_that_stops_reading_is_not_the_upstreams_fault():
    ended: list[Any] = []
    stream, response = await stream_of([chunk("a"), chunk("b"), chunk("c")], ended)
    async with contextlib.aclosing(stream.relay()) as relayed:
        async for _ in relayed:
            break  # the listener's write failed: the app went away
    assert ended == [None]
    assert response.closed


@pytest.mark.asyncio
async def test_an_abandoned_stream_is_closed_and_reported_once():
    ended: list[Any] = []
    stream, response = await stream_of([chunk("a")], ended)
    stream.abandon()
    stream.abandon()
    assert ended == [None]
    assert response.closed


@pytest.mark.asyncio
async def test_events_that_arrived_together_go_out_in_one_write_and_none_waits():
    ended: list[Any] = []
    stream, _ = await stream_of(
        [chunk("a") + chunk("b") + chunk("c"), chunk("d"), b"data: [DONE]\n\n"], ended
    )
    relayed = [data async for data in stream.relay()]
    assert relayed == [chunk("a") + chunk("b") + chunk("c"), chunk("d"), b"data: [DONE]\n\n"]


@pytest.mark.asyncio
async def test_the_events_before_an_error_event_in_the_same_read_still_go_out():
    ended: list[Any] = []
    error = b'data: {"error":{"type":"server_error","message":"model crashed"}}\n\n'
    stream, _ = await stream_of([chunk("a"), chunk("b") + error + chunk("c")], ended)
    relayed: list[bytes] = []

    async def relay_all() -> None:
        async for data in stream.relay():
            relayed.append(data)

    with pytest.raises(StreamBroken, match="model crashed"):
        await relay_all()
    assert relayed == [chunk("a"), chunk("b")]
    assert ended == ["server_error"]
