"""Wire the sidecar's parts together and run them until cancelled.

Called by `__main__` with settings already read. It owns the lifetime of the listeners; the
parts themselves know nothing of each other beyond their interfaces.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from routemesh_sidecar.admin.server import build_admin_app
from routemesh_sidecar.settings import SidecarSettings

log = logging.getLogger(__name__)


class Sidecar:
    """The running sidecar: its listeners and the state readiness reads."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self._runners: list[web.AppRunner] = []

    def not_ready_reason(self) -> str | None:
        """Say why the sidecar cannot serve yet; None once it can."""
        # Until a route table source is wired in, the sidecar has nothing to route with.
        return "no route table loaded"

    async def start(self) -> None:
        """Bind the admin listener."""
        admin = web.AppRunner(build_admin_app(self.not_ready_reason), access_log=None)
        await admin.setup()
        await web.TCPSite(admin, self.settings.admin_host, self.settings.admin_port).start()
        self._runners.append(admin)
        log.info("admin listener on %s:%d", self.settings.admin_host, self.settings.admin_port)

    async def stop(self) -> None:
        """Close every listener."""
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def run_forever(self) -> None:
        """Start, then wait until cancelled, then stop."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
