"""The kind scripts (e2e/kind/) stay true to the chart and the CRDs, though CI never runs them.

No Docker here, so the scripts themselves cannot run. What can rot without Docker is checked
against the real parts: the values up.sh sets render with the chart's schema, the demo's objects
are accepted by the API server, and its policy is programmed by the real operator, which is the
condition smoke.sh waits for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from routemesh_testing.controlplane import REPO_ROOT
from routemesh_testing.helm import Helm
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.operator import running_operator
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(180)

KIND = REPO_ROOT / "e2e" / "kind"


def demo_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KIND / "demo.yaml").read_text()) if doc]


def test_the_values_up_sh_sets_render_with_the_charts_schema():
    script = (KIND / "up.sh").read_text()
    sets = dict(re.findall(r"--set ([a-zA-Z.]+)=(\S+)", script))
    assert {"operator.image.repository", "sidecar.image.pullPolicy"} <= set(sets)
    values: dict[str, Any] = {}
    for key, value in sets.items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = "dev" if value.startswith('"$tag"') else value
    docs = Helm.locate().template("routemesh", "routemesh-system", values)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "routemesh/operator:dev"
    assert container["imagePullPolicy"] == "Never"
    # The script waits for the Deployment by the name the chart gives it.
    assert deployment["metadata"]["name"] in script


def test_the_demo_is_accepted_and_its_policy_programmed_by_the_real_operator(
    control_plane: Any, kubectl: Kubectl, namespace: str
):
    docs = demo_documents()
    (labelled,) = [d for d in docs if d["kind"] == "Namespace"]
    assert labelled["metadata"]["labels"]["routemesh.dev/inject"] == "enabled"
    # The rest goes into the test's namespace, which stands in for routemesh-demo.
    objects = [d for d in docs if d["kind"] != "Namespace"]
    for doc in objects:
        doc["metadata"]["namespace"] = namespace
    smoke = (KIND / "smoke.sh").read_text()
    for name in ("economy", "frontier", "chat"):
        assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == name for d in objects)
        assert f"deployment/{name}" in smoke
    with running_operator(control_plane):
        kubectl.apply(yaml.safe_dump_all(objects))
        conditions = poll_until(
            lambda: {
                c["type"]: c["status"]
                for c in kubectl.get("routingpolicy", "chat", namespace=namespace)
                .get("status", {})
                .get("conditions", [])
            },
            lambda found: found.get("Programmed") == "True",
            timeout=60,
        )
    assert conditions.get("Programmed") == "True", conditions
    assert conditions["Accepted"] == "True", conditions
    assert conditions["ResolvedRefs"] == "True", conditions


def test_the_scripts_say_they_are_optional_and_ci_never_calls_them():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "e2e/kind" not in ci
    readme = (REPO_ROOT / "README.md").read_text()
    assert "e2e/kind/up.sh" in readme
    for script in ("up.sh", "smoke.sh", "down.sh"):
        assert Path(KIND / script).stat().st_mode & 0o111, f"{script} is not executable"
