"""The floor: a plain aiohttp pass-through proxy on uvloop, the least a Python proxy must do.

Usage: passthrough_proxy.py PORT UPSTREAM_ORIGIN. It forwards method, path, headers and body,
and streams the answer back chunk by chunk. Both sidecar benchmarks compare the sidecar with it;
nothing here may be slowed down to flatter the sidecar.
"""

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection"}


async def forward(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    upstream = request.app["upstream"] + request.path_qs
    async with session.request(
        request.method, upstream, headers=headers, data=await request.read()
    ) as answer:
        response = web.StreamResponse(status=answer.status)
        response.content_type = answer.content_type
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def start_session(app: web.Application) -> AsyncIterator[None]:
    app["session"] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app["session"].close()


app = web.Application()
app["upstream"] = sys.argv[2]
app.cleanup_ctx.append(start_session)
app.router.add_route("*", "/{tail:.*}", forward)
web.run_app(
    app,
    host="127.0.0.1",
    port=int(sys.argv[1]),
    print=None,
    access_log=None,
    loop=uvloop.new_event_loop(),
)
