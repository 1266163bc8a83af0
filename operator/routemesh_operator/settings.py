"""The operator's settings: one documented pydantic model, read from `ROUTEMESH_OPERATOR_*`.

Built once at start and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Where the operator runs and what it watches."""

    model_config = SettingsConfigDict(env_prefix="ROUTEMESH_OPERATOR_", frozen=True)

    namespace: str = Field(
        default="routemesh-system",
        description="The operator's own namespace. Pods here are never injected.",
    )
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch (globs allowed); empty means the whole cluster.",
    )
    standalone: bool = Field(
        default=False,
        description="Run without kopf peering (one replica, or tests); otherwise peer.",
    )
