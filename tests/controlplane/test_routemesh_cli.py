"""`routemesh` (and `kubectl routemesh`) against the real control plane, operator and sidecars.

Each command runs as a user runs it: `status`, `explain` and `cost`, for people and with
`-o json`, and every error case with its exit code and a message that says what to do.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from routemesh_operator import __version__
from routemesh_operator.cli import errors
from routemesh_operator.cli.main import main
from routemesh_operator.conventions import TABLE_KEY, configmap_name
from routemesh_sidecar.routetable import RouteTable
from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.fakes import OPENAI_KEY, FakeOpenAI
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import chat_setup, wait_for_table_version
from routemesh_testing.operator import running_operator
from routemesh_testing.serving import ServerThread
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, route, table
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(180)

CODE_PROMPT = "Why does this fail?\n```python\ndef mean(xs):\n    return sum(xs) / len(xs)\n```"


@pytest.fixture(scope="module")
def operator(control_plane: LocalControlPlane) -> Iterator[None]:
    with running_operator(control_plane):
        yield


def run(*args: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stderr
    sys.stderr = err
    try:
        code = main(list(args), stdout=out)
    finally:
        sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def kc(plane: LocalControlPlane) -> list[str]:
    return ["--kubeconfig", str(plane.kubeconfig)]


def code_and_chat(namespace: str) -> list[dict[str, Any]]:
    """chat_setup's backend and policy, with a route for code to the big model first."""
    docs = chat_setup("small")
    policy = docs[-1]
    policy["spec"]["routes"].insert(
        0,
        {
            "name": "code",
            "match": {"signals": {"codePresent": True}},
            "strategy": {"type": "Fallback"},
            "targets": [
                {"backend": "provider", "model": "big"},
                {"backend": "provider", "model": "small"},
            ],
        },
    )
    return docs


def compiled_table(kubectl: Kubectl, namespace: str) -> RouteTable:
    found = kubectl.get("configmap", configmap_name("chat"), namespace=namespace)
    return RouteTable.model_validate_json(found["data"][TABLE_KEY])


def test_status_shows_the_policy_the_backend_and_a_sidecar_that_runs_its_table(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, operator: None, tmp_path
):
    kubectl.apply(yaml.safe_dump_all(code_and_chat(namespace)), namespace=namespace)
    version = wait_for_table_version(kubectl, namespace)
    with SidecarThread(compiled_table(kubectl, namespace), tmp_path) as sidecar:
        code, shown, _ = run(
            "status", "-n", namespace, *kc(control_plane), "--sidecar", sidecar.admin_url
        )
        json_code, as_json, _ = run(
            "status",
            "-n",
            namespace,
            *kc(control_plane),
            "--sidecar",
            sidecar.admin_url,
            "-o",
            "json",
        )
    assert code == errors.OK, shown
    assert "ROUTING POLICIES" in shown
    assert f"{namespace}  chat" in shown
    assert version in shown
    report = json.loads(as_json)
    assert json_code == errors.OK
    [policy] = report["policies"]
    assert policy["valid"] is True
    assert policy["accepted"] is True
    assert policy["routeTableVersion"] == version
    [backend_row] = report["backends"]
    assert (backend_row["name"], backend_row["provider"], backend_row["valid"]) == (
        "provider",
        "OpenAI",
        True,
    )
    [sidecar_row] = report["sidecars"]
    assert sidecar_row["state"] == "ACK"
    assert sidecar_row["policy"] == "chat", "the sidecar runs the policy's current table"
    assert sidecar_row["routeTableVersion"] == version
    assert sidecar_row["openBreakers"] == []


def _judged_invalid(policy_row: dict[str, Any]) -> bool:
    """The operator wrote its conditions (Accepted with the rest, at once) and found a fault."""
    return policy_row["accepted"] is True and policy_row["valid"] is False


def test_status_exits_1_and_says_why_when_a_policy_names_a_missing_backend(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, operator: None
):
    docs = chat_setup("small")
    policy = docs[-1]
    policy["spec"]["routes"][0]["targets"] = [{"backend": "nowhere", "model": "small"}]
    kubectl.apply(yaml.safe_dump_all(docs), namespace=namespace)
    # Wait for the operator's verdict, not for the empty status before it: a policy with no
    # conditions yet is not valid either, and its message is only "no status yet".
    poll_until(
        lambda: run("status", "-n", namespace, *kc(control_plane), "-o", "json"),
        lambda result: _judged_invalid(json.loads(result[1])["policies"][0]),
        timeout=30,
    )
    code, shown, _ = run("status", "-n", namespace, *kc(control_plane))
    assert code == errors.FINDING
    assert "nowhere" in shown, "the message names the missing backend"


def test_explain_shows_signals_route_candidates_and_the_decision_without_calling_a_model(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, operator: None
):
    kubectl.apply(yaml.safe_dump_all(code_and_chat(namespace)), namespace=namespace)
    version = wait_for_table_version(kubectl, namespace)
    base = ["explain", "chat", "-n", namespace, *kc(control_plane)]
    code, as_json, _ = run(*base, "--prompt", CODE_PROMPT, "-o", "json")
    assert code == errors.OK
    explained = json.loads(as_json)
    assert explained["routeTableVersion"] == version
    assert explained["signals"]["codePresent"] is True
    assert explained["signals"]["tokenCount"] == "estimate"
    assert explained["route"] == "code"
    assert explained["candidates"] == ["provider/big", "provider/small"]
    assert explained["decision"] == {"target": "provider/big", "fallbacks": ["provider/small"]}

    code, shown, _ = run(*base, "--prompt", "What is the capital of France?")
    assert code == errors.OK
    assert "codePresent=False" in shown
    assert "route: r (Fallback)" in shown
    assert "decision: provider/small\n" in shown

    code, as_yaml, _ = run(*base, "--prompt", "hi", "-H", "x-team: search", "-o", "yaml")
    assert yaml.safe_load(as_yaml)["request"]["headers"] == {"x-team": "search"}


def test_explain_exits_1_when_no_route_takes_the_request(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, operator: None
):
    docs = chat_setup("small")
    docs[-1]["spec"]["routes"][0]["match"] = {"models": ["gpt-4o"]}
    kubectl.apply(yaml.safe_dump_all(docs), namespace=namespace)
    wait_for_table_version(kubectl, namespace)
    code, _, said = run(
        "explain", "chat", "-n", namespace, *kc(control_plane), "--prompt", "hi", "--model", "other"
    )
    assert code == errors.FINDING
    assert "no route takes this request" in said
    code, _, said = run(
        "explain",
        "chat",
        "-n",
        namespace,
        *kc(control_plane),
        "--prompt",
        "hi",
        "--model",
        "gpt-4o",
    )
    assert code == errors.OK, said


def test_each_error_has_its_exit_code_and_says_what_to_do(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
):
    code, _, said = run("explain", "absent", "-n", namespace, *kc(control_plane), "--prompt", "x")
    assert code == errors.NOT_FOUND
    assert f"no RoutingPolicy 'absent' in namespace '{namespace}'" in said
    assert f"routemesh status -n {namespace}" in said

    code, _, said = run("status", "--kubeconfig", str(tmp_path / "missing"))
    assert code == errors.UNREACHABLE
    assert "no usable kubeconfig" in said

    closed = tmp_path / "closed-kubeconfig"
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    real = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    closed.write_text(yaml.safe_dump(config))
    code, _, said = run("status", "--kubeconfig", str(closed))
    assert code == errors.UNREACHABLE
    assert "cannot reach the Kubernetes API" in said
    assert "kubectl cluster-info" in said

    code, _, said = run(
        "status", "-n", namespace, "--kubeconfig", str(nobody(kubectl, namespace, real, tmp_path))
    )
    assert code == errors.REFUSED, said
    assert "refused" in said
    assert "routingpolicies" in said, "it names the permission to ask for"

    code, _, said = run(
        "status",
        "-n",
        namespace,
        *kc(control_plane),
        "--sidecar",
        f"http://127.0.0.1:{free_port()}",
    )
    assert code == errors.UNREACHABLE
    assert "kubectl port-forward" in said

    code, _, said = run("explain", "chat", *kc(control_plane), "--prompt", "x", "-H", "no-colon")
    assert code == errors.USAGE
    assert "'Name: value'" in said


def nobody(kubectl: Kubectl, namespace: str, config: dict[str, Any], tmp_path: Path) -> Path:
    """A kubeconfig for a ServiceAccount that may read nothing."""
    kubectl.apply(
        yaml.safe_dump(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}
        ),
        namespace=namespace,
    )
    token = kubectl.run("create", "token", "nobody", "-n", namespace).stdout.strip()
    cluster = config["clusters"][0]
    path = tmp_path / "nobody-kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [
                    {"name": "nobody", "context": {"cluster": cluster["name"], "user": "nobody"}}
                ],
                "current-context": "nobody",
            }
        )
    )
    return path


def test_cost_reports_what_each_route_and_backend_spent_from_the_sidecars_metrics(tmp_path):
    fake = FakeOpenAI(name="fake", api_key=OPENAI_KEY)
    with ServerThread(fake.app) as server:
        routes = table(
            {"openai": backend(server.url + "/v1", key_env="OPENAI_KEY")},
            route("chat", ("openai", "m")),
        )
        with SidecarThread(routes, tmp_path, variables={"OPENAI_KEY": OPENAI_KEY}) as sidecar:
            with openai.OpenAI(
                base_url=sidecar.openai_base_url, api_key="x", max_retries=0
            ) as client:
                for _ in range(3):
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}]
                    )
            code, as_json, _ = run("cost", "--sidecar", sidecar.admin_url, "-o", "json")
            table_code, shown, _ = run("cost", "--sidecar", sidecar.admin_url)
    assert code == table_code == errors.OK
    report = json.loads(as_json)
    [row] = report["costUsd"]
    assert (row["route"], row["backend"]) == ("chat", "openai")
    assert row["usd"] == pytest.approx(report["totalUsd"])
    assert row["usd"] > 0
    tokens = {t["kind"]: t["tokens"] for t in report["tokens"]}
    assert tokens["input"] > 0
    assert tokens["output"] > 0
    assert "since each sidecar started" in shown
    assert "chat   openai" in shown


def test_kubectl_finds_the_cli_as_its_routemesh_plugin(control_plane: LocalControlPlane):
    plugin = shutil.which("kubectl-routemesh", path=str(Path(sys.executable).parent))
    assert plugin is not None, "the package installs the kubectl-routemesh entry point"
    env = {**os.environ, "PATH": f"{Path(plugin).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(control_plane.binaries.kubectl), "routemesh", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kubectl-routemesh {__version__}"
