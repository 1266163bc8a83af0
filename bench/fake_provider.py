"""Serve a fake OpenAI-compatible provider for benchmarks: fake_provider.py PORT."""

import sys

from aiohttp import web

from routemesh_testing.fakes import FakeOpenAI

fake = FakeOpenAI(name="bench")
web.run_app(fake.app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
