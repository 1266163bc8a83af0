"""The Helm chart: it renders with the real helm, and its RBAC is exactly enough for the operator.

The RBAC test installs the chart's ServiceAccount, ClusterRole and binding into the real control
plane, runs the operator with that ServiceAccount's token (not the admin's), and checks that it
does its whole job, and that the role refuses what the operator never needs.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from routemesh_operator.injection import InjectionSettings, decide
from routemesh_testing.controlplane import REPO_ROOT, LocalControlPlane, free_port
from routemesh_testing.helm import Helm, third_party_crds
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import self_hosted_example
from routemesh_testing.operator import running_operator
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.locate()


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def test_the_chart_renders_its_crds_rbac_and_operator(helm: Helm):
    docs = helm.template("rm", "routemesh-system", include_crds=True)
    kinds = by_kind(docs)
    assert {crd["metadata"]["name"] for crd in kinds["CustomResourceDefinition"]} == {
        "routingpolicies.routemesh.dev",
        "modelbackends.routemesh.dev",
    }
    (deployment,) = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ROUTEMESH_OPERATOR_STANDALONE"] == "true"
    assert env["ROUTEMESH_OPERATOR_TOKEN_AUDIENCES"] == '["routemesh"]'
    # Sidecars reach the operator over TLS and trust the CA it publishes in their namespace.
    assert env["ROUTEMESH_OPERATOR_DISTRIBUTION_TLS"] == "true"
    # Its own metrics, on a named port of the pod and of the Service a ServiceMonitor selects.
    assert env["ROUTEMESH_OPERATOR_METRICS_PORT"] == "8080"
    assert {"name": "metrics", "containerPort": 8080} in container["ports"]
    (service,) = kinds["Service"]
    assert {"name": "metrics", "port": 8080, "targetPort": "metrics"} in service["spec"]["ports"]
    injection = json.loads(env["ROUTEMESH_OPERATOR_INJECTION"])
    assert injection["discovery_url"] == "https://rm-operator.routemesh-system.svc:9443"
    assert injection["discovery_ca_configmap"] == "routemesh-ca"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "routemesh-operator"
    # One replica needs no Lease: its only Role is for the webhook's certificate Secret.
    (certs_role,) = kinds["Role"]
    assert certs_role["rules"][1] == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["routemesh-webhook-certs"],
        "verbs": ["get", "update"],
    }
    (webhook,) = kinds["MutatingWebhookConfiguration"]
    assert [entry["name"] for entry in webhook["webhooks"]] == [
        "namespace.inject.routemesh.dev",
        "pod.inject.routemesh.dev",
    ]
    for entry in webhook["webhooks"]:
        assert entry["failurePolicy"] == "Ignore"
        assert entry["namespaceSelector"]["matchExpressions"][1]["values"] == [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "routemesh-system",
        ]
        assert entry["clientConfig"]["service"]["path"] == "/mutate-pods"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Several replicas elect a leader, and may touch only their own Lease.
    peered = by_kind(helm.template("rm", "routemesh-system", {"operator": {"replicas": 2}}))
    env = {
        e["name"]: e.get("value")
        for e in peered["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["ROUTEMESH_OPERATOR_STANDALONE"] == "false"
    (lease_role,) = [r for r in peered["Role"] if r["metadata"]["name"].endswith("-leader")]
    assert lease_role["metadata"]["namespace"] == "routemesh-system"
    assert {"resourceNames": ["routemesh-operator"], "verbs": ["get", "update"]}.items() <= (
        lease_role["rules"][1].items()
    )


def test_cert_manager_issues_the_webhook_certificate_when_chosen(helm: Helm):
    kinds = by_kind(helm.template("rm", "ops", {"webhook": {"certificates": "cert-manager"}}))
    (certificate,) = kinds["Certificate"]
    assert certificate["spec"]["dnsNames"][0] == "rm-operator.ops.svc"
    (webhook,) = kinds["MutatingWebhookConfiguration"]
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ops/rm-webhook"
    assert "Role" not in kinds  # the operator keeps no certificate Secret of its own
    (deployment,) = kinds["Deployment"]
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert volume["secret"]["secretName"] == "rm-webhook-certs"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's matchExpressions, evaluated the way the API server does."""
    for term in selector.get("matchExpressions", ()):
        key, operator, values = term["key"], term["operator"], term.get("values", ())
        present = key in labels
        held = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not held:
            return False
    return True


CHOICES = [None, "enabled", "true", "disabled", "false", "maybe", "Enabled", "TRUE"]


@pytest.mark.parametrize("namespace_choice", CHOICES)
def test_the_webhook_is_sent_exactly_the_pods_injection_would_inject(
    helm: Helm, namespace_choice: str | None
):
    # The selectors must never hide a pod that decide() would inject, never send one pod to
    # both entries, and never send a pod of a system or excluded namespace at all.
    values = {"webhook": {"excludedNamespaces": ["batch"]}}
    (webhook,) = by_kind(helm.template("rm", "routemesh-system", values))[
        "MutatingWebhookConfiguration"
    ]
    settings = InjectionSettings(
        operator_namespace="routemesh-system", excluded_namespaces=("batch",)
    )
    for namespace in ("apps", "kube-system", "routemesh-system", "batch"):
        namespace_labels = {"kubernetes.io/metadata.name": namespace}
        if namespace_choice is not None:
            namespace_labels["routemesh.dev/inject"] = namespace_choice
        for pod_choice in CHOICES:
            for annotation in (None, "enabled", "disabled"):
                pod_labels = {"app": "chat"}
                if pod_choice is not None:
                    pod_labels["routemesh.dev/inject"] = pod_choice
                sent = [
                    entry["name"]
                    for entry in webhook["webhooks"]
                    if selects(entry["namespaceSelector"], namespace_labels)
                    and selects(entry["objectSelector"], pod_labels)
                ]
                metadata: dict[str, Any] = {"labels": pod_labels}
                if annotation is not None:
                    metadata["annotations"] = {"routemesh.dev/inject": annotation}
                pod = {"metadata": metadata, "spec": {"containers": []}}
                injected = decide(pod, namespace, namespace_labels, settings).inject
                case = (namespace, namespace_choice, pod_choice, annotation, sent)
                assert len(sent) <= 1, case
                assert not injected or sent, case
                if namespace != "apps":
                    assert not sent, case


def test_values_the_schema_refuses_never_render(helm: Helm):
    with pytest.raises(RuntimeError, match=r"additional properties .replicaz. not allowed"):
        helm.template("rm", "routemesh-system", {"operator": {"replicaz": 2}})
    with pytest.raises(RuntimeError, match="logLevel"):
        helm.template("rm", "routemesh-system", {"operator": {"logLevel": "loud"}})


@pytest.fixture
def installed_rbac(helm: Helm, kubectl: Kubectl, namespace: str) -> Iterator[tuple[str, str]]:
    """The chart's ServiceAccount and RBAC, installed with a release of its own."""
    release = f"rm-{secrets.token_hex(3)}"
    docs = [
        doc
        for doc in helm.template(release, namespace)
        if doc["kind"]
        in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    kubectl.apply(yaml.safe_dump_all(docs))
    try:
        yield release, "routemesh-operator"
    finally:
        for kind in ("clusterrolebinding", "clusterrole"):
            kubectl.run("delete", kind, f"{release}-operator", "--ignore-not-found", check=False)


def token_kubeconfig(plane: LocalControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig with the admin's server and CA, but the ServiceAccount's token."""
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    assert base64.b64decode(cluster["certificate-authority-data"])  # the CA is carried over
    return path


def can_i(kubectl: Kubectl, account: str, verb: str, resource: str, namespace: str) -> bool:
    # "kind/status" asks about a subresource; "kind/name" about one object.
    kind, _, rest = resource.partition("/")
    extra: list[str] = []
    if rest == "status":
        resource, extra = kind, ["--subresource=status"]
    result = kubectl.run(
        "auth", "can-i", verb, resource, *extra, "-n", namespace, f"--as={account}", check=False
    )
    return result.stdout.strip() == "yes"


def test_the_operator_does_its_whole_job_with_exactly_the_charts_rbac(
    control_plane: LocalControlPlane,
    kubectl: Kubectl,
    namespace: str,
    installed_rbac: tuple[str, str],
    tmp_path: Path,
):
    _, account = installed_rbac
    token = kubectl.run("create", "token", account, "-n", namespace, "--duration", "1h").stdout
    kubeconfig = token_kubeconfig(control_plane, token.strip(), tmp_path / "kubeconfig")
    setup = self_hosted_example("10.3.0.1")
    with running_operator(
        control_plane,
        kubeconfig=str(kubeconfig),
        distribution_host="127.0.0.1",
        distribution_port=free_port(),
    ):
        kubectl.apply(yaml.safe_dump_all(setup), namespace=namespace)
        status = poll_until(
            lambda: kubectl.get("routingpolicy", "self-hosted-first", namespace=namespace).get(
                "status", {}
            ),
            lambda s: any(
                c["type"] == "Programmed" and c["status"] == "True" for c in s.get("conditions", ())
            ),
            timeout=60,
        )
        assert "routeTableVersion" in status, status
        # It wrote the table's ConfigMap and created the vLLM Deployment and Service.
        for kind, name in (
            ("configmap", "routemesh-rt-self-hosted-first"),
            ("deployment", "llama-8b"),
            ("service", "llama-8b"),
        ):
            assert kubectl.run("get", kind, name, "-n", namespace, check=False).returncode == 0
        backend = kubectl.get("modelbackend", "llama-8b", namespace=namespace)["status"]
        assert backend["readyEndpoints"] == 1
    who = f"system:serviceaccount:{namespace}:{account}"
    for verb, resource in (
        ("create", "tokenreviews.authentication.k8s.io"),
        ("patch", "routingpolicies.routemesh.dev/status"),
        ("watch", "secrets"),
        ("update", "secrets/routemesh-webhook-certs"),  # the webhook's own certificates
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/routemesh-sidecar-injector",
        ),
        ("get", "namespaces"),
    ):
        assert can_i(kubectl, who, verb, resource, namespace), (verb, resource)
    for verb, resource in (
        ("get", "secrets"),  # key names come from the watch; no single Secret is ever read
        ("delete", "configmaps"),
        ("patch", "routingpolicies.routemesh.dev"),  # never the spec, only the status
        ("create", "pods"),
        ("delete", "deployments.apps"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("update", "secrets/another-secret"),
        ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses"),
    ):
        assert not can_i(kubectl, who, verb, resource, namespace), (verb, resource)
    # It creates its certificate Secret in its own namespace, and nowhere else.
    assert can_i(kubectl, who, "create", "secrets", namespace)
    assert not can_i(kubectl, who, "create", "secrets", "default")


def test_the_grafana_dashboard_is_a_configmap_only_when_asked_and_the_api_server_takes_it(
    helm: Helm, kubectl: Kubectl, namespace: str
):
    assert "ConfigMap" not in by_kind(helm.template("rm", namespace)), "off by default"
    values = {"monitoring": {"grafanaDashboard": {"enabled": True, "namespace": namespace}}}
    (configmap,) = by_kind(helm.template("rm", "routemesh-system", values))["ConfigMap"]
    assert configmap["metadata"]["namespace"] == namespace, "it goes where Grafana looks"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["routemesh-sidecars.json"])
    docs = REPO_ROOT / "docs" / "monitoring" / "routemesh-dashboard.json"
    assert dashboard == json.loads(docs.read_text())
    applied = kubectl.run("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(configmap))
    assert "created (server dry run)" in applied.stdout


def test_several_replicas_get_spread_over_nodes_and_a_disruption_budget(helm: Helm):
    single = by_kind(helm.template("rm", "routemesh-system"))
    assert "PodDisruptionBudget" not in single, "one replica: a budget would block every drain"
    assert "affinity" not in single["Deployment"][0]["spec"]["template"]["spec"]
    soft = by_kind(helm.template("rm", "routemesh-system", {"operator": {"replicas": 3}}))
    (budget,) = soft["PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1
    pod_spec = soft["Deployment"][0]["spec"]["template"]["spec"]
    selector = soft["Deployment"][0]["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["selector"]["matchLabels"] == selector
    [preferred] = pod_spec["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    hard = by_kind(
        helm.template("rm", "ops", {"operator": {"replicas": 2, "podAntiAffinity": "hard"}})
    )
    anti = hard["Deployment"][0]["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert (
        anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"]
        == selector
    )


def test_the_notes_say_how_to_label_a_namespace_check_status_and_find_traces(
    helm: Helm, control_plane: LocalControlPlane
):
    chart = str(REPO_ROOT / "charts" / "routemesh")
    kubeconfig = f"--kubeconfig={control_plane.kubeconfig}"  # helm asks the API server's version
    notes = helm.run("install", "rm", chart, "-n", "ops", "--dry-run=client", kubeconfig).stdout
    assert "kubectl label namespace NAME routemesh.dev/inject=enabled" in notes
    assert "kubectl get rp,mb -A" in notes
    assert "Set sidecar.otlpEndpoint" in notes
    traced = helm.run(
        "install",
        "rm",
        chart,
        "-n",
        "ops",
        "--dry-run=client",
        kubeconfig,
        "--set",
        "sidecar.otlpEndpoint=http://collector:4318",
    ).stdout
    assert "send them over OTLP/HTTP to\n   http://collector:4318" in traced


@pytest.fixture(scope="module")
def third_party_kinds(kubectl: Kubectl) -> list[str]:
    """The real CRDs of the Prometheus Operator and cert-manager kinds the chart may render."""
    names = []
    for path in third_party_crds():
        kubectl.run("apply", "--server-side", "-f", str(path))
        names.append(yaml.safe_load(path.read_text())["metadata"]["name"])
    for name in names:
        kubectl.run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return names


MONITORING_ON = {
    "grafanaDashboard": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
    "podMonitor": {"enabled": True, "interval": "15s"},
}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"monitoring": MONITORING_ON, "operator": {"replicas": 2}},
        {"webhook": {"certificates": "cert-manager", "failurePolicy": "Fail"}},
    ],
    ids=["defaults", "monitoring-and-replicas", "cert-manager"],
)
def test_the_rendered_chart_applies_with_a_server_side_dry_run(
    helm: Helm,
    kubectl: Kubectl,
    namespace: str,
    values: dict[str, Any],
    third_party_kinds: list[str],
):
    assert len(third_party_kinds) == 4
    docs = helm.template("rm", namespace, values, include_crds=True)
    applied = kubectl.run(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs)
    )
    lines = applied.stdout.splitlines()
    assert len(lines) == len(docs), applied.stdout
    kinds = {doc["kind"] for doc in docs}
    if values.get("monitoring"):
        assert {"ServiceMonitor", "PodMonitor", "ConfigMap"} <= kinds
    if values.get("webhook", {}).get("certificates") == "cert-manager":
        assert {"Certificate", "Issuer"} <= kinds
    assert all(line.endswith("(server dry run)") for line in lines), applied.stdout


def test_a_disruption_budget_that_would_let_every_replica_go_is_refused(helm: Helm):
    with pytest.raises(RuntimeError, match=r"maxUnavailable must be below operator\.replicas"):
        helm.template("rm", "ops", {"operator": {"replicas": 2, "maxUnavailable": 2}})


def test_a_span_batch_larger_than_the_sidecars_queue_is_refused(helm: Helm):
    with pytest.raises(RuntimeError, match=r"otlpBatchSpans must not exceed .*otlpMaxQueuedSpans"):
        helm.template(
            "rm", "ops", {"sidecar": {"otlpBatchSpans": 4096, "otlpMaxQueuedSpans": 1024}}
        )


def test_the_sidecars_export_settings_reach_the_operators_injection_settings(helm: Helm):
    values: dict[str, Any] = {"otlpEndpoint": "http://collector:4318", "otlpCompression": "gzip"}
    values |= {"otlpBatchSpans": 256, "otlpScheduleDelayMs": 200, "otlpTimeoutMs": 3000}
    docs = helm.template("rm", "ops", {"sidecar": values})
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    injection = InjectionSettings.model_validate_json(env["ROUTEMESH_OPERATOR_INJECTION"])
    assert injection.otlp_endpoint == "http://collector:4318"
    assert (injection.otlp_compression, injection.otlp_timeout_ms) == ("gzip", 3000)
    assert (injection.otlp_batch_spans, injection.otlp_schedule_delay_ms) == (256, 200)
    assert injection.otlp_max_queued_spans == 8192


def test_the_export_headers_secret_reaches_the_operators_injection_settings(helm: Helm):
    values = {"otlpEndpoint": "https://otlp.example.com", "otlpHeadersSecret": "otlp-auth"}
    docs = helm.template("rm", "ops", {"sidecar": values | {"otlpHeadersSecretKey": "api"}})
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    injection = InjectionSettings.model_validate_json(env["ROUTEMESH_OPERATOR_INJECTION"])
    assert (injection.otlp_headers_secret, injection.otlp_headers_secret_key) == (
        "otlp-auth",
        "api",
    )
    plain = helm.template("rm", "ops", {"sidecar": {"otlpEndpoint": "https://otlp.example.com"}})
    [deployment] = [d for d in plain if d["kind"] == "Deployment"]
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert (
        InjectionSettings.model_validate_json(
            env["ROUTEMESH_OPERATOR_INJECTION"]
        ).otlp_headers_secret
        is None
    )


def test_a_headers_secret_without_a_collector_is_refused(helm: Helm):
    with pytest.raises(RuntimeError, match=r"otlpHeadersSecret needs sidecar\.otlpEndpoint"):
        helm.template("rm", "ops", {"sidecar": {"otlpHeadersSecret": "otlp-auth"}})


def test_a_headers_secret_name_kubernetes_would_refuse_is_refused_by_the_schema(helm: Helm):
    with pytest.raises(RuntimeError, match="otlpHeadersSecret"):
        helm.template(
            "rm",
            "ops",
            {"sidecar": {"otlpEndpoint": "http://c:4318", "otlpHeadersSecret": "Otlp_Auth"}},
        )


def test_the_pre_delete_hook_is_an_exact_copy_so_applying_template_output_changes_nothing(
    helm: Helm, kubectl: Kubectl, namespace: str
):
    # GitOps tools and `helm template | kubectl apply` apply hooks as plain objects, after the
    # manifests: the copy must leave the live configuration as the real one made it.
    docs = helm.template("rm", namespace, hooks=True)
    real, hook = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert "helm.sh/hook" not in (real["metadata"].get("annotations") or {})
    assert hook["webhooks"] == real["webhooks"]
    assert hook["metadata"]["name"] == real["metadata"]["name"]
