"""The sidecar's port, admin port, log level and resources for one Pod: settings, then annotations.

`build_patch` calls `resolve_options` before it writes anything. A pod may override these with
`routemesh.dev/sidecar-*` annotations; a value that would not work (a port out of range or
already taken by one of the pod's containers, an unknown log level, a misspelt quantity, a
request above its limit) raises `InjectionError`, whose message the webhook returns as its
refusal, naming the annotation to fix. All problems are reported at once. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from routemesh_operator.injection.layout import (
    ADMIN_PORT_ANNOTATION,
    CPU_LIMIT_ANNOTATION,
    CPU_REQUEST_ANNOTATION,
    LOG_LEVEL_ANNOTATION,
    MEMORY_LIMIT_ANNOTATION,
    MEMORY_REQUEST_ANNOTATION,
    PORT_ANNOTATION,
)
from routemesh_operator.injection.quantities import is_quantity
from routemesh_operator.injection.settings import InjectionSettings, LogLevel, resource_problems

_DIGITS = re.compile(r"^[0-9]{1,5}$")  # int() alone would take "+80", " 80" and other digits
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
# (annotation, resource, "requests" or "limits", the settings field it overrides)
_RESOURCE_ANNOTATIONS = (
    (CPU_REQUEST_ANNOTATION, "cpu", "requests", "cpu_request"),
    (MEMORY_REQUEST_ANNOTATION, "memory", "requests", "memory_request"),
    (CPU_LIMIT_ANNOTATION, "cpu", "limits", "cpu_limit"),
    (MEMORY_LIMIT_ANNOTATION, "memory", "limits", "memory_limit"),
)


class InjectionError(ValueError):
    """The pod asks for a sidecar that cannot work; the message says which annotation to fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("routemesh sidecar injection: " + "; ".join(self.problems))


@dataclass(frozen=True)
class SidecarOptions:
    """What one pod's sidecar gets, after its annotations were applied to the settings."""

    listen_port: int
    admin_port: int
    log_level: str
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)


def resolve_options(pod: Mapping[str, Any], settings: InjectionSettings) -> SidecarOptions:
    """The settings with the pod's overrides applied; InjectionError when any does not work."""
    annotations: Mapping[str, Any] = (pod.get("metadata") or {}).get("annotations") or {}
    problems: list[str] = []
    listen_port = _port(annotations, PORT_ANNOTATION, settings.listen_port, problems)
    admin_port = _port(annotations, ADMIN_PORT_ANNOTATION, settings.admin_port, problems)
    log_level = _log_level(annotations, settings.log_level, problems)
    resources = _resources(annotations, settings, problems)
    if listen_port is not None and admin_port is not None:
        problems.extend(_port_clashes(pod, listen_port, admin_port))
    if problems or listen_port is None or admin_port is None:
        raise InjectionError(problems)
    return SidecarOptions(
        listen_port=listen_port,
        admin_port=admin_port,
        log_level=log_level,
        requests={k: v for k, v in resources["requests"].items() if v is not None},
        limits={k: v for k, v in resources["limits"].items() if v is not None},
    )


def _port(
    annotations: Mapping[str, Any], key: str, default: int, problems: list[str]
) -> int | None:
    if key not in annotations:
        return default
    value = str(annotations[key])
    if _DIGITS.match(value) and 1 <= int(value) <= 65535:
        return int(value)
    problems.append(f"annotation {key}={value!r} must be a port number from 1 to 65535")
    return None


def _log_level(annotations: Mapping[str, Any], default: str, problems: list[str]) -> str:
    if LOG_LEVEL_ANNOTATION not in annotations:
        return default
    value = str(annotations[LOG_LEVEL_ANNOTATION])
    if value.lower() in LOG_LEVELS:
        return value.lower()
    problems.append(
        f"annotation {LOG_LEVEL_ANNOTATION}={value!r} must be one of {', '.join(LOG_LEVELS)}"
    )
    return default


def _resources(
    annotations: Mapping[str, Any], settings: InjectionSettings, problems: list[str]
) -> dict[str, dict[str, str | None]]:
    resources: dict[str, dict[str, str | None]] = {"requests": {}, "limits": {}}
    misspelt = []
    for key, resource, kind, setting in _RESOURCE_ANNOTATIONS:
        value: str | None = getattr(settings, setting)
        if key in annotations:
            value = str(annotations[key])
            if not is_quantity(value):
                misspelt.append(
                    f"annotation {key}={value!r} is not a Kubernetes quantity "
                    "(such as 100m, 0.5, 128Mi, 1G)"
                )
        resources[kind][resource] = value
    problems.extend(misspelt)
    if not misspelt:
        # A request above its limit (the pod's or the default one) would be refused by the API
        # server with a message about a container the user never wrote.
        source = "sidecar resources (the routemesh.dev/sidecar-* annotations over the defaults)"
        problems.extend(resource_problems(resources["requests"], resources["limits"], source))
    return resources


def _port_clashes(pod: Mapping[str, Any], listen_port: int, admin_port: int) -> list[str]:
    """Ports the sidecar cannot bind: the pod's containers share its network namespace."""
    if listen_port == admin_port:
        return [
            f"the sidecar's port and admin port are both {listen_port}; set "
            f"{PORT_ANNOTATION} or {ADMIN_PORT_ANNOTATION} to another port"
        ]
    taken = _declared_ports(pod)
    problems = []
    for port, annotation in ((listen_port, PORT_ANNOTATION), (admin_port, ADMIN_PORT_ANNOTATION)):
        if port in taken:
            problems.append(
                f"port {port} is taken by container {taken[port]!r}; set {annotation} to a "
                "free port"
            )
    return problems


def _declared_ports(pod: Mapping[str, Any]) -> dict[int, str]:
    spec = pod.get("spec") or {}
    taken: dict[int, str] = {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            # The sidecar binds TCP; a UDP or SCTP port of the same number does not clash.
            if isinstance(number, int) and port.get("protocol", "TCP") == "TCP":
                taken.setdefault(number, str(container.get("name")))
    return taken
