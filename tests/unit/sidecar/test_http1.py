"""The upstream HTTP/1.1 client against real sockets: servers here write exact bytes.

Each server is an `asyncio` server on 127.0.0.1 that answers with scripted bytes, so that the
cases a library server would never send (a body cut short, malformed HTTP, an answer without a
length, an interim 103) are on the wire exactly.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from routemesh_sidecar.protocol import http1
from routemesh_sidecar.protocol.http1 import (
    ConnectFailed,
    ConnectionPool,
    MalformedResponse,
    UpstreamClosed,
)

pytestmark = [pytest.mark.timeout(10), pytest.mark.asyncio]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class Server:
    """A scripted server that counts connections and keeps the requests it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.peak_open = 0
        self.disconnects = asyncio.Event()
        self.requests: list[bytes] = []
        self.received = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self.disconnects.set()
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        self.received.set()
        return request


@asynccontextmanager
async def serving(script: Callable[[Server], Handler]) -> AsyncIterator[tuple[Server, str]]:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = script(server)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        listener.close()
        await listener.wait_closed()


def answering(*answers: bytes, then_close: bool = False) -> Callable[[Server], Handler]:
    """Answer each request on a connection with the next scripted answer."""

    def script(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                await server.read_request(reader)
                writer.write(answer)
                await writer.drain()
            if not then_close:
                await reader.read()  # keep it open until the client goes

        return handle

    return script


def keep_answering(answer: bytes) -> Callable[[Server], Handler]:
    def script(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(answer)
                await writer.drain()

        return handle

    return script


def slowly_answering(answer: bytes) -> Callable[[Server], Handler]:
    """Answer every request on a connection, each 20 ms after it arrived."""

    def script(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                await asyncio.sleep(0.02)
                writer.write(answer)
                await writer.drain()

        return handle

    return script


async def post(pool: ConnectionPool, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await pool.post("/chat/completions", {"x-test": "1"}, body, connect_timeout=2)
    return response.status, await response.read()


async def test_sequential_requests_share_one_keep_alive_connection():
    async with serving(keep_answering(OK)) as (server, url):
        pool = ConnectionPool(url)
        for _ in range(5):
            assert await post(pool) == (200, b'{"ok":true}')
        await pool.close()
    assert server.connections == 1
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: {url.split('/')[2]}\r\n".encode() in request
    assert b"x-test: 1\r\n" in request
    assert request.endswith(b"\r\n\r\n{}")


async def test_a_chunked_answer_is_read_whole():
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with serving(keep_answering(chunked)) as (server, url):
        pool = ConnectionPool(url)
        assert await post(pool) == (200, b"hello world")
        assert await post(pool) == (200, b"hello world")
        await pool.close()
    assert server.connections == 1


async def test_an_answer_without_a_length_ends_with_its_connection_which_is_not_reused():
    async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil close", then_close=True)) as (
        server,
        url,
    ):
        pool = ConnectionPool(url)
        assert await post(pool) == (200, b"until close")
        assert await post(pool) == (200, b"until close")
        await pool.close()
    assert server.connections == 2


async def test_a_gzip_body_sent_unasked_is_decoded():
    packed = gzip.compress(b'{"ok":"gzip"}')
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
        + str(len(packed)).encode()
        + b"\r\n\r\n"
        + packed
    )
    async with serving(keep_answering(answer)) as (server, url):
        pool = ConnectionPool(url)
        assert await post(pool) == (200, b'{"ok":"gzip"}')
        await pool.close()
    assert b"accept-encoding" not in server.requests[0].lower()  # never advertised


async def test_an_unknown_content_encoding_is_a_malformed_response():
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nxx"
    async with serving(keep_answering(answer)) as (_, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        with pytest.raises(MalformedResponse, match="content-encoding 'br'"):
            await response.read()
        await pool.close()


async def test_a_body_cut_short_raises_and_is_never_returned_truncated():
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":'
    async with serving(answering(cut, then_close=True)) as (_, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        assert response.status == 200
        with pytest.raises(UpstreamClosed, match="mid-answer"):
            await response.read()
        await pool.close()


async def test_a_connection_closed_before_any_answer_raises_upstream_closed():
    def script(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)  # then close without a word

        return handle

    async with serving(script) as (_, url):
        pool = ConnectionPool(url)
        with pytest.raises(UpstreamClosed, match="before answering"):
            await post(pool)
        await pool.close()


async def test_malformed_http_is_a_malformed_response():
    async with serving(answering(b"SMTP ready\r\n\r\n")) as (_, url):
        pool = ConnectionPool(url)
        with pytest.raises(MalformedResponse, match="malformed HTTP"):
            await post(pool)
        await pool.close()


async def test_an_interim_103_is_skipped_for_the_real_answer():
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
    async with serving(keep_answering(early + OK)) as (_, url):
        pool = ConnectionPool(url)
        assert await post(pool) == (200, b'{"ok":true}')
        assert await post(pool) == (200, b'{"ok":true}')
        await pool.close()


async def test_a_refused_connection_is_connect_failed():
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    pool = ConnectionPool(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await post(pool)


async def test_a_cancelled_request_closes_its_connection_so_the_upstream_stops():
    def script(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await reader.read()  # never answers; returns when the client closes

        return handle

    async with serving(script) as (server, url):
        pool = ConnectionPool(url)
        task = asyncio.create_task(post(pool))
        await asyncio.wait_for(server.received.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnects.wait(), 2)
        await pool.close()


async def test_a_response_closed_before_its_end_closes_its_connection():
    half = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 1000\r\n\r\n"
        b"data: 1\n\n"
    )

    async with serving(answering(half)) as (server, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        assert await response.readany() == b"data: 1\n\n"
        response.close()
        await asyncio.wait_for(server.disconnects.wait(), 2)
        assert await post_after_close(pool, server) == 2
        await pool.close()


async def post_after_close(pool: ConnectionPool, server: Server) -> int:
    """A request after an abandoned answer goes on a new connection; how many were opened."""
    server.handler = keep_answering(OK)(server)
    assert await post(pool) == (200, b'{"ok":true}')
    return server.connections


async def test_the_pool_never_opens_more_connections_than_its_limit():
    async with serving(slowly_answering(OK)) as (server, url):
        pool = ConnectionPool(url, limit=2)
        results = await asyncio.gather(*(post(pool) for _ in range(6)))
        await pool.close()
    assert results == [(200, b'{"ok":true}')] * 6
    assert server.peak_open == 2


async def test_an_idle_connection_past_its_idle_time_is_not_reused():
    async with serving(keep_answering(OK)) as (server, url):
        pool = ConnectionPool(url, idle_seconds=0.0)
        await post(pool)
        await asyncio.sleep(0.01)
        await post(pool)
        await pool.close()
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_handed_out():
    async with serving(answering(OK, then_close=True)) as (server, url):
        pool = ConnectionPool(url)
        await post(pool)
        await asyncio.wait_for(server.disconnects.wait(), 2)
        await asyncio.sleep(0.01)  # the close reaches the client
        assert await post(pool) == (200, b'{"ok":true}')
        await pool.close()
    assert server.connections == 2


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    async with serving(keep_answering(OK)) as (server, url):
        pool = ConnectionPool(url)
        with pytest.raises(ValueError, match="CR or LF"):
            await pool.post(
                "/x", {"authorization": "Bearer k\r\nx-evil: 1"}, b"{}", connect_timeout=2
            )
        await pool.close()
    assert server.connections == 0


async def test_a_large_body_is_read_whole_through_backpressure():
    body = b"x" * (3 * 1024 * 1024)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    async with serving(keep_answering(answer)) as (_, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        received = b""
        while chunk := await response.readany():
            received += chunk
            await asyncio.sleep(0)  # a slow reader: the connection pauses and resumes
        assert received == body
        assert await post(pool) == (200, body)
        await pool.close()


def chunked_stream(*events: bytes, end: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
        + (b"0\r\n\r\n" if end else b"")
    )


async def test_readany_returns_every_chunk_that_arrived_not_one_at_a_time():
    # A stream's role event and first token often come in one packet: one read returns both,
    # so that the relay writes them downstream together instead of the token second.
    two_events = chunked_stream(b"data: 1\n\n", b"data: 2\n\n", end=False)
    async with serving(answering(two_events)) as (_, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        assert await response.readany() == b"data: 1\n\ndata: 2\n\n"
        response.close()
        await pool.close()


async def test_an_answer_past_its_deadline_fails_the_read_that_waits_for_more():
    stalled = chunked_stream(b"data: 1\n\n", end=False)
    async with serving(answering(stalled)) as (server, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        response.fail_at(asyncio.get_running_loop().time() + 0.05, TimeoutError("deadline"))
        assert await response.readany() == b"data: 1\n\n", "what arrived is read first"
        with pytest.raises(TimeoutError, match="deadline"):
            await response.readany()
        response.close()
        await asyncio.wait_for(server.disconnects.wait(), 2)
        await pool.close()


async def test_an_answer_that_ended_keeps_no_deadline():
    async with serving(keep_answering(OK)) as (_, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        response.fail_at(asyncio.get_running_loop().time() + 0.01, TimeoutError("deadline"))
        assert response.ended, "a small answer arrives with its headers"
        await asyncio.sleep(0.05)  # past the deadline: an answer that had ended is still whole
        assert await response.read() == b'{"ok":true}'
        await pool.close()


async def test_the_pool_hands_a_freed_slot_to_the_next_waiter_and_skips_a_cancelled_one():
    async with serving(slowly_answering(OK)) as (server, url):
        pool = ConnectionPool(url, limit=1)
        first = asyncio.ensure_future(post(pool))
        await asyncio.sleep(0)
        given_up = asyncio.ensure_future(post(pool))  # waits for the slot, then is cancelled
        third = asyncio.ensure_future(post(pool))
        await asyncio.sleep(0)
        given_up.cancel()
        assert await first == (200, b'{"ok":true}')
        assert await third == (200, b'{"ok":true}'), "the slot skipped the cancelled waiter"
        assert given_up.cancelled()
        assert server.peak_open == 1
        await pool.close()


async def test_a_released_stream_is_read_to_its_end_and_its_connection_reused():
    def script(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(chunked_stream(b"data: 1\n\n")[:-5])  # the end not sent yet
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")  # the terminator, after the reader let go
            while True:
                await server.read_request(reader)
                writer.write(OK)
                await writer.drain()

        return handle

    async with serving(script) as (server, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        assert await response.readany() == b"data: 1\n\n"
        response.release()
        await asyncio.sleep(0.1)  # the terminator comes after 20 ms; then the connection idles
        assert await post(pool) == (200, b'{"ok":true}')
        await pool.close()
    assert server.connections == 1


async def test_a_released_answer_that_never_ends_is_closed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(http1, "_DRAIN_SECONDS", 0.02)

    never_ends = chunked_stream(b"data: 1\n\n", end=False)
    async with serving(answering(never_ends)) as (server, url):
        pool = ConnectionPool(url)
        response = await pool.post("/x", {}, b"{}", connect_timeout=2)
        assert await response.readany() == b"data: 1\n\n"
        response.release()
        await asyncio.wait_for(server.disconnects.wait(), 2)
        await pool.close()
