"""The sidecar container and the volumes only it mounts, as Pod-spec JSON.

`patch.build_patch` calls `sidecar_container` and `sidecar_volumes` and inserts what they return.
Every file path in the sidecar's environment is a mount path of one of these volumes (joined from
`layout`), so what the sidecar reads is what the kubelet put there. The app containers get none
of these volumes: provider credentials and the discovery token are the sidecar's alone. Pure: no
I/O.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from routemesh_operator.conventions import TABLE_KEY, configmap_name
from routemesh_operator.injection.context import InjectionContext, SecretKey
from routemesh_operator.injection.layout import (
    CA_FILE,
    CREDENTIALS_DIR,
    CREDENTIALS_VOLUME,
    DISCOVERY_DIR,
    DISCOVERY_VOLUME,
    LABELS_FILE,
    LAST_GOOD_FILE,
    PODINFO_DIR,
    PODINFO_VOLUME,
    ROUTE_TABLE_DIR,
    ROUTE_TABLE_VOLUME,
    SIDECAR_NAME,
    SIDECAR_UID,
    STATE_DIR,
    STATE_VOLUME,
    TOKEN_FILE,
)
from routemesh_operator.injection.options import SidecarOptions
from routemesh_operator.injection.settings import InjectionSettings

Json = dict[str, Any]
ENV_PREFIX = "ROUTEMESH_SIDECAR_"
# A route table is kilobytes; the limit only keeps a runaway writer from filling the node.
STATE_SIZE_LIMIT = "32Mi"


def sidecar_volumes(context: InjectionContext, settings: InjectionSettings) -> list[Json]:
    """The volumes the sidecar mounts; the credentials and ConfigMap ones only when needed."""
    volumes = [_discovery_volume(settings), _podinfo_volume(), _state_volume()]
    if context.secrets:
        volumes.append(_credentials_volume(context.secrets))
    if context.policy is not None:
        volumes.append(_route_table_volume(context.policy))
    return volumes


def sidecar_container(
    context: InjectionContext, settings: InjectionSettings, options: SidecarOptions
) -> Json:
    """The native sidecar: an init container that keeps running (restartPolicy Always)."""
    admin = options.admin_port
    container: Json = {
        "name": SIDECAR_NAME,
        "image": settings.sidecar_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.sidecar_command),
        # What makes an init container a native sidecar: it starts before the app containers
        # (and the init containers after it), keeps running, and stops after the app.
        "restartPolicy": "Always",
        "ports": [{"name": "routemesh-admin", "containerPort": admin, "protocol": "TCP"}],
        "env": sidecar_env(context, settings, options),
        "resources": _resources(options),
        "securityContext": _security_context(),
        # The app starts only once the sidecar answers, so its first request is not refused.
        "startupProbe": _probe("/healthz", admin, period=1, failures=60),
        # Ready once it has a route table: until then it could only answer 503.
        "readinessProbe": _probe("/readyz", admin, period=5, failures=3),
        "livenessProbe": _probe("/healthz", admin, period=10, failures=3),
        "volumeMounts": _volume_mounts(context),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return container


def sidecar_env(
    context: InjectionContext, settings: InjectionSettings, options: SidecarOptions
) -> list[Json]:
    """The sidecar's environment, in the order Kubernetes expands `$(VAR)` references in."""
    env = [
        # Defined first: OTEL_RESOURCE_ATTRIBUTES below refers to them, and Kubernetes expands
        # $(VAR) only for variables defined earlier in the list.
        _field_env(ENV_PREFIX + "POD_NAME", "metadata.name"),
        _field_env(ENV_PREFIX + "POD_NAMESPACE", "metadata.namespace"),
        _field_env(ENV_PREFIX + "NODE_NAME", "spec.nodeName"),
        # The API stays on loopback: only this pod's app may call it.
        _env("LISTEN_HOST", "127.0.0.1"),
        _env("LISTEN_PORT", str(options.listen_port)),
        _env("ADMIN_HOST", settings.admin_host),
        _env("ADMIN_PORT", str(options.admin_port)),
        _env("LOG_LEVEL", options.log_level),
        _env("DISCOVERY_URL", settings.discovery_url),
        _env("DISCOVERY_TOKEN_PATH", str(DISCOVERY_DIR / TOKEN_FILE)),
    ]
    if settings.discovery_ca_configmap is not None:
        env.append(_env("DISCOVERY_CA_PATH", str(DISCOVERY_DIR / CA_FILE)))
    env.append(_env("POD_LABELS_PATH", str(PODINFO_DIR / LABELS_FILE)))
    env.append(_env("LAST_GOOD_PATH", str(STATE_DIR / LAST_GOOD_FILE)))
    if context.policy is not None:
        env.append(_env("ROUTE_TABLE_PATH", str(ROUTE_TABLE_DIR / TABLE_KEY)))
    env.extend(_otel_env(settings))
    return env


def _otel_env(settings: InjectionSettings) -> list[Json]:
    attributes = ",".join(
        [
            f"k8s.pod.name=$({ENV_PREFIX}POD_NAME)",
            f"k8s.namespace.name=$({ENV_PREFIX}POD_NAMESPACE)",
            f"k8s.node.name=$({ENV_PREFIX}NODE_NAME)",
            f"k8s.container.name={SIDECAR_NAME}",
        ]
    )
    env: list[Json] = [
        {"name": "OTEL_SERVICE_NAME", "value": settings.otel_service_name},
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": attributes},
    ]
    if settings.otlp_endpoint is not None:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": settings.otlp_endpoint})
        env += [
            {"name": name, "value": str(value)}
            for name, value in (
                ("OTEL_EXPORTER_OTLP_COMPRESSION", settings.otlp_compression),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", settings.otlp_timeout_ms),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", settings.otlp_batch_spans),
                ("OTEL_BSP_SCHEDULE_DELAY", settings.otlp_schedule_delay_ms),
                ("OTEL_BSP_MAX_QUEUE_SIZE", settings.otlp_max_queued_spans),
            )
        ]
        if settings.otlp_headers_secret is not None:
            env.append(
                _otlp_headers_env(settings.otlp_headers_secret, settings.otlp_headers_secret_key)
            )
    return env


def _otlp_headers_env(secret: str, key: str) -> Json:
    """The export's headers from a Secret of the pod's namespace, never written into the pod.

    Optional: a missing Secret must not keep an app from starting for the sake of its traces;
    its sidecar exports without the headers, and a collector that needs them refuses the
    batches, which the sidecar logs and counts (routemesh_spans_dropped_total).
    """
    reference = {"name": secret, "key": key, "optional": True}
    return {"name": "OTEL_EXPORTER_OTLP_HEADERS", "valueFrom": {"secretKeyRef": reference}}


def _env(setting: str, value: str) -> Json:
    return {"name": ENV_PREFIX + setting, "value": value}


def _field_env(name: str, field_path: str) -> Json:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _volume_mounts(context: InjectionContext) -> list[Json]:
    mounts: list[Json] = [
        {"name": DISCOVERY_VOLUME, "mountPath": str(DISCOVERY_DIR), "readOnly": True},
        {"name": PODINFO_VOLUME, "mountPath": str(PODINFO_DIR), "readOnly": True},
        {"name": STATE_VOLUME, "mountPath": str(STATE_DIR)},
    ]
    if context.secrets:
        mounts.append(
            {"name": CREDENTIALS_VOLUME, "mountPath": str(CREDENTIALS_DIR), "readOnly": True}
        )
    if context.policy is not None:
        mounts.append(
            {"name": ROUTE_TABLE_VOLUME, "mountPath": str(ROUTE_TABLE_DIR), "readOnly": True}
        )
    return mounts


def _discovery_volume(settings: InjectionSettings) -> Json:
    sources: list[Json] = [
        {
            "serviceAccountToken": {
                "audience": settings.token_audience,
                "expirationSeconds": settings.token_expiration_seconds,
                "path": TOKEN_FILE,
            }
        }
    ]
    if settings.discovery_ca_configmap is not None:
        sources.append(
            {
                "configMap": {
                    "name": settings.discovery_ca_configmap,
                    "items": [{"key": settings.discovery_ca_key, "path": CA_FILE}],
                    # The pod starts without it; the sidecar then starts from its ConfigMap
                    # copy and keeps retrying the operator until the CA appears.
                    "optional": True,
                }
            }
        )
    return {"name": DISCOVERY_VOLUME, "projected": {"sources": sources}}


def _podinfo_volume() -> Json:
    item = {"path": LABELS_FILE, "fieldRef": {"fieldPath": "metadata.labels"}}
    return {"name": PODINFO_VOLUME, "downwardAPI": {"items": [item]}}


def _state_volume() -> Json:
    # Pod-scoped: the last good table survives a restart of the sidecar container.
    return {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": STATE_SIZE_LIMIT}}


def _credentials_volume(secrets: frozenset[SecretKey]) -> Json:
    """Each key at <secret>/<key>: where the compiler's route tables say the file is."""
    keys: defaultdict[str, set[str]] = defaultdict(set)
    for secret in secrets:
        keys[secret.name].add(secret.key)
    sources = [
        {
            "secret": {
                "name": name,
                "items": [{"key": key, "path": f"{name}/{key}"} for key in sorted(keys[name])],
                # A missing Secret must not keep the pod from starting: the compiler already
                # reports it on the backend, and routes fall back around that backend.
                "optional": True,
            }
        }
        for name in sorted(keys)
    ]
    return {"name": CREDENTIALS_VOLUME, "projected": {"sources": sources}}


def _route_table_volume(policy: str) -> Json:
    config_map = {
        "name": configmap_name(policy),
        "items": [{"key": TABLE_KEY, "path": TABLE_KEY}],
        # Absent until the policy first compiles; the sidecar then relies on discovery.
        "optional": True,
    }
    return {"name": ROUTE_TABLE_VOLUME, "configMap": config_map}


def _resources(options: SidecarOptions) -> Json:
    resources: Json = {}
    if options.requests:
        resources["requests"] = dict(options.requests)
    if options.limits:
        resources["limits"] = dict(options.limits)
    return resources


def _security_context() -> Json:
    return {
        "runAsNonRoot": True,
        "runAsUser": SIDECAR_UID,
        "runAsGroup": SIDECAR_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, port: int, *, period: int, failures: int) -> Json:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "failureThreshold": failures,
    }
