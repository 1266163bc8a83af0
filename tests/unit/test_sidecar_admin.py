"""The sidecar's admin listener and settings."""

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from routemesh_sidecar.admin.server import build_admin_app
from routemesh_sidecar.settings import SidecarSettings


@pytest.mark.asyncio
async def test_readyz_reports_why_it_is_not_ready_until_it_is():
    reason: list[str | None] = ["no route table loaded"]
    async with TestClient(TestServer(build_admin_app(lambda: reason[0]))) as client:
        health = await client.get("/healthz")
        assert (health.status, await health.text()) == (200, "ok\n")

        not_ready = await client.get("/readyz")
        assert not_ready.status == 503
        assert "no route table loaded" in await not_ready.text()

        reason[0] = None
        ready = await client.get("/readyz")
        assert (ready.status, await ready.text()) == (200, "ok\n")


def test_settings_read_their_prefix_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROUTEMESH_SIDECAR_LISTEN_PORT", "4100")
    monkeypatch.setenv("ROUTEMESH_SIDECAR_LOG_LEVEL", "debug")
    settings = SidecarSettings()
    assert (settings.listen_port, settings.log_level, settings.listen_host) == (
        4100,
        "debug",
        "127.0.0.1",
    )


def test_settings_refuse_a_bad_port_with_the_field_name(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROUTEMESH_SIDECAR_ADMIN_PORT", "70000")
    with pytest.raises(ValidationError, match="admin_port"):
        SidecarSettings()


@pytest.mark.asyncio
async def test_sidecar_binds_its_admin_port_and_is_not_ready_without_a_route_table():
    import aiohttp

    from routemesh_sidecar.app import Sidecar
    from routemesh_testing.controlplane import free_port

    port = free_port()
    sidecar = Sidecar(SidecarSettings(admin_port=port))
    await sidecar.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            assert response.status == 503
            assert "no route table loaded" in await response.text()
    finally:
        await sidecar.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/healthz")
