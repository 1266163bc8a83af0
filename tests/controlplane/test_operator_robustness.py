"""The operator restarts and the API server goes away: sidecars keep running what they had.

Each test starts its own operator (no other runs in this module), with a real sidecar watching
it through the distribution server, authenticated by a real ServiceAccount token.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from routemesh_sidecar.routetable import RouteTable
from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import chat_setup, wait_for_table_version
from routemesh_testing.operator import running_operator
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(240)


def setup_docs(model: str) -> list[dict[str, Any]]:
    return chat_setup(model, service_account="app")


def table_configmap(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = kubectl.get("configmap", "routemesh-rt-chat", namespace=namespace)
    return found


def programmed_version(kubectl: Kubectl, namespace: str) -> str:
    return wait_for_table_version(kubectl, namespace)


@contextmanager
def watching_sidecar(
    kubectl: Kubectl, namespace: str, url: str, workdir: Path
) -> Iterator[SidecarThread]:
    token = workdir / "token"
    token.write_text(
        kubectl.run("create", "token", "app", "-n", namespace, "--audience", "routemesh").stdout
    )
    labels = workdir / "labels"
    labels.write_text('app="chat"\n')
    with SidecarThread(
        None,
        workdir,
        discovery_url=url,
        discovery_token_path=token,
        pod_name="chat-1",
        pod_namespace=namespace,
        pod_labels_path=labels,
        last_good_path=workdir / "last-good.json",
    ) as sidecar:
        yield sidecar


def current(sidecar: SidecarThread) -> RouteTable:
    table = sidecar.running.active.current
    assert table is not None
    return table


def watch_status(url: str, token: str, namespace: str, version: str, wait: float) -> int:
    query = urllib.parse.urlencode(
        {
            "namespace": namespace,
            "pod": "probe",
            "label": "app=chat",
            "version": version,
            "wait": wait,
        }
    )
    request = urllib.request.Request(  # noqa: S310 (an http URL the test built)
        f"{url}/v1/routetable?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=wait + 10) as response:  # noqa: S310
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def test_a_restarted_operator_republishes_nothing_and_keeps_versions(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {"distribution_host": "127.0.0.1", "distribution_port": port}
    with running_operator(control_plane, **settings):
        kubectl.apply(yaml.safe_dump_all(setup_docs("small")), namespace=namespace)
        version = programmed_version(kubectl, namespace)
        before = table_configmap(kubectl, namespace)["metadata"]["resourceVersion"]
        with watching_sidecar(kubectl, namespace, url, tmp_path) as sidecar:
            table = current(sidecar)
            assert table.version_label == version
    token = kubectl.run("create", "token", "app", "-n", namespace, "--audience", "routemesh").stdout
    with running_operator(control_plane, **settings):
        # The new operator knows the version from the ConfigMap: a sidecar that has it is told
        # nothing new (the watch waits, then says 304), and the ConfigMap is not rewritten.
        started = time.monotonic()
        assert watch_status(url, token.strip(), namespace, version, wait=2) == 304
        assert time.monotonic() - started >= 1.5
        assert table_configmap(kubectl, namespace)["metadata"]["resourceVersion"] == before
        assert programmed_version(kubectl, namespace) == version
        # New content still gets the next version.
        kubectl.apply(yaml.safe_dump_all(setup_docs("big")[-1:]), namespace=namespace)
        changed = poll_until(
            lambda: programmed_version(kubectl, namespace), lambda v: v != version, timeout=30
        )
        assert changed.split("-")[0] == str(int(version.split("-")[0]) + 1)


def test_an_api_server_outage_leaves_sidecars_on_their_tables(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_operator(control_plane, distribution_host="127.0.0.1", distribution_port=port):
        kubectl.apply(yaml.safe_dump_all(setup_docs("small")), namespace=namespace)
        version = programmed_version(kubectl, namespace)
        with watching_sidecar(kubectl, namespace, url, tmp_path) as sidecar:
            assert current(sidecar).version_label == version
            with control_plane.apiserver_outage():
                time.sleep(3)
                # The sidecar still routes with its table, and still says it is ready.
                assert current(sidecar).version_label == version
                with urllib.request.urlopen(f"{sidecar.admin_url}/readyz", timeout=5) as ready:  # noqa: S310
                    assert ready.status == 200
                dump = json.loads(
                    urllib.request.urlopen(f"{sidecar.admin_url}/config_dump", timeout=5).read()  # noqa: S310
                )
                assert dump["route_table"]["version"] == version
            # Once the API server is back, changes flow again.
            kubectl.apply(yaml.safe_dump_all(setup_docs("big")[-1:]), namespace=namespace)
            changed = poll_until(
                lambda: current(sidecar).routes[0].targets[0].model,
                lambda m: m == "big",
                timeout=60,
            )
            assert changed == "big"
