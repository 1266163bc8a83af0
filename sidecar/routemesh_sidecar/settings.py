"""The sidecar's settings: one documented pydantic model, read from `ROUTEMESH_SIDECAR_*`.

`__main__` builds it once at start and passes it down; nothing reads the environment at import
time or anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SidecarSettings(BaseSettings):
    """How the sidecar listens, where its route table comes from, and how it logs."""

    model_config = SettingsConfigDict(env_prefix="ROUTEMESH_SIDECAR_", frozen=True)

    listen_host: str = Field(
        default="127.0.0.1",
        description="Address of the downstream listener. Loopback: only the pod's app calls it.",
    )
    listen_port: int = Field(
        default=4000, ge=1, le=65535, description="Port of the OpenAI/Anthropic-compatible API."
    )
    admin_host: str = Field(
        default="127.0.0.1",
        description="Address of the admin listener (/healthz, /readyz, /config_dump, /metrics).",
    )
    admin_port: int = Field(
        default=15000, ge=1, le=65535, description="Port of the admin listener."
    )
    route_table_path: Path | None = Field(
        default=None, description="A route table file to load and watch, when not using discovery."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the sidecar's own logs."
    )
