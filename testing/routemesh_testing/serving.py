"""Serve an aiohttp application from a background thread with its own event loop.

Fake providers, the OTLP receiver and other real servers that tests talk to run this way, so
that sync SDK clients in the test thread and async clients in the test's own loop can both call
them. Test support only: product code never imports it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread, and a way to run coroutines on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the loop and return its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        """Cancel what is left, stop the loop, join the thread and close the loop."""

        async def cancel_rest() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class ServerThread:
    """An aiohttp application served on 127.0.0.1 (or `host`) from a `LoopThread`."""

    def __init__(
        self, app: web.Application, port: int = 0, name: str = "server", host: str = "127.0.0.1"
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._name = name
        self._thread: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The server's origin, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self.port}"

    @property
    def loop_thread(self) -> LoopThread:
        """The thread the server runs on."""
        if self._thread is None:
            raise RuntimeError("the server is not started")
        return self._thread

    def __enter__(self) -> ServerThread:
        self._thread = LoopThread(self._name)
        self.port = self._thread.run(self._start())
        return self

    async def _start(self) -> int:
        # Short shutdown timeout: a fake that hangs on purpose must not hold the test's exit.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        if self._runner is not None:
            self._thread.run(self._runner.cleanup())
        self._thread.close()
        self._thread = None
