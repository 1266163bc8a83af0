"""Whether a Pod gets the sidecar: opt-in and opt-out, excluded namespaces, already injected.

The admission handler calls `decide` first and `build_patch` only when it says yes; the reason
is for its log line and the admission response's warnings. Reads the Pod and its namespace's
labels only; performs no I/O and never raises on a malformed Pod (the API server validates it
after the webhook).

The rules, strongest first: the operator's namespace and the system namespaces are never
injected; an injected pod is left alone; host-network pods are not injected (a loopback sidecar
there would listen on the node); the pod's annotation decides when it has one (a pod saying
disabled wins over its namespace's label); a namespace label of `disabled` wins over a pod
saying enabled (the namespace's owner turned injection off); otherwise the namespace's label.
A pod says so with its `routemesh.dev/inject` label, or else the annotation of that name, which
can only opt it out: the chart's webhook configuration selects on labels (an annotation is
invisible to the API server's selectors), so an annotation could never bring a pod here. Values
are matched exactly as the selectors match them: `enabled` or `true`, `disabled` or `false`;
anything else is not understood (and never taken as consent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routemesh_operator.injection.layout import (
    DISABLED_VALUES,
    ENABLED_VALUES,
    INJECT_KEY,
    INJECTED_ANNOTATION,
    SIDECAR_NAME,
    SYSTEM_NAMESPACES,
)
from routemesh_operator.injection.settings import InjectionSettings


@dataclass(frozen=True)
class Decision:
    """Inject or not, and why, in words for a log line or an admission warning."""

    inject: bool
    reason: str


def decide(
    pod: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str],
    settings: InjectionSettings,
) -> Decision:
    """Whether to inject the sidecar into this pod, created in this namespace."""
    never = _never(pod, namespace, settings)
    if never is not None:
        return Decision(False, never)
    return _by_choice(pod, namespace, namespace_labels)


def is_injected(pod: Mapping[str, Any]) -> bool:
    """Whether the pod already has the sidecar, or says it was injected."""
    if INJECTED_ANNOTATION in _annotations(pod):
        return True
    spec = _spec(pod)
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return any(
        isinstance(container, Mapping) and container.get("name") == SIDECAR_NAME
        for container in containers
    )


def _never(pod: Mapping[str, Any], namespace: str, settings: InjectionSettings) -> str | None:
    """Why this pod is not injected whatever it or its namespace asks; None when it may be."""
    if namespace == settings.operator_namespace:
        return f"{namespace} is the operator's own namespace"
    if namespace in SYSTEM_NAMESPACES:
        return f"{namespace} is a system namespace"
    if namespace in settings.excluded_namespaces:
        return f"{namespace} is excluded from injection by the operator's settings"
    if is_injected(pod):
        return "already injected"
    if _spec(pod).get("hostNetwork") is True:
        return "the pod uses the host network"
    return None


def _by_choice(
    pod: Mapping[str, Any], namespace: str, namespace_labels: Mapping[str, str]
) -> Decision:
    where, value = _pod_says(pod)
    pod_choice = _choice(value)
    if where == "annotation" and pod_choice == "enabled":
        pod_choice = None  # only a label opts a pod in (see the module docstring)
    namespace_choice = _choice(namespace_labels.get(INJECT_KEY))
    if pod_choice == "unknown":
        # Not injecting is the safer reading of an annotation nobody can interpret.
        return Decision(
            False,
            f"{where} {INJECT_KEY}={value!r} is not understood "
            "(enabled or true to inject, disabled or false not to)",
        )
    if pod_choice == "disabled":
        return Decision(False, f"the pod opts out ({INJECT_KEY} {where})")
    if namespace_choice == "disabled":
        return Decision(False, f"namespace {namespace} opts out ({INJECT_KEY} label)")
    if pod_choice == "enabled":
        return Decision(True, f"the pod opts in ({INJECT_KEY} {where})")
    if namespace_choice == "enabled":
        return Decision(True, f"namespace {namespace} opts in ({INJECT_KEY} label)")
    return _nobody_opted_in(where, value)


def _nobody_opted_in(where: str, value: object) -> Decision:
    if where == "annotation" and value is not None:
        return Decision(
            False,
            f"the {INJECT_KEY} annotation does not opt a pod in (a selector cannot see it): "
            "label the pod instead",
        )
    return Decision(False, "neither the pod nor its namespace opts in")


def _choice(value: object) -> str | None:
    """'enabled', 'disabled', 'unknown', or None when there is no value."""
    if value is None:
        return None
    text = str(value)
    if text in ENABLED_VALUES:
        return "enabled"
    if text in DISABLED_VALUES:
        return "disabled"
    return "unknown"


def _pod_says(pod: Mapping[str, Any]) -> tuple[str, object]:
    """Where the pod states its choice (its label wins over its annotation), and the value."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if INJECT_KEY in labels:
        return "label", labels[INJECT_KEY]
    return "annotation", _annotations(pod).get(INJECT_KEY)


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = pod.get("metadata") or {}
    return metadata.get("annotations") or {}


def _spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("spec") or {}
