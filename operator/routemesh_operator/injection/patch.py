"""The JSON patch (RFC 6902) that injects the sidecar into a Pod.

The admission handler calls `build_patch` for a Pod that `decide` said yes to, and returns the
operations to the API server as the webhook's patch. It adds the native sidecar first among the
init containers, its volumes, the base URLs that point the app containers at it, the
`routemesh.dev/injected` annotation (the operator's version) and the label of that name (which a
PodMonitor selects the sidecars by). An injected Pod gives `[]`, so a reinvocation changes
nothing. It only adds: it never replaces or removes anything the Pod's author wrote. A pod whose
annotations ask for a sidecar that cannot work raises `InjectionError`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from routemesh_operator.injection.context import InjectionContext
from routemesh_operator.injection.decide import is_injected
from routemesh_operator.injection.layout import INJECTED_ANNOTATION, INJECTED_LABEL
from routemesh_operator.injection.options import InjectionError, resolve_options
from routemesh_operator.injection.settings import InjectionSettings
from routemesh_operator.injection.sidecar import sidecar_container, sidecar_volumes

Json = dict[str, Any]
# Variables the OpenAI and Anthropic SDKs read their base URL from (OPENAI_API_BASE: before 1.0).
OPENAI_ENV = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
ANTHROPIC_ENV = "ANTHROPIC_BASE_URL"


def build_patch(
    pod: Mapping[str, Any], context: InjectionContext, settings: InjectionSettings
) -> list[Json]:
    """The operations that inject the sidecar; [] when the pod already has it."""
    if is_injected(pod):
        return []
    options = resolve_options(pod, settings)
    volumes = sidecar_volumes(context, settings)
    _refuse_volume_clashes(pod, volumes)
    spec: Mapping[str, Any] = pod.get("spec") or {}
    return [
        *_metadata_ops(pod, "annotations", INJECTED_ANNOTATION, settings.version),
        *_metadata_ops(pod, "labels", INJECTED_LABEL, "true"),
        *_append_ops(spec.get("volumes"), "/spec/volumes", volumes),
        *_sidecar_ops(spec.get("initContainers"), sidecar_container(context, settings, options)),
        *_app_env_ops(spec.get("containers") or [], app_env(options.listen_port)),
    ]


def app_env(port: int) -> list[Json]:
    """The base URLs that send the app's OpenAI and Anthropic SDK calls to the sidecar."""
    base = f"http://127.0.0.1:{port}"
    return [
        *({"name": name, "value": f"{base}/v1"} for name in OPENAI_ENV),
        {"name": ANTHROPIC_ENV, "value": base},
    ]


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901): '~' and '/' inside a part are escaped as '~0' and '~1'."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _metadata_ops(pod: Mapping[str, Any], kind: str, key: str, value: str) -> list[Json]:
    present = (pod.get("metadata") or {}).get(kind)
    if not present:
        # Absent (or null, or empty): "add" creates the whole map, or replaces the empty one.
        return [_add(f"/metadata/{kind}", {key: value})]
    return [_add(pointer("metadata", kind, key), value)]


def _append_ops(existing: Sequence[Any] | None, path: str, items: list[Json]) -> list[Json]:
    if not existing:
        return [_add(path, items)]
    return [_add(path + "/-", item) for item in items]


def _sidecar_ops(init_containers: Sequence[Any] | None, sidecar: Json) -> list[Json]:
    if not init_containers:
        return [_add("/spec/initContainers", [sidecar])]
    # First: init containers start in order, and the ones after it may already call a model.
    return [_add("/spec/initContainers/0", sidecar)]


def _app_env_ops(containers: Sequence[Mapping[str, Any]], env: list[Json]) -> list[Json]:
    """Each app container gets the base URLs it does not set itself (value or valueFrom)."""
    ops = []
    for index, container in enumerate(containers):
        existing = container.get("env") or []
        taken = {variable.get("name") for variable in existing}
        missing = [variable for variable in env if variable["name"] not in taken]
        if missing:
            ops.extend(_append_ops(existing, pointer("spec", "containers", index, "env"), missing))
    return ops


def _refuse_volume_clashes(pod: Mapping[str, Any], volumes: list[Json]) -> None:
    spec = pod.get("spec") or {}
    own = {volume.get("name") for volume in spec.get("volumes") or []}
    clashes = sorted(volume["name"] for volume in volumes if volume["name"] in own)
    if clashes:
        raise InjectionError(
            [
                f"the pod already has a volume named {name!r}, which the sidecar needs; rename it"
                for name in clashes
            ]
        )


def _add(path: str, value: Any) -> Json:
    return {"op": "add", "path": path, "value": value}
