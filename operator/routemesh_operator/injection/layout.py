"""The names injection writes into a Pod: annotations, the container, its volumes and file paths.

`decide`, `options`, `sidecar` and `patch` read these, and so do the tests that check that the
sidecar's environment points at the files the volumes put there. They are fixed rather than
settings: a path the sidecar reads must be the path a volume is mounted at, and nothing else
should be able to move one without the other. Constants only; no I/O.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from routemesh_operator.compiler.inputs import CompilerSettings

# --- annotations and labels users write, and the one injection writes
INJECT_KEY = "routemesh.dev/inject"  # namespace label, pod label (or pod annotation)
INJECTED_ANNOTATION = "routemesh.dev/injected"  # set by injection: the operator's version
INJECTED_LABEL = "routemesh.dev/injected"  # set by injection to "true": monitors select on it
ENABLED_VALUES = frozenset({"enabled", "true"})
DISABLED_VALUES = frozenset({"disabled", "false"})

PORT_ANNOTATION = "routemesh.dev/sidecar-port"
ADMIN_PORT_ANNOTATION = "routemesh.dev/sidecar-admin-port"
LOG_LEVEL_ANNOTATION = "routemesh.dev/sidecar-log-level"
CPU_REQUEST_ANNOTATION = "routemesh.dev/sidecar-cpu-request"
MEMORY_REQUEST_ANNOTATION = "routemesh.dev/sidecar-memory-request"
CPU_LIMIT_ANNOTATION = "routemesh.dev/sidecar-cpu-limit"
MEMORY_LIMIT_ANNOTATION = "routemesh.dev/sidecar-memory-limit"

# Namespaces that are never injected, whatever the settings add to them.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

# --- the sidecar container
SIDECAR_NAME = "routemesh-sidecar"
# A fixed, non-root UID and GID (the distroless "nonroot" user), so runAsNonRoot can be checked
# by the kubelet without reading the image.
SIDECAR_UID = 65532

# --- volumes: every name starts with "routemesh-", which keeps them apart from the pod's own
CREDENTIALS_VOLUME = "routemesh-credentials"
DISCOVERY_VOLUME = "routemesh-discovery"
PODINFO_VOLUME = "routemesh-podinfo"
STATE_VOLUME = "routemesh-state"
ROUTE_TABLE_VOLUME = "routemesh-route-table"
VOLUME_PREFIX = "routemesh-"

# --- where the sidecar finds its files
RUN_DIR = PurePosixPath("/var/run/routemesh")
# The compiler writes credentials_dir/<secret>/<key> into route tables; the Secrets must be
# mounted exactly there, so the path comes from the compiler's own default.
CREDENTIALS_DIR = CompilerSettings().credentials_dir
DISCOVERY_DIR = RUN_DIR / "discovery"
TOKEN_FILE = "token"  # noqa: S105 (a file name, not a secret)
CA_FILE = "ca.crt"
PODINFO_DIR = RUN_DIR / "podinfo"
LABELS_FILE = "labels"
STATE_DIR = RUN_DIR / "state"
LAST_GOOD_FILE = "last-good-route-table.json"
ROUTE_TABLE_DIR = RUN_DIR / "route-table"
