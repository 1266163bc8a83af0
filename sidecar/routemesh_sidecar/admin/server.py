"""Build the admin aiohttp application: `/healthz`, `/readyz`, `/config_dump` and `/metrics`.

`routemesh_sidecar.app` calls `build_admin_app` with callables that say why the sidecar is not
ready (or None when it is), what configuration is active, and the metrics text. Readiness and the
dump are the sidecar's to decide; this module only serves them. It serves on its own port, so an
app can never reach it through the downstream listener.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

NotReadyReason = Callable[[], str | None]


@dataclass(frozen=True)
class AdminSources:
    """What the admin endpoints read."""

    not_ready_reason: NotReadyReason
    config_dump: Callable[[], dict[str, Any]] = dict
    metrics: Callable[[], bytes] = bytes
    metrics_content_type: str = "text/plain; version=0.0.4; charset=utf-8"


def build_admin_app(sources: AdminSources | NotReadyReason) -> web.Application:
    """Return the admin application."""
    if not isinstance(sources, AdminSources):
        sources = AdminSources(sources)
    admin = sources

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reason = admin.not_ready_reason()
        if reason is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def config_dump(_: web.Request) -> web.Response:
        return web.json_response(admin.config_dump())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=admin.metrics(), headers={"content-type": admin.metrics_content_type}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/config_dump", config_dump)
    app.router.add_get("/metrics", metrics)
    return app
