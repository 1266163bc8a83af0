"""Records of what happened to a request: one per attempt.

The attempt loop fills them in; telemetry turns them into spans, metrics and response headers.
They are plain data, defined here (below the attempt loop in the layers) so that telemetry can
read them without importing the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import Api, ErrorClass


@dataclass
class AttemptRecord:
    """What one attempt did."""

    index: int
    backend: str
    api: Api
    model: str
    endpoint: str
    retry: int
    error_class: ErrorClass | None = None
    status: int | None = None
    message: str | None = None
    # A cascade's answer that failed the quality gate: why, and what it used.
    escalation: tuple[str, ...] | None = None
    usage: Usage | None = None
    hedge: bool = False  # sent beside a slow attempt rather than after a failed one
    cancelled: bool = False  # stopped because another attempt answered first
