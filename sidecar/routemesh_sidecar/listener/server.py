"""The listener's HTTP/1.1 server: requests parsed in C (httptools), answers whole or chunked.

`app.Sidecar` starts a `ListenerServer` on the listen address with `listener.proxy.Listener`'s
dispatch as its handler, and calls `drain` on SIGTERM. The handler gets each `DownstreamRequest`
once its head has arrived, reads its body with `read`, and returns an `Answer` (written whole) or
the `StreamAnswer` it wrote (`DownstreamRequest.stream`).

Why not aiohttp's server, which the listener ran on until 2026-12-07: answering alone at 16 in
flight (`make bench-proxy`, 2 cores), aiohttp's low-level server cost 56-65 µs of CPU a request and
a bare httptools protocol 7 µs, in a sidecar that spent 263-327 µs a request. Its request,
payload, response and writer objects serve websockets, multipart, compression and cookies; the
listener needs a body of a few MiB at most and two kinds of answer.

What it does: HTTP/1.1 keep-alive, closed after `keepalive_seconds` idle (HTTP/1.0 is answered and
closed); pipelined requests answered in order, one at a time; bodies by Content-Length or chunked,
refused past `max_body_bytes` while they are read (the handler refuses a declared length before
that, and answers `Expect: 100-continue` with `DownstreamRequest.send_continue`); 400 for bytes
that are not HTTP, 431 for a head past `max_head_bytes` (a field still arriving counts); an Upgrade
header (curl --http2 asks for h2c) is not followed: the request is answered over HTTP/1.1, its body
read raw, and the connection closed; HEAD answered without a body; header values written as UTF-8,
and an answer whose header holds CR or LF is never sent (the connection closes, and it is logged);
streams chunked (close-delimited for HTTP/1.0), with the transport's backpressure; a write to a
connection that is gone raises `ConnectionResetError`, and an app that closes its connection
cancels its request's handler (as Envoy resets the upstream stream when the downstream resets). An
answer that leaves part of its request's body unread ends the connection after it without a reset:
our side closes, and what still comes is dropped for a while. `drain(seconds)` stops listening,
closes idle connections, lets the requests in flight finish for up to `seconds` (their connections
close after), then cancels the rest and gives them a second to unwind.

It must not know routes, APIs or their error shapes (the handler answers every request it is
given, errors too; the few answers the server writes itself are for bytes no handler could read),
retry, or buffer a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

log = logging.getLogger(__name__)

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_INTERNAL_ERROR = b'{"error":{"message":"internal error","type":"server_error"}}'
_QUEUED = 8  # pipelined requests read ahead of the one being answered before reading pauses
_LINGER_SECONDS = 10.0  # after an answer that left a body unread: how long the rest is dropped


class BodyTooLarge(Exception):
    """The request's body went past the server's limit while it was read."""


class UnreadableBody(Exception):
    """The request's body cannot be read: its framing is broken, or it comes in a way not served."""


class _HeadTooLarge(Exception):
    """The request's head (its line and header fields) went past the server's limit."""


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits (from the sidecar's settings)."""

    max_body_bytes: int
    max_head_bytes: int = 64 * 1024
    keepalive_seconds: float = 75.0  # as aiohttp's server, which the apps' clients met before


@dataclass(slots=True)
class Answer:
    """A whole answer: its head and body go out in one write, with its length."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    content_type: str = "application/json"


class DownstreamRequest:
    """One request from the app: its head at once, its body when read."""

    __slots__ = (
        "_body",
        "_body_size",
        "_complete",
        "_connection",
        "_error",
        "_stream",
        "_waiter",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "version",
    )

    def __init__(  # noqa: PLR0917  (built in one place, from the parser's parts)
        self,
        connection: _Connection,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: CIMultiDictProxy[str],
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self._connection = connection
        self._body: list[bytes] = []
        self._body_size = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._stream: StreamAnswer | None = None

    @property
    def path(self) -> str:
        """The path, decoded but for `%2F` and `%25` (an encoded slash separates nothing)."""
        path = self.raw_path.partition("?")[0]
        if not path.startswith("/"):  # absolute-form (`POST http://host/v1/...`), as proxies send
            path = urlsplit(path).path or "/"
        if "%" not in path:
            return path
        return URL.build(path=path, encoded=True).path_safe

    @property
    def content_length(self) -> int | None:
        """The declared body length, when the request declared one."""
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        """The whole body; `BodyTooLarge` past the server's limit."""
        while not self._complete:
            if self._error is not None:
                raise self._error
            self._connection.want_body(self)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        return self._body[0] if len(self._body) == 1 else b"".join(self._body)

    async def send_continue(self) -> None:
        """Tell a client that sent `Expect: 100-continue` to send its body."""
        self._connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def stream(self, status: int, headers: Mapping[str, str]) -> StreamAnswer:
        """Begin a streamed answer; its head leaves with its first bytes."""
        self._stream = StreamAnswer(self, status, headers)
        return self._stream

    # Called by the connection.

    def _feed(self, data: bytes, limit: int) -> bool:
        """Take body bytes; False once past the limit (the rest is not kept)."""
        if self._error is not None:
            return False
        self._body_size += len(data)
        if self._body_size > limit:
            self._fail(BodyTooLarge(f"request body is larger than the limit of {limit} bytes"))
            return False
        self._body.append(data)
        return True

    def _done(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StreamAnswer:
    """A streamed answer, chunked (close-delimited in HTTP/1.0); its head leaves with its start."""

    __slots__ = ("_head", "_request", "chunked", "ended", "started")

    def __init__(self, request: DownstreamRequest, status: int, headers: Mapping[str, str]) -> None:
        self._request = request
        self.chunked = request.version >= (1, 1)
        framing = "Transfer-Encoding: chunked\r\n" if self.chunked else ""
        connection = request._connection
        close = not self.chunked or connection.closes_after(request)
        self._head = _head(status, headers, framing, close, connection.date())
        self.started = False
        self.ended = False

    async def write(self, data: bytes) -> None:
        """Send bytes (waiting while the app reads slower than they come)."""
        if not data:
            return
        payload = b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data
        await self._send(payload)

    async def end(self) -> None:
        """End the answer."""
        if self.ended:
            return
        await self._send(b"0\r\n\r\n" if self.chunked else b"")
        self.ended = True

    async def _send(self, payload: bytes) -> None:
        if self.ended:
            raise RuntimeError("the answer has ended")
        if not self.started:
            self.started = True
            payload = self._head + payload
        connection = self._request._connection
        connection.write(payload)
        await connection.drained()


Handler = Callable[[DownstreamRequest], Awaitable[Answer | StreamAnswer]]


class _Connection(asyncio.Protocol):
    """One connection from the app: its requests in order, one handled at a time."""

    def __init__(self, server: ListenerServer) -> None:
        self._server = server
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._current: DownstreamRequest | None = None  # being read from the wire
        self._queue: deque[DownstreamRequest] = deque()  # read, waiting for their turn
        self._active: DownstreamRequest | None = None  # being answered
        self._task: asyncio.Task[None] | None = None
        self._handling = False  # the task is in the handler (not writing what it returned)
        self._paused_reading = False
        self._paused_writing = False
        self._drain: asyncio.Future[None] | None = None
        self._closing = False  # no request after the one being answered
        self._in_head = False  # a request's head is arriving
        self._head_bytes = 0  # bytes received while it is, a field still arriving included
        self._raw_body: tuple[DownstreamRequest, int] | None = None  # after an Upgrade header
        self._unparsable = False  # the parser failed: nothing more is read as requests
        self._lingering = False  # answered with its body unread: the rest is dropped
        self.idle_since = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server.opened(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering or self._unparsable:
            return  # dropped: an answered request's unread body, or bytes after a parse error
        if self._raw_body is not None:
            self._take_raw_body(data)
            return
        if self._closing and self._active is None:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # No protocol but HTTP/1.1 here (curl --http2 asks for h2c): the request is answered
            # as one, its body taken as it comes after the head, and the connection closes.
            self._closing = True
            self._after_upgrade(data[int(exc.args[0]) if exc.args else len(data) :])
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        else:
            if self._in_head and self._head_bytes > 2 * self._limits.max_head_bytes:
                self._refuse(431, "the request's head is larger than the limit")

    def eof_received(self) -> bool | None:
        # The app closed its side: it has left (its clients never half-close to wait for an
        # answer). Closing ours at once makes a write to it fail now, not after the peer resets.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._closing = True
        if self._handling and self._task is not None:
            # The app left: nobody reads this answer, so it is not waited for (or paid for)
            # until its deadline. The handler records why as it unwinds.
            self._task.cancel()
        for request in (self._current, *self._queue):
            if request is not None:
                request._fail(ConnectionResetError("the app closed its connection"))
        self._queue.clear()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._server.closed(self)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._grow_head(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
            for name, value in self._headers
        )
        major, _, minor = self._parser.get_http_version().partition(".")
        request = DownstreamRequest(
            self,
            self._parser.get_method().decode("ascii", "replace"),
            self._url.decode("utf-8", "surrogateescape"),
            (int(major or 1), int(minor or 0)),
            CIMultiDictProxy(headers),
            self._parser.should_keep_alive(),
        )
        self._current = request
        self._queue.append(request)
        if self._parser.should_upgrade():
            self._upgrade(request)
        if self._active is None:
            self._next()
        elif len(self._queue) > _QUEUED:
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self._current
        if request is not None and not request._feed(body, self._limits.max_body_bytes):
            self._pause_reading()  # its answer will say why; the connection closes after it

    def on_message_complete(self) -> None:
        request, self._current = self._current, None
        if request is not None and (self._raw_body is None or self._raw_body[0] is not request):
            request._done()  # (an Upgrade request's body comes raw, after the parser stops)

    # used by the requests and their answers

    def want_body(self, request: DownstreamRequest) -> None:
        """The answered request waits for its body: read on, whatever was queued."""
        if request is self._active and self._paused_reading and request._error is None:
            self._resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the app closed its connection")
        transport.write(data)

    async def drained(self) -> None:
        if not self._paused_writing:
            return
        if self.transport is None:
            raise ConnectionResetError("the app closed its connection")
        self._drain = asyncio.get_running_loop().create_future()
        await self._drain
        if self.transport is None:
            raise ConnectionResetError("the app closed its connection")

    def date(self) -> bytes:
        """The Date header's value now."""
        return self._server.date()

    def closes_after(self, request: DownstreamRequest) -> bool:
        """Whether the connection closes once this request is answered.

        HTTP/1.0 closes always: its keep-alive needs a header this server does not send.
        """
        return self._closing or not request.keep_alive or request.version < (1, 1)

    def close_when_idle(self) -> None:
        """Drain: answer the request in hand, then close; close now if there is none."""
        self._closing = True
        if self._active is None and self.transport is not None:
            self.transport.close()

    def cancel(self) -> asyncio.Task[None] | None:
        """The drain period is over: stop the request in hand (its task) and drop the connection."""
        task = self._task
        if task is not None:
            task.cancel()
        if self.transport is not None:
            self.transport.abort()
        return task

    @property
    def idle(self) -> bool:
        return self._active is None and not self._queue

    # internals

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._limits.max_head_bytes:
            raise _HeadTooLarge

    def _next(self) -> None:
        request = self._queue.popleft()
        self._active = request
        self._task = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: DownstreamRequest) -> None:
        self._handling = True
        try:
            answer = await self._server.handler(request)
        except ConnectionError:  # the app left while its request was read
            self._finished(request, close=True)
            return
        except Exception:
            log.exception("the listener failed to answer %s %s", request.method, request.raw_path)
            if request._stream is not None and request._stream.started:
                self._finished(request, close=True)  # too late for a status: cut it short
                return
            answer = Answer(500, _INTERNAL_ERROR)
        except asyncio.CancelledError:
            self._finished(request, close=True)
            raise
        finally:
            self._handling = False
        # Any of its body left unread would be read as the next request: close instead.
        close = self.closes_after(request) or not request._complete or request._error is not None
        try:
            if isinstance(answer, Answer):
                self.write(_whole(answer, request, close, self.date()))
                await self.drained()  # an app that pipelines and never reads is not buffered for
            elif not answer.ended or not answer.chunked:  # unended (broken, or its app left)
                close = True
        except ConnectionError:
            close = True
        except Exception:  # an answer that cannot be written: never a connection left hanging
            log.exception("the listener failed to write its answer to %s", request.raw_path)
            close = True
        self._finished(request, close=close)

    def _finished(self, request: DownstreamRequest, *, close: bool) -> None:
        self._active = None
        self._task = None
        self.idle_since = time.monotonic()
        transport = self.transport
        if close or self._closing:
            self._queue.clear()
            if transport is None:
                return
            if not request._complete and not self._unparsable and transport.can_write_eof():
                self._linger(transport)
            else:
                transport.close()
            return
        if self._queue:
            self._next()
        elif self._paused_reading:
            self._resume_reading()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after an answer that left its request's body unread, without a reset.

        Closing a socket with bytes unread sends a reset, which can reach the app before the
        answer does. Instead the answer ends with our side's close, and what still comes is
        dropped until the app closes too, or for `_LINGER_SECONDS` (as aiohttp's server did).
        """
        self._lingering = True
        self._resume_reading()
        transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER_SECONDS, transport.close)

    def _upgrade(self, request: DownstreamRequest) -> None:
        """A request with an Upgrade header: the parser skips its body, so it is taken raw."""
        self._closing = True  # after an upgrade request, the parser reads nothing more
        length = request.content_length
        if request.headers.get("transfer-encoding"):
            request._fail(UnreadableBody("a chunked body with an Upgrade header is not served"))
        elif length:
            self._raw_body = (request, length)

    def _after_upgrade(self, rest: bytes) -> None:
        """The parser stopped at an Upgrade request's head: its body, if any, is what follows."""
        if self._raw_body is not None:
            self._take_raw_body(rest)
        else:
            self._unparsable = True

    def _take_raw_body(self, data: bytes) -> None:
        if self._raw_body is None:
            return
        request, left = self._raw_body
        piece = data[:left]
        left -= len(piece)
        if not request._feed(piece, self._limits.max_body_bytes):
            left = 0  # past the limit: its answer says so, and the connection closes
        elif left == 0:
            request._done()
        self._raw_body = (request, left) if left > 0 else None
        if left == 0:
            self._unparsable = True  # nothing after it is read

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__  # an exception raised in one of the callbacks above
        if isinstance(cause, _HeadTooLarge):
            self._refuse(431, "the request's head is larger than the limit")
        elif cause is not None:
            log.error("the listener failed to read a request", exc_info=cause)
            self._refuse(500, "internal error", kind="server_error")
        else:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def _refuse(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """Answer bytes no handler can read, and close; a request in hand fails to read them."""
        log.info("refused a request: %s", message)
        self._closing = True
        self._unparsable = True
        self._pause_reading()
        if self._current is not None and self._current is self._active:
            self._current._fail(UnreadableBody(message))  # its handler answers, then it closes
        elif self._active is None and self.transport is not None:
            error = {"error": {"message": message, "type": kind}}
            answer = Answer(status, json.dumps(error).encode())
            self.transport.write(_whole(answer, None, True, self.date()))
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()


class ListenerServer:
    """Accepts the app's connections; `drain` ends them gracefully."""

    def __init__(self, handler: Handler, limits: ServerLimits) -> None:
        self.handler = handler
        self.limits = limits
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._all_closed: asyncio.Event | None = None  # set once draining
        self._keepalive: asyncio.TimerHandle | None = None
        self.date = _DateField()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port; the port bound (when 0 was asked for)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        self._schedule_keepalive()
        return int(self._server.sockets[0].getsockname()[1])

    async def drain(self, seconds: float) -> None:
        """Stop taking connections; finish what is in flight for up to `seconds`; then cancel."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._server is not None:
            self._server.close()
        self._all_closed = asyncio.Event()
        for connection in list(self._connections):
            connection.close_when_idle()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._all_closed.wait()
        cancelled = [t for c in list(self._connections) if (t := c.cancel()) is not None]
        if cancelled:  # let them finish their records before the rest of the sidecar stops
            await asyncio.wait(cancelled, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    def opened(self, connection: _Connection) -> None:
        """A connection was accepted (one accepted as the drain began is closed when idle)."""
        self._connections.add(connection)
        if self._all_closed is not None:
            connection.close_when_idle()

    def closed(self, connection: _Connection) -> None:
        """A connection closed (either side)."""
        self._connections.discard(connection)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    def _schedule_keepalive(self) -> None:
        # One timer for every connection, rather than one a request.
        loop = asyncio.get_running_loop()
        period = self.limits.keepalive_seconds / 4
        self._keepalive = loop.call_later(period, self._close_idle)

    def _close_idle(self) -> None:
        oldest = time.monotonic() - self.limits.keepalive_seconds
        for connection in list(self._connections):
            if connection.idle and connection.idle_since < oldest:
                connection.close_when_idle()
        self._schedule_keepalive()


class _DateField:
    """The Date header's value, formatted once a second rather than once an answer."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


def _head(
    status: int, headers: Mapping[str, str] | None, framing: str, close: bool, date: bytes
) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in (headers or {}).items()])
    if fields.count("\n") != len(headers or ()) or fields.count("\r") != len(headers or ()):
        raise ValueError("an answer's header name or value holds a CR or LF character")
    connection = "Connection: close\r\n" if close else ""
    start = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
    head = (start + fields + framing + connection).encode()  # UTF-8, as aiohttp wrote them
    return head + b"Date: " + date + b"\r\n\r\n"


def _whole(answer: Answer, request: DownstreamRequest | None, close: bool, date: bytes) -> bytes:
    framing = f"Content-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}\r\n"
    head = _head(answer.status, answer.headers, framing, close, date)
    if request is not None and request.method == "HEAD":
        return head
    return head + answer.body
