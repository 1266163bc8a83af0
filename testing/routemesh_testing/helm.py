"""The real helm CLI, built by hack/build-helm.sh, for tests that render the chart.

`Helm.locate()` finds the cached binary (or `ROUTEMESH_HELM` when set); a missing binary is an
error, never a reason to skip. `third_party_crds()` finds the Prometheus Operator and
cert-manager CRDs hack/fetch-crds.sh cached, which the chart's optional objects need.
`template` renders the chart with values and returns the parsed documents, so tests assert on
objects rather than on text. Test support only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from routemesh_testing.controlplane import REPO_ROOT, BinariesMissing, pinned_versions

CHART = REPO_ROOT / "charts" / "routemesh"
VERSIONS_SCRIPT = REPO_ROOT / "hack" / "versions.sh"


class Helm:
    """Runs `helm` with a given binary."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    @classmethod
    def locate(cls, environ: dict[str, str] | None = None) -> Helm:
        """The binary from `ROUTEMESH_HELM`, else the one hack/build-helm.sh cached."""
        environ = environ if environ is not None else dict(os.environ)  # noqa: TID251
        explicit = environ.get("ROUTEMESH_HELM")
        if explicit:
            return cls(Path(explicit))
        script = f"source {VERSIONS_SCRIPT}; routemesh_helm_dir"
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
        binary = Path(result.stdout.strip()) / "helm"
        if result.returncode != 0 or not binary.exists():
            raise BinariesMissing(
                f"helm not found at {binary}: run `make tools` (hack/build-helm.sh) first"
            )
        return cls(binary)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`helm ARGS`; raise on failure with helm's stderr."""
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def template(
        self,
        release: str,
        namespace: str,
        values: dict[str, Any] | None = None,
        *,
        include_crds: bool = False,
        hooks: bool = False,
    ) -> list[dict[str, Any]]:
        """The rendered chart, parsed: what `helm install` creates, and its hooks when asked."""
        # Render for the Kubernetes version the tests run (helm's own default is old).
        kube = pinned_versions()["k8s"]
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", kube]
        if include_crds:
            args.append("--include-crds")
        if not hooks:
            args.append("--no-hooks")
        if values:
            for key, value in _flatten(values).items():
                args += ["--set-json", f"{key}={json.dumps(value)}"]
        rendered = self.run(*args).stdout
        return [doc for doc in yaml.safe_load_all(rendered) if doc]


def third_party_crds() -> list[Path]:
    """The cached ServiceMonitor, PodMonitor, Certificate and Issuer CRD files."""
    script = f"source {VERSIONS_SCRIPT}; routemesh_crds_dir"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    directory = Path(result.stdout.strip())
    if result.returncode != 0 or not (directory / ".complete").exists():
        raise BinariesMissing(
            f"third-party CRDs not found at {directory}: run `make tools` (hack/fetch-crds.sh)"
        )
    return sorted(directory.glob("*.yaml"))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat
