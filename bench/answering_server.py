"""A Python HTTP server that only answers: how much of a proxy's cost is its server framework.

Usage: answering_server.py aiohttp|aiohttp-server|listener|httptools PORT. Each reads a request's
body and answers the benchmark's fixed chat completion, with no upstream, on uvloop:
  - `aiohttp`: an `aiohttp.web` application with one catch-all route, as the floor
    (`passthrough_proxy.py`) is built;
  - `aiohttp-server`: aiohttp's low-level `web.Server` with the handler called directly, as the
    sidecar's listener was built until 2026-12-07;
  - `listener`: the sidecar's own server (`routemesh_sidecar.listener.server`), as its listener
    is built now;
  - `httptools`: an asyncio protocol on uvloop that feeds bytes to `httptools` (the parser the
    sidecar's upstream client uses) and writes the answer when a message is complete: the least
    a Python HTTP/1.1 server can do per request (no routing, no request object, no body limit,
    no drain), so a bound and not a server anyone should run.
`bench/proxy.py` measures both with wrk beside the proxies, so that its tables say what the
server framework alone costs per request. Nothing here may be slowed down or sped up to flatter
a proxy.
"""

import asyncio
import json
import sys

import httptools
import uvloop
from aiohttp import web

from proxy import COMPLETION
from routemesh_sidecar.listener.server import (
    Answer,
    DownstreamRequest,
    ListenerServer,
    ServerLimits,
)

ANSWER = json.dumps(COMPLETION, separators=(",", ":")).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
    ANSWER
)


async def answer(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def serve_aiohttp(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


async def serve_aiohttp_server(port: int) -> None:
    runner = web.ServerRunner(web.Server(answer, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def answer_listener(request: DownstreamRequest) -> Answer:
    await request.read()
    return Answer(200, ANSWER)


async def serve_listener(port: int) -> None:
    server = ListenerServer(answer_listener, ServerLimits(max_body_bytes=4 * 1024 * 1024))
    await server.start("127.0.0.1", port)
    await asyncio.Event().wait()


class Answering(asyncio.Protocol):
    """One connection: parse requests as bytes arrive, answer each one when it is complete."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: its own parser."""
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        """Bytes from the client, to the parser (which calls back the methods below)."""
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        """A piece of the request's body: kept, as a server must read it."""
        self.body.append(body)

    def on_message_complete(self) -> None:
        """The request is whole: answer it."""
        self.body.clear()
        self.transport.write(HEAD + ANSWER)


async def serve_httptools(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    kind, listen = sys.argv[1], int(sys.argv[2])
    if kind == "aiohttp":
        serve_aiohttp(listen)
    elif kind == "aiohttp-server":
        uvloop.run(serve_aiohttp_server(listen))
    elif kind == "listener":
        uvloop.run(serve_listener(listen))
    else:
        uvloop.run(serve_httptools(listen))
