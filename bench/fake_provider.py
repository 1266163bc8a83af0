"""Serve a fake OpenAI-compatible provider for benchmarks: fake_provider.py PORT [GAP_MS CHUNKS].

With GAP_MS and CHUNKS, every stream sends CHUNKS content events GAP_MS apart, as a model
generating tokens would, so that a benchmark can see whether a proxy holds chunks back.

It also accepts OTLP/HTTP trace exports at /v1/traces and drops them, so that a sidecar can be
measured with its exporter on, paying for encoding and sending its spans.
"""

import sys

from aiohttp import web

from routemesh_testing.fakes import FakeOpenAI, Reply


async def drop_traces(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


fake = FakeOpenAI(name="bench")
if len(sys.argv) > 2:
    chunks = int(sys.argv[3])
    fake.always(
        Reply(
            text=" ".join(["token"] * chunks),
            chunks=chunks,
            chunk_gap_seconds=int(sys.argv[2]) / 1000,
        )
    )
fake.app.router.add_post("/v1/traces", drop_traces)
web.run_app(fake.app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
