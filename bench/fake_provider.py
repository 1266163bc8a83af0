"""Serve a fake OpenAI-compatible provider for benchmarks: fake_provider.py PORT.

It also accepts OTLP/HTTP trace exports at /v1/traces and drops them, so that a sidecar can be
measured with its exporter on, paying for encoding and sending its spans.
"""

import sys

from aiohttp import web

from routemesh_testing.fakes import FakeOpenAI


async def drop_traces(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


fake = FakeOpenAI(name="bench")
fake.app.router.add_post("/v1/traces", drop_traces)
web.run_app(fake.app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
