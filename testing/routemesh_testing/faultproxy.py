"""A fault-injecting HTTP proxy that sits between the sidecar and a fake provider.

Tests serve `FaultProxy.app` with `ServerThread` and point the sidecar at the proxy instead of at
the fake. By default the proxy forwards every request unchanged and streams every answer back
chunk by chunk, so SSE passes through unbuffered. From the test thread, at any moment, a test
arms a fault: added latency, a connection reset, a hang, or an HTTP error answered by the proxy
itself, for every request or for the next N, on every path or only on some. It counts what it
received and what it forwarded, so a test can tell what reached the provider.

This models the network and the provider's edge, which the fakes' own behaviours do not: a fault
here happens before the fake sees anything. Test support only: product code never imports it.
It must not change what it forwards (no decompression, no header rewriting beyond hop-by-hop
headers), and it must never hold up the shutdown of the server that serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from routemesh_testing.fakes import FakeOpenAI
from routemesh_testing.serving import ServerThread

# Headers that describe one hop, not the message: the proxy's own connections set their own.
# Content-Length is set again from what is actually relayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# How often a hanging request checks whether its client went away. aiohttp does not cancel a
# handler when its client disconnects, so the hang has to notice by itself.
_DISCONNECT_POLL = 0.02

# ----------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class AddLatency:
    """Wait this long before forwarding the request."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Abort the client's connection without an answer; nothing is forwarded."""


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer; nothing is forwarded."""


@dataclass(frozen=True)
class Status:
    """Answer at once with this status and an OpenAI-shaped error; nothing is forwarded."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RateLimitStorm:
    """Answer 429 with a rate_limit_error, and a Retry-After header when given (seconds)."""

    retry_after: float | None = None

    def as_status(self) -> Status:
        """The equivalent `Status` fault."""
        headers = {} if self.retry_after is None else {"retry-after": _seconds(self.retry_after)}
        body = openai_error("injected by faultproxy: rate limited", "rate_limit_error")
        return Status(429, body, headers)


Fault = AddLatency | Reset | Hang | Status | RateLimitStorm


def _seconds(value: float) -> str:
    """Retry-After as a provider writes it: an integer when whole, else as given."""
    return str(int(value)) if float(value).is_integer() else str(value)


def openai_error(message: str, kind: str) -> dict[str, Any]:
    """An error body in OpenAI's shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _default_kind(status: int) -> str:
    # The types OpenAI uses, so the sidecar's error classification sees a realistic body.
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


@dataclass(frozen=True)
class _Armed:
    """The fault in force, how many more requests it applies to, and on which paths."""

    fault: Fault
    remaining: int | None
    paths: tuple[str, ...]

    def applies_to(self, path: str) -> bool:
        return not self.paths or path.endswith(self.paths)


# ----------------------------------------------------------------------------- the proxy


class FaultProxy:
    """An aiohttp application that forwards to `upstream`, except where a fault is armed."""

    def __init__(self, upstream: str, allowed_peers: frozenset[str] | None = None) -> None:
        # The origin (optionally with a path prefix) that request paths are appended to.
        self.upstream = upstream.rstrip("/")
        # When set, only these client addresses are served: a proxy on a network address (the
        # demo's vLLM pod) must not answer the rest of the network.
        self.allowed_peers = allowed_peers
        self._lock = threading.Lock()
        self._armed: _Armed | None = None
        self._received: list[str] = []
        self._forwarded: list[str] = []
        # Created on the serving loop by the first forwarded request, closed at app cleanup.
        self._session: aiohttp.ClientSession | None = None
        # Set at app shutdown, so that hanging requests end and the server can stop.
        self._closing = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.on_cleanup.append(self._on_cleanup)

    # ------------------------------------------------------------------ the test thread's side

    def set_fault(
        self, fault: Fault, times: int | None = None, paths: tuple[str, ...] = ()
    ) -> None:
        """Apply `fault` to requests whose path ends with one of `paths` (all, if empty).

        With `times`, only the next `times` matching requests get it; then the proxy forwards
        again. Requests on other paths are forwarded and do not count towards `times`.
        """
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        with self._lock:
            self._armed = _Armed(fault, times, tuple(paths))

    def clear(self) -> None:
        """Forward everything again."""
        with self._lock:
            self._armed = None

    @property
    def fault(self) -> Fault | None:
        """The fault in force, if any."""
        with self._lock:
            return None if self._armed is None else self._armed.fault

    def received(self, path_suffix: str | None = None) -> int:
        """How many requests reached the proxy (whose path ends with `path_suffix`)."""
        with self._lock:
            return _count(self._received, path_suffix)

    def forwarded(self, path_suffix: str | None = None) -> int:
        """How many requests the proxy sent upstream (whose path ends with `path_suffix`)."""
        with self._lock:
            return _count(self._forwarded, path_suffix)

    def reset_counts(self) -> None:
        """Forget what was received and forwarded so far."""
        with self._lock:
            self._received.clear()
            self._forwarded.clear()

    # ------------------------------------------------------------------ the serving loop's side

    def _take(self, path: str) -> Fault | None:
        """Record a received request and return the fault it gets, using one of `times`."""
        with self._lock:
            self._received.append(path)
            armed = self._armed
            if armed is None or not armed.applies_to(path):
                return None
            if armed.remaining is not None:
                left = armed.remaining - 1
                self._armed = _Armed(armed.fault, left, armed.paths) if left else None
            return armed.fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.allowed_peers is not None and request.remote not in self.allowed_peers:
            return web.json_response(
                openai_error(f"{request.remote} may not use this test provider", "forbidden"),
                status=403,
            )
        fault = self._take(request.path)
        if isinstance(fault, RateLimitStorm):
            fault = fault.as_status()
        if isinstance(fault, Status):
            return _status_response(fault)
        if isinstance(fault, Reset):
            # Read the request first: the client has sent it all, then loses the connection.
            await request.read()
            return _cut(request)
        if isinstance(fault, Hang):
            await self._until_gone(request)
            return _cut(request)
        if isinstance(fault, AddLatency):
            await asyncio.sleep(fault.seconds)
        return await self._forward(request)

    async def _until_gone(self, request: web.Request) -> None:
        """Return when the client has disconnected or the server is shutting down."""
        while request.transport is not None and not request.transport.is_closing():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), _DISCONNECT_POLL)
                return

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self._forwarded.append(request.path)
        # raw_path keeps the query string and the client's percent-encoding as they were.
        url = URL(self.upstream + request.raw_path, encoded=True)
        try:
            async with self._client().request(
                request.method,
                url,
                headers=_end_to_end(request.headers),
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                return await _relay(request, upstream)
        except aiohttp.ClientConnectorError as error:
            # Nothing listens upstream: a broken test setup, so say so rather than mimic a fault.
            message = f"faultproxy could not reach {self.upstream}: {error}"
            return web.json_response(openai_error(message, "server_error"), status=502)
        except aiohttp.ClientError:
            # The upstream dropped the connection before answering: drop the client's too.
            return _cut(request)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Relay bytes as the upstream sent them, and add no headers the client did not.
                auto_decompress=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
                # Deadlines are the sidecar's business; the proxy waits as long as it is asked.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ----------------------------------------------------------------------------- helpers


def _count(paths: list[str], suffix: str | None) -> int:
    return sum(1 for path in paths if suffix is None or path.endswith(suffix))


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The headers that belong to the message, without those that belong to one hop."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Stream the upstream's answer to the client as it arrives, chunk by chunk."""
    response = web.StreamResponse(
        status=upstream.status, reason=upstream.reason, headers=_end_to_end(upstream.headers)
    )
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except aiohttp.ClientError:
        # The upstream cut its stream, or the client went away: either way the client's
        # connection ends here without a proper end of body, as it would without the proxy.
        _cut(request)
        return response
    await response.write_eof()
    return response


def _status_response(fault: Status) -> web.Response:
    body = fault.body
    if body is None:
        body = openai_error(
            f"injected by faultproxy: HTTP {fault.status}", _default_kind(fault.status)
        )
    return web.json_response(body, status=fault.status, headers=fault.headers)


def _cut(request: web.Request) -> web.StreamResponse:
    """Abort the client's TCP connection, as a reset would; the response is never sent."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.StreamResponse()


class FaultyUpstream:
    """A fake OpenAI-compatible provider with a `FaultProxy` in front; `url` is the proxy's `/v1`.

    A context manager that serves both and stops both, for tests and the demo alike. The proxy
    listens on `host`; the fake behind it always on 127.0.0.1. `go_down` stops the proxy's
    listener, so that connections are refused as from a host that is gone, and `come_back`
    serves again on the same port (with a new proxy: its counts start again).
    """

    def __init__(self, name: str, api_key: str | None, host: str = "127.0.0.1") -> None:
        self.fake = FakeOpenAI(name=name, api_key=api_key)
        self.host = host
        self._stack = contextlib.ExitStack()
        self._fake_url = ""
        self._proxy: FaultProxy | None = None
        self._proxy_server: ServerThread | None = None
        self.url = ""

    def __enter__(self) -> FaultyUpstream:
        self._fake_url = self._stack.enter_context(ServerThread(self.fake.app)).url
        self._serve_proxy(port=0)
        self._stack.callback(self.go_down)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _serve_proxy(self, port: int) -> None:
        # On a network address, only this machine may use it (it asks for no key).
        local = None if self.host == "127.0.0.1" else frozenset({"127.0.0.1", self.host})
        self._proxy = FaultProxy(self._fake_url, allowed_peers=local)
        server = ServerThread(self._proxy.app, port=port, host=self.host)
        self._proxy_server = server.__enter__()
        self.url = server.url + "/v1"

    def go_down(self) -> None:
        """Stop listening: new connections are refused until `come_back`."""
        if self._proxy_server is not None:
            self._proxy_server.__exit__(None, None, None)
            self._proxy_server = None

    def come_back(self) -> None:
        """Listen again, on the same port."""
        if self._proxy_server is None:
            self._serve_proxy(port=int(self.url.rsplit(":", 1)[1].split("/", 1)[0]))

    @property
    def faults(self) -> FaultProxy:
        """The proxy, to arm and count faults."""
        if self._proxy is None:
            raise RuntimeError("the upstream is not serving")
        return self._proxy
