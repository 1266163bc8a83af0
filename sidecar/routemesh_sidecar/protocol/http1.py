"""A lean HTTP/1.1 client for upstream attempts: a keep-alive pool per endpoint, parsed in C.

`upstream.client.UpstreamClient` sends every attempt through `ConnectionPool.post` and reads the
answer from the `UpstreamResponse` it returns: whole (`read`), or as it arrives (`readany`) for
a stream. Why not aiohttp's client: measured from outside with wrk (`make bench-proxy`,
2026-12-03, 2 cores), the same pass-through proxy served 11,158 requests a second through this
design and 3,718 through `aiohttp.ClientSession`, whose per-request objects (request, response,
timers, trace hooks, cookie jar, payload registry) were about a third of the sidecar's CPU
(py-spy, under wrk at 16 in flight).

It does only what an attempt needs: POST with a body of known length, the answer by
Content-Length, chunked or until close, gzip or deflate decoded when a server sends them
unasked (the client never advertises any), TLS with the system's trust store, and a bounded
pool whose idle connections expire. It must not retry, follow redirects, read proxy settings
from the environment, or decide what a failure means: it raises `ConnectFailed`,
`UpstreamClosed` or `MalformedResponse`, and `upstream.classify` turns them into error classes.
A response closed before its end closes its connection, so that a provider stops generating
for a cancelled attempt (a hedge's loser).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# Past this much unread body, the connection stops reading until the consumer catches up.
_HIGH_WATER = 256 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# How long a released answer may take to end before its connection is closed instead of reused.
_DRAIN_SECONDS = 1.0


class ConnectFailed(OSError):
    """No connection: refused, unreachable, a name that does not resolve, or a TLS failure."""


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before the end of its answer."""


class MalformedResponse(ValueError):
    """The upstream's bytes are not HTTP/1.1, or its body cannot be decoded."""


class UpstreamResponse:
    """One answer: status and headers once they arrive, then the body as the upstream sends it."""

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.closed = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self._whole = False  # read() wants it all: no backpressure, the body is kept anyway
        self._discard = False  # released before its end: the rest is read and dropped
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def ended(self) -> bool:
        """Whether the whole body has arrived, so that reading the rest will not wait."""
        return self._ended

    def fail_at(self, when: float, error: BaseException) -> None:
        """From loop time `when` on, a read that finds nothing more raises `error`.

        One timer for the rest of an answer, where a timeout around each read armed and
        cancelled one per read (a stream's every event). It goes when the answer ends or is
        closed, so that a finished stream is not kept until its deadline.
        """
        self._expiry = asyncio.get_running_loop().call_at(when, self._fail, error)

    @property
    def content(self) -> UpstreamResponse:
        """The body's reader (itself; the name matches aiohttp's, which the stream code reads)."""
        return self

    async def readany(self) -> bytes:
        """Every byte of the body that has arrived and was not read yet; b"" at its end.

        All of it, not one piece: a chunked body arrives as one piece per chunk, and the stream
        relay writes what one read returns in one write. Read a piece at a time, two events
        that came in one packet (a stream's role event and its first token) left in two
        writes, the first token's behind the other's.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._consumed(self._buffered)
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (or its first `limit` bytes, for an error's message)."""
        self._whole = True
        if self._connection is not None:
            self._connection.resume()
        while True:
            if self._error is not None:
                if limit is None or not self._chunks:
                    raise self._error  # never a silently truncated body
                break  # enough of an error's message
            if self._ended or (limit is not None and self._buffered >= limit):
                break
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._consumed(self._buffered)
        return body if limit is None else body[:limit]

    def release(self) -> None:
        """Done reading: the rest is dropped as it comes, then the connection is reused.

        If the rest does not come within a second, the connection is closed instead. For a
        stream whose last event has arrived, the message's end (the chunked terminator) follows
        at once; reconnecting for every stream cost a TCP handshake before the next stream's
        first token.
        """
        self.closed = True
        self._disarm()
        connection = self._connection
        if self._ended or connection is None:
            return
        self._discard = True
        self._chunks.clear()
        self._consumed(self._buffered)
        asyncio.get_running_loop().call_later(_DRAIN_SECONDS, self._give_up)

    def _give_up(self) -> None:
        if not self._ended:
            self.close()

    def close(self) -> None:
        """Stop reading; a connection whose answer did not end is closed, not reused."""
        self.closed = True
        self._disarm()
        connection, self._connection = self._connection, None
        if connection is not None and not self._ended:
            connection.abandon()

    def _disarm(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _consumed(self, size: int) -> None:
        self._buffered -= size
        if self._connection is not None and self._buffered < _HIGH_WATER:
            self._connection.resume()

    # Called by the connection's parser.

    def _start_body(self, status: int, headers: CIMultiDict[str]) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, by its header
        elif encoding != "identity":
            self._fail(MalformedResponse(f"upstream answered with content-encoding {encoding!r}"))

    def _feed(self, data: bytes) -> bool:
        """Take body bytes; True when the reader is far enough behind to stop reading."""
        if self._error is not None or self._discard:
            return False  # failed or released: its framing still has to be read, not its bytes
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                self._fail(MalformedResponse(f"upstream body does not decode: {exc}"))
                return False
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            self._wake()
        return not self._whole and self._buffered >= _HIGH_WATER

    def _end(self) -> None:
        if self._error is not None:
            self._connection = None
            self._wake()
            return
        if self._decoder is not None:
            try:
                rest = self._decoder.flush()
            except zlib.error as exc:
                self._fail(MalformedResponse(f"upstream body does not decode: {exc}"))
                return
            if rest:
                self._chunks.append(rest)
                self._buffered += len(rest)
        self._ended = True
        self._connection = None
        self._disarm()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._ended:
            self._error = error
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: it parses answers in order and returns itself to its pool."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self.busy = False  # holds one of the pool's slots, from send to the answer's end
        self.idle_since = 0.0
        self._response: UpstreamResponse | None = None
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._headers_ready: asyncio.Future[UpstreamResponse] | None = None
        self._paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's, always

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(MalformedResponse("upstream tried to upgrade the connection"))
        except httptools.HttpParserError as exc:
            self._broken(MalformedResponse(f"upstream sent malformed HTTP: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.transport = None
        self._pool.forget(self)
        response = self._response
        if response is not None and self._headers_ready is None and not response._ended:
            if self._ends_at_close():
                response._end()  # an answer without a length ends when its connection does
            else:
                response._fail(UpstreamClosed("upstream closed the connection mid-answer"))
        self._broken(UpstreamClosed("upstream closed the connection before answering"))
        self._pool.finished(self)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the real one follows
            self._headers = CIMultiDict()
            return
        response = self._response
        waiter, self._headers_ready = self._headers_ready, None
        if response is None or waiter is None:
            return
        response._start_body(status, self._headers)
        self._headers = CIMultiDict()
        if not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None and self._response._feed(body):
            self._pause()

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or response.status == 0:  # an interim answer ended
            return
        self._response = None
        self.reusable = self._parser.should_keep_alive()
        response._end()
        self._pool.finished(self)

    # used by the pool and the response

    def send(self, head: bytes, body: bytes) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves with the response once its headers arrive."""
        if self.transport is None:
            raise UpstreamClosed("upstream closed the connection before the request was sent")
        self.reusable = False
        self.busy = True
        self._response = UpstreamResponse(self)
        self._headers_ready = asyncio.get_running_loop().create_future()
        if len(body) < 16384:  # one segment for the usual small request; no copy of a big one
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        return self._headers_ready

    def abandon(self) -> None:
        """The answer is not wanted: close the connection, so the upstream stops sending it."""
        self.reusable = False
        self._response = None
        self._headers_ready = None
        if self.transport is not None:
            self.transport.close()
        self._pool.finished(self)

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _ends_at_close(self) -> bool:
        headers = self._response.headers if self._response is not None else {}
        return "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )

    def _broken(self, error: BaseException) -> None:
        waiter, self._headers_ready = self._headers_ready, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        response, self._response = self._response, None
        if response is not None:
            response._fail(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Slots:
    """At most `limit` holders at once; the others wait in turn.

    What `asyncio.Semaphore` does for the pool, without its cost on the way in: in Python
    3.11 each acquire asks `locked()`, which builds a generator over the waiters even when a
    slot is free (1.6% of the sidecar's samples under load, py-spy, 2026-12-07). A released
    slot goes straight to the first waiter that still wants it.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as it was cancelled: the next waiter takes it
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class ConnectionPool:
    """Keep-alive connections to one endpoint, at most `limit` of them at once."""

    def __init__(
        self,
        url: str,
        *,
        limit: int = 256,
        idle_seconds: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == _DEFAULT_PORTS[parts.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"Host: {host}{'' if default_port else f':{self.port}'}\r\n"
        self._ssl = ssl_context if self.scheme == "https" else None
        self._idle_seconds = idle_seconds
        self._idle: list[_Connection] = []
        self._slots = _Slots(limit)
        self._open: set[_Connection] = set()
        self._closed = False

    async def post(
        self, path: str, headers: Mapping[str, str], body: bytes, *, connect_timeout: float
    ) -> UpstreamResponse:
        """Send a POST of `path` (after the endpoint's own path); return once headers arrive.

        Cancelled or failed before the headers, the connection is closed and not reused.
        """
        head = self._head(self.base_path + path, headers, len(body))
        await self._slots.acquire()
        try:
            connection = self._idle_connection() or await self._connect(connect_timeout)
        except BaseException:
            self._slots.release()
            raise
        # From here the connection holds the slot, and gives it back when its exchange ends.
        try:
            return await connection.send(head, body)
        except BaseException:
            connection.abandon()
            raise

    def finished(self, connection: _Connection) -> None:
        """An exchange ended: the slot is free; the connection idles for the next, or closes."""
        if not connection.busy:
            return
        connection.busy = False
        self._slots.release()
        if connection.reusable and not self._closed and connection.transport is not None:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        elif connection.transport is not None and not connection.transport.is_closing():
            connection.transport.close()

    def forget(self, connection: _Connection) -> None:
        """A connection that closed: never hand it out again."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        self._closed = True
        self._idle.clear()
        for connection in list(self._open):
            if connection.transport is not None:
                connection.transport.abort()  # shutting down: no goodbyes owed
        await asyncio.sleep(0)  # let the transports finish closing before the loop may end

    def _idle_connection(self) -> _Connection | None:
        """The most recently used live idle connection; older ones past their idle time close."""
        if not self._idle:
            return None
        oldest_allowed = asyncio.get_running_loop().time() - self._idle_seconds
        while self._idle:
            connection = self._idle.pop()
            transport = connection.transport
            if connection.idle_since >= oldest_allowed and transport and not transport.is_closing():
                return connection
            connection.abandon()
        return None

    async def _connect(self, seconds: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:  # an OSError too, but the connect timeout is its own class
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._open.add(connection)
        return connection

    def _head(self, path: str, headers: Mapping[str, str], length: int) -> bytes:
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        # A value with CR or LF would split the request: refuse it, as aiohttp does.
        if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
            raise ValueError("a header name or value holds a CR or LF character")
        start = f"POST {path} HTTP/1.1\r\n{self._host_line}Content-Length: {length}\r\n"
        return (start + fields + "\r\n").encode("latin-1")
