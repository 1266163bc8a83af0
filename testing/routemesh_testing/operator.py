"""Run the real operator against the local control plane, in-process or as a killable process.

`OperatorProcess` runs it as a child process, which the end-to-end suite kills and restarts.

Tests start it with `running_operator(control_plane)`; it watches the whole cluster, standalone
(no peering), with the kubeconfig of the control plane's admin unless a test passes its own
(the RBAC test runs it as the chart's ServiceAccount). Stopping it is graceful: kopf's
cleanup handler stops the runtime. The operator adds no finalizers, so test namespaces can be
deleted after it has stopped.

What kopf's runtime leaves when its thread ends (its closed event loop, and the watch streams'
TLS connections to the API server, never released, in reference cycles) is collected as soon as
it has stopped, its unclosed-transport warnings ignored. Left to the next garbage collection, the
finalizers' ResourceWarnings (errors under `filterwarnings = error`) fail whichever later test
happens to be running then: with GC timing, under load, a unit test.
"""

from __future__ import annotations

import gc
import json
import os
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf
from kopf.testing import KopfRunner

from routemesh_operator.handlers import build_registry
from routemesh_operator.injection.settings import InjectionSettings
from routemesh_operator.settings import OperatorSettings
from routemesh_testing.controlplane import LocalControlPlane, die_with_parent, terminate
from routemesh_testing.waiting import http_ok, poll_until


def injecting_settings(
    *,
    namespace: str,
    webhook_configuration: str,
    webhook_port: int,
    distribution_port: int,
    cert_dir: Path,
    tls: bool = False,
    otlp_endpoint: str | None = None,
    otlp_headers_secret: str | None = None,
) -> dict[str, Any]:
    """Operator settings for injection on this machine: webhook and distribution on 127.0.0.1.

    The injected sidecars find the distribution server on 127.0.0.1 too (over TLS, trusting
    the CA the operator publishes, when `tls`); `otlp_endpoint` is where they send spans, with
    the headers of the Secret `otlp_headers_secret` of their namespace.
    """
    scheme = "https" if tls else "http"
    return {
        "namespace": namespace,
        "webhook_enabled": True,
        "webhook_host": "127.0.0.1",
        "webhook_port": webhook_port,
        "webhook_extra_hosts": ["127.0.0.1"],
        "webhook_configuration": webhook_configuration,
        "webhook_cert_dir": str(cert_dir),
        "distribution_host": "127.0.0.1",
        "distribution_port": distribution_port,
        "distribution_tls": tls,
        "injection": InjectionSettings(
            operator_namespace=namespace,
            discovery_url=f"{scheme}://127.0.0.1:{distribution_port}",
            discovery_ca_configmap="routemesh-ca" if tls else None,
            otlp_endpoint=otlp_endpoint,
            otlp_headers_secret=otlp_headers_secret,
        ),
    }


@contextmanager
def running_operator(plane: LocalControlPlane, **settings: Any) -> Iterator[KopfRunner]:
    """The operator, running in a thread until the block ends."""
    operator_settings = OperatorSettings(
        **{
            "kubeconfig": str(plane.kubeconfig),
            "standalone": True,
            # Tests that want the webhook turn it on, with a Secret in a namespace of theirs.
            "webhook_enabled": False,
            **settings,
        }
    )
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.watching.server_timeout = 30
    kopf_settings.execution.default_backoff = 1
    runner = KopfRunner(
        ["run", "--all-namespaces", "--standalone"],
        registry=build_registry(operator_settings),
        settings=kopf_settings,
        timeout=60,
    )
    try:
        with runner:
            if operator_settings.distribution_port:
                _wait_until_serving(
                    operator_settings.distribution_host,
                    operator_settings.distribution_port,
                    operator_settings.distribution_tls,
                )
            yield runner
    finally:
        del runner
        _collect_runtime_leftovers()


def _collect_runtime_leftovers() -> None:
    """Finalize the stopped runtime's garbage now, not in whichever test runs the next GC."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _wait_until_serving(host: str, port: int, tls: bool) -> None:
    """Once the distribution server answers, the operator is up (with TLS: its webhook too)."""
    address = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
    url = f"{'https' if tls else 'http'}://{address}:{port}/healthz"
    context = None
    if tls:  # a liveness poll: which CA signed it is the tests' business
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if not poll_until(lambda: http_ok(url, 2.0, context), bool, timeout=60, interval=0.1):
        raise RuntimeError(f"the operator's distribution server never answered at {url}")


class OperatorProcess:
    """`python -m routemesh_operator` as a child process, its settings as its environment.

    For the end-to-end suite, which kills it (SIGKILL, as an OOM kill or a node loss would) and
    starts it again under load. Standalone, as one replica runs: no Lease, so a restart is
    back at once (the takeover of a Lease is tested in test_leader.py). It dies with the test
    process, and a start that fails stops what it started.
    """

    def __init__(self, plane: LocalControlPlane, log_path: Path, **settings: Any) -> None:
        self.settings = OperatorSettings(
            **{
                "kubeconfig": str(plane.kubeconfig),
                "standalone": True,
                "pod_name": "routemesh-operator-e2e",
                "webhook_enabled": False,
                **settings,
            }
        )
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """The settings as the ROUTEMESH_OPERATOR_* variables the operator reads."""
        env = dict(os.environ)  # noqa: TID251  (the child inherits this process's environment)
        for name, value in self.settings.model_dump(mode="json").items():
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            env[f"ROUTEMESH_OPERATOR_{name.upper()}"] = text
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        return env

    def start(self) -> None:
        """Start it and return once its distribution server answers."""
        if self.process is not None:
            raise RuntimeError("the operator process is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "routemesh_operator"],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (nothing else runs in the child)
            )
        try:
            _wait_until_serving(
                self.settings.distribution_host,
                self.settings.distribution_port,
                self.settings.distribution_tls,
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye to the API server or the sidecars."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None
