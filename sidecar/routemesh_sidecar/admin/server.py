"""Build the admin aiohttp application.

`routemesh_sidecar.app` calls `build_admin_app` with a callable that says why the sidecar is not
ready (or None when it is). Readiness is the sidecar's to decide; this module only reports it.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

NotReadyReason = Callable[[], str | None]


def build_admin_app(not_ready_reason: NotReadyReason) -> web.Application:
    """Return the admin application with `/healthz` and `/readyz`."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reason = not_ready_reason()
        if reason is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
