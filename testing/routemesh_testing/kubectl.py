"""A thin wrapper that runs the real `kubectl` against one kubeconfig.

Tests, the harness and the demo drive the cluster through it, so that what they exercise is what a
user types. It adds nothing to kubectl's behaviour: it only pins the kubeconfig, bounds every call
with a timeout, and turns a failure into an exception that carries kubectl's stderr.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from routemesh_testing.waiting import poll_until

SERVICE_ACCOUNT_TIMEOUT = 120.0  # seconds


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message holds its stderr."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Kubectl:
    """Run kubectl with a fixed kubeconfig."""

    def __init__(self, binary: Path | str, kubeconfig: Path, *, timeout: float = 60.0) -> None:
        self.binary = str(binary)
        self.kubeconfig = kubeconfig
        self.timeout = timeout

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl ARGS`; raise `KubectlError` on failure unless `check` is false."""
        argv = [self.binary, f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stderr)
        return result

    def wait_for_default_service_account(self, namespace: str) -> None:
        """Until the namespace's `default` ServiceAccount exists: a Pod is refused without it.

        The ServiceAccount controller of a control plane that has just started (its storage
        still initializing, 2 cores shared with the tests) took more than 30 s to make one in
        CI. Raises, naming the namespace, when it never comes.
        """
        found = poll_until(
            lambda: self.run("get", "serviceaccount", "default", "-n", namespace, check=False),
            lambda result: result.returncode == 0,
            timeout=SERVICE_ACCOUNT_TIMEOUT,
            interval=0.25,
        )
        if found.returncode != 0:
            raise RuntimeError(
                f"namespace {namespace} has no default ServiceAccount after "
                f"{SERVICE_ACCOUNT_TIMEOUT:.0f} s: is the kube-controller-manager running? "
                f"{found.stderr.strip()}"
            )

    def apply(self, manifest: str, *, namespace: str | None = None) -> str:
        """`kubectl apply -f -` with the manifest text; return kubectl's stdout."""
        ns = ["--namespace", namespace] if namespace else []
        return self.run("apply", *ns, "-f", "-", stdin=manifest).stdout

    def get(self, *args: str, namespace: str | None = None) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        ns = ["--namespace", namespace] if namespace else []
        return json.loads(self.run("get", *ns, *args, "-o", "json").stdout)
