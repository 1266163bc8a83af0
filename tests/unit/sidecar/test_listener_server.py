"""The listener's HTTP/1.1 server against real sockets: clients here write exact bytes.

Each test starts a `ListenerServer` on 127.0.0.1 with a small handler and talks to it with a
raw `asyncio` stream, so that what a library client would never send (pipelined requests, a
malformed line, a head past the limit, HTTP/1.0, a half-sent body) is on the wire exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from routemesh_sidecar.listener.server import (
    Answer,
    BodyTooLarge,
    DownstreamRequest,
    ListenerServer,
    ServerLimits,
    StreamAnswer,
)

pytestmark = [pytest.mark.timeout(10), pytest.mark.asyncio]

LIMITS = ServerLimits(max_body_bytes=64, max_head_bytes=1024, keepalive_seconds=30)


class App:
    """A handler that echoes, streams or fails by path, and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.waiting = asyncio.Event()  # a /wait request is in the handler

    async def handle(self, request: DownstreamRequest) -> Answer | StreamAnswer:
        if request.path == "/fail":
            raise RuntimeError("a bug")
        if request.path == "/early":  # answers without reading the body, as a 404 does
            return Answer(404, b"no such path")
        if request.path == "/header":
            return Answer(200, b"", {"x-model": request.headers["x-value"]})
        if request.path == "/crlf":  # a value that would split the answer's head
            return Answer(200, b"", {"x-model": "m\r\nSet-Cookie: stolen=1"})
        try:
            body = await request.read()
        except BodyTooLarge as exc:
            return Answer(413, str(exc).encode(), content_type="text/plain")
        self.seen.append((request.method, request.path, body))
        if request.path == "/stream":
            return await self._stream(request)
        if request.path == "/wait":
            self.waiting.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return Answer(200, b"echo:" + body, {"x-path": request.path})

    async def _stream(self, request: DownstreamRequest) -> StreamAnswer:
        stream = request.stream(200, {"content-type": "text/event-stream"})
        try:
            await stream.write(b"data: 1\n\n")
            await self.release.wait()
            await stream.write(b"data: 2\n\n")
        except ConnectionError:  # the app left as it was written to
            return stream
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await stream.end()
        return stream


@asynccontextmanager
async def serving(
    limits: ServerLimits = LIMITS,
) -> AsyncIterator[tuple[App, ListenerServer, int]]:
    app = App()
    server = ListenerServer(app.handle, limits)
    port = await server.start("127.0.0.1", 0)
    try:
        yield app, server, port
    finally:
        app.release.set()
        await server.drain(1)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def head(path: str, length: int, *extra: str) -> bytes:
    """A POST's head declaring a body of `length` bytes, which the caller sends (or not)."""
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes = b"", *extra: str) -> bytes:
    return head(path, len(body), *extra) + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length: status, headers (lower-cased names), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(": ")
            headers[name.lower()] = value
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_a_keep_alive_connection_answers_request_after_request():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        for body in (b"one", b"two"):
            writer.write(post("/echo", body))
            status, headers, answer = await read_answer(reader)
            assert (status, answer) == (200, b"echo:" + body)
            assert headers["x-path"] == "/echo"
            assert headers["content-type"] == "application/json"
            assert "date" in headers
            assert "connection" not in headers
        writer.close()


async def test_pipelined_requests_are_answered_in_order():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(post("/a", b"1") + post("/b", b"2") + post("/c", b"3"))
        answers = [(await read_answer(reader))[2] for _ in range(3)]
        assert answers == [b"echo:1", b"echo:2", b"echo:3"]
        assert [path for _, path, _ in app.seen] == ["/a", "/b", "/c"]
        writer.close()


async def test_a_chunked_body_is_read_whole():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert (await read_answer(reader))[2] == b"echo:abcde"
        writer.close()


async def test_a_chunked_body_past_the_limit_is_refused_and_the_connection_closed():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        chunk = b"x" * 40
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"28\r\n" + chunk + b"\r\n") * 2
        )
        status, headers, body = await read_answer(reader)
        assert status == 413
        assert b"larger than the limit of 64 bytes" in body
        assert headers["connection"] == "close"
        assert await reader.read() == b"", "the rest of the body is never read as a request"
        writer.close()


async def test_a_head_past_the_limit_gets_431_and_a_closed_connection():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(post("/echo", b"", f"X-Big: {'y' * 2000}"))
        status, headers, body = await read_answer(reader)
        assert status == 431
        assert b"head is larger than the limit" in body
        assert headers["connection"] == "close"
        assert await reader.read() == b""
        assert app.seen == []
        writer.close()


async def test_bytes_that_are_not_http_get_400_and_a_closed_connection():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(b"HELLO THERE\r\n\r\n")
        status, _, body = await read_answer(reader)
        assert status == 400
        assert b"malformed HTTP request" in body
        assert await reader.read() == b""
        assert app.seen == []
        writer.close()


async def test_head_answers_the_headers_and_length_without_the_body():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        writer.write(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n" + post("/echo", b"after"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 5\r\n" in head  # the length of b"echo:", the body not sent
        status, _, body = await read_answer(reader)
        assert (status, body) == (200, b"echo:after"), "the next answer follows the head at once"
        writer.close()


async def test_a_stream_is_chunked_its_head_leaves_with_its_first_event_and_the_connection_stays():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(post("/stream"))
        first = await reader.readuntil(b"data: 1\n\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Transfer-Encoding: chunked\r\n" in first
        assert first.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n"), "one write: head and first event"
        app.release.set()
        assert await reader.readuntil(b"0\r\n\r\n") == b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"
        writer.write(post("/echo", b"next"))
        assert (await read_answer(reader))[2] == b"echo:next"
        writer.close()


async def test_http_1_0_gets_a_close_delimited_stream_and_a_closed_connection():
    async with serving() as (app, _, port):
        app.release.set()
        reader, writer = await connect(port)
        writer.write(b"POST /stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        answer = await reader.read()  # to the close: that is where the stream ends
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"Connection: close" in head
        assert b"Transfer-Encoding" not in head
        assert body == b"data: 1\n\ndata: 2\n\n"
        writer.close()


async def test_connection_close_is_honoured_after_the_answer():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        writer.write(post("/echo", b"bye", "Connection: close"))
        status, headers, body = await read_answer(reader)
        assert (status, body) == (200, b"echo:bye")
        assert headers["connection"] == "close"
        assert await reader.read() == b""
        writer.close()


async def test_a_handler_that_fails_gets_500_and_is_logged(caplog: pytest.LogCaptureFixture):
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        with caplog.at_level(logging.ERROR):
            writer.write(post("/fail"))
            status, _, body = await read_answer(reader)
        assert status == 500
        assert b"internal error" in body
        assert "failed to answer POST /fail" in caplog.text
        writer.write(post("/echo", b"still"))
        assert (await read_answer(reader))[2] == b"echo:still", "the connection goes on"
        writer.close()


async def test_an_app_that_leaves_mid_stream_cancels_its_handler_and_later_writes_fail():
    async with serving() as (app, server, port):
        reader, writer = await connect(port)
        writer.write(post("/stream"))
        await reader.readuntil(b"data: 1\n\n\r\n")
        [connection] = server._connections
        writer.transport.abort()
        await asyncio.wait_for(app.cancelled.wait(), 2)  # it was waiting for its next event
        with pytest.raises(ConnectionResetError):
            connection.write(b"late")  # a write that raced the loss fails, never silently
        writer.close()


async def test_expect_100_continue_is_answered_when_the_handler_asks_for_it():
    async def handle(request: DownstreamRequest) -> Answer:
        await request.send_continue()
        return Answer(200, await request.read())

    server = ListenerServer(handle, LIMITS)
    port = await server.start("127.0.0.1", 0)
    reader, writer = await connect(port)
    writer.write(head("/x", 2, "Expect: 100-continue"))
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert (await read_answer(reader))[2] == b"ok"
    writer.close()
    await server.drain(1)


async def test_paths_are_decoded_but_for_an_encoded_slash():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(post("/v1/%63hat?x=1") + post("/v1/a%2Fb"))
        await read_answer(reader)
        await read_answer(reader)
        assert [path for _, path, _ in app.seen] == ["/v1/chat", "/v1/a%2Fb"]
        writer.close()


async def test_an_idle_connection_is_closed_after_its_keep_alive_time():
    limits = ServerLimits(max_body_bytes=64, keepalive_seconds=0.2)
    async with serving(limits) as (_, _, port):
        reader, writer = await connect(port)
        writer.write(post("/echo", b"1"))
        await read_answer(reader)
        assert await asyncio.wait_for(reader.read(), 2) == b"", "closed by the server"
        writer.close()


async def test_drain_closes_idle_connections_finishes_the_request_in_flight_and_refuses_new():
    async with serving() as (app, server, port):
        idle_reader, idle_writer = await connect(port)
        idle_writer.write(post("/echo", b"1"))
        await read_answer(idle_reader)
        busy_reader, busy_writer = await connect(port)
        busy_writer.write(post("/wait", b"2"))
        await asyncio.wait_for(app.waiting.wait(), 2)
        draining = asyncio.ensure_future(server.drain(5))
        assert await asyncio.wait_for(idle_reader.read(), 2) == b"", "the idle one closes at once"
        with pytest.raises(ConnectionRefusedError):
            await connect(port)
        app.release.set()
        status, headers, body = await read_answer(busy_reader)
        assert (status, body) == (200, b"echo:2")
        assert headers["connection"] == "close"
        assert await busy_reader.read() == b""
        await asyncio.wait_for(draining, 2)
        assert not app.cancelled.is_set()
        idle_writer.close()
        busy_writer.close()


async def test_drain_cancels_what_is_still_in_flight_when_its_time_is_up():
    async with serving() as (app, server, port):
        reader, writer = await connect(port)
        writer.write(post("/wait", b"x"))
        await asyncio.wait_for(app.waiting.wait(), 2)
        await server.drain(0.05)
        await asyncio.wait_for(app.cancelled.wait(), 2)
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
        writer.close()


async def test_a_header_value_beyond_latin_1_goes_out_as_utf_8():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        writer.write(post("/header", b"", "X-Value: modèle→v2"))
        status, headers, _ = await read_answer(reader)
        assert status == 200
        assert headers["x-model"].encode("latin-1").decode() == "modèle→v2"
        writer.close()


async def test_an_answer_that_cannot_be_written_closes_its_connection_and_is_logged(
    caplog: pytest.LogCaptureFixture,
):
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        with caplog.at_level(logging.ERROR):
            writer.write(post("/crlf"))
            assert await asyncio.wait_for(reader.read(), 2) == b"", "closed, never split or hung"
        assert "failed to write its answer to /crlf" in caplog.text
        assert "CR or LF" in caplog.text
        writer.close()
        reader, writer = await connect(port)
        writer.write(post("/echo", b"ok"))
        assert (await read_answer(reader))[2] == b"echo:ok", "the server goes on"
        writer.close()


async def test_a_request_that_asks_for_an_upgrade_is_answered_with_its_body_then_closed():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(
            post("/echo", b'{"a":1}', "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c")
        )
        status, headers, body = await read_answer(reader)
        assert (status, body) == (200, b'echo:{"a":1}'), (
            "curl --http2 sends this; h2c is not served"
        )
        assert headers["connection"] == "close"
        assert app.seen[0][2] == b'{"a":1}'
        assert await reader.read() == b""
        writer.close()


async def test_http_1_0_is_closed_after_its_answer_even_when_it_asks_for_keep_alive():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        writer.write(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx")
        status, headers, body = await read_answer(reader)
        assert (status, body, headers["connection"]) == (200, b"echo:x", "close")
        assert await reader.read() == b""
        writer.close()


async def test_a_header_still_arriving_past_the_limit_is_refused_before_it_ends():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(5):  # 5 KiB of one value, never ended; the limit is 1 KiB
            writer.write(b"y" * 1024)
            await writer.drain()
            await asyncio.sleep(0.01)
        status, _, body = await read_answer(reader)
        assert status == 431
        assert b"head is larger than the limit" in body
        assert app.seen == []
        writer.close()


async def test_an_answer_before_the_body_arrived_lets_the_app_finish_sending_without_a_reset():
    async with serving() as (_, _, port):
        reader, writer = await connect(port)
        body = b"z" * 300_000
        writer.write(head("/early", len(body)))  # the body follows the answer
        status, headers, answer = await read_answer(reader)
        assert (status, answer, headers["connection"]) == (404, b"no such path", "close")
        for start in range(0, len(body), 65536):  # the rest of the body: no broken pipe
            writer.write(body[start : start + 65536])
            await writer.drain()
        assert await reader.read() == b"", "the server closed its side after the answer"
        writer.close()


async def test_an_absolute_form_target_is_routed_by_its_path():
    async with serving() as (app, _, port):
        reader, writer = await connect(port)
        writer.write(post("http://127.0.0.1/v1/models", b""))
        await read_answer(reader)
        assert app.seen[0][1] == "/v1/models"
        writer.close()


async def test_an_app_that_leaves_cancels_its_requests_handler():
    async with serving() as (app, _, port):
        _, writer = await connect(port)
        writer.write(post("/wait", b"x"))
        await asyncio.wait_for(app.waiting.wait(), 2)
        writer.close()  # the app leaves while its answer is being made
        await asyncio.wait_for(app.cancelled.wait(), 2)
