"""Sidecar injection: pure functions that decide whether a Pod gets the sidecar and build its patch.

The admission handler calls `decide` with the Pod, its namespace's labels and the injection
settings, then `build_patch` with the Pod, what the operator knows about it (`InjectionContext`)
and the same settings. Nothing here performs I/O or imports kopf, a Kubernetes client or aiohttp
(an import-linter contract), so every case is tested on its own. Injection is idempotent: an
injected Pod comes back unchanged.

Modules: `settings` (InjectionSettings), `context` (InjectionContext), `decide` (opt-in and
opt-out), `options` (annotation overrides, InjectionError), `sidecar` (the container and its
volumes), `patch` (the JSON patch), `layout` (names and paths) and `quantities`.
"""

from routemesh_operator.injection.context import InjectionContext, SecretKey
from routemesh_operator.injection.decide import Decision, decide, is_injected
from routemesh_operator.injection.options import InjectionError, SidecarOptions, resolve_options
from routemesh_operator.injection.patch import build_patch
from routemesh_operator.injection.settings import InjectionSettings

__all__ = [
    "Decision",
    "InjectionContext",
    "InjectionError",
    "InjectionSettings",
    "SecretKey",
    "SidecarOptions",
    "build_patch",
    "decide",
    "is_injected",
    "resolve_options",
]
