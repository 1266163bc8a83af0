"""The chart's life in a real control plane: install, the operator down, upgrade, uninstall.

Each test installs the chart with the real helm into the local control plane, and runs the real
operator (in-process, as the Deployment would run it) against the objects the chart created. Two
things differ from a cluster, both because nothing here runs pods or kube-proxy: the Deployment's
pods never start (the test runs the operator instead, with the chart's names), and the API
server cannot reach the webhook's Service, so the test points the configuration's `clientConfig`
at the operator's 127.0.0.1 URL. The selectors, failure policy, hooks and everything else are as
the chart rendered them.
"""

from __future__ import annotations

import io
import json
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from routemesh_operator.cli import errors
from routemesh_operator.cli.main import main
from routemesh_testing.controlplane import REPO_ROOT, LocalControlPlane, free_port
from routemesh_testing.fakes import OPENAI_KEY, FakeOpenAI
from routemesh_testing.helm import CHART, Helm
from routemesh_testing.kubectl import Kubectl, KubectlError
from routemesh_testing.manifests import chat_setup, wait_for_ca_bundle, wait_for_table_version
from routemesh_testing.operator import injecting_settings, running_operator
from routemesh_testing.podrun import InjectedSidecar
from routemesh_testing.pods import create_pod, make_namespace, sidecar_of
from routemesh_testing.serving import ServerThread
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(300)

CONFIGURATION = "routemesh-sidecar-injector"
PREVIOUS_CHART = REPO_ROOT / "tests" / "fixtures" / "charts" / "routemesh-0.1.0.tgz"
OPT_IN = {"routemesh.dev/inject": "enabled"}
CRDS = ("routingpolicies.routemesh.dev", "modelbackends.routemesh.dev")


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.locate()


@dataclass
class Release:
    """One installed release, its namespaces, and the operator that serves it."""

    helm: Helm
    plane: LocalControlPlane
    kubectl: Kubectl
    cert_dir: Path
    name: str = field(default_factory=lambda: f"rm{secrets.token_hex(2)}")
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    webhook_port: int = field(default_factory=free_port)
    distribution_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    @property
    def namespace(self) -> str:
        return f"t-rel-{self.suffix}"

    @property
    def labelled(self) -> str:
        return f"t-apps-{self.suffix}"

    @property
    def plain(self) -> str:
        return f"t-other-{self.suffix}"

    def run(self, *args: str) -> str:
        kubeconfig = f"--kubeconfig={self.plane.kubeconfig}"
        return self.helm.run(*args, "-n", self.namespace, kubeconfig).stdout

    def install(self, chart: Path | str = CHART, *values: str) -> None:
        sets = [arg for value in values for arg in ("--set", value)]
        self.run("install", self.name, str(chart), *sets)

    def upgrade(self, chart: Path | str = CHART, *values: str) -> None:
        sets = [arg for value in values for arg in ("--set", value)]
        self.run("upgrade", self.name, str(chart), *sets)

    def point_webhook_at_operator(self) -> None:
        """The one change the chart's objects need here: a URL, since no Service is reachable."""
        configuration = self.kubectl.get("mutatingwebhookconfiguration", CONFIGURATION)
        url = f"https://127.0.0.1:{self.webhook_port}/mutate-pods"
        patch = [
            {
                "op": "replace",
                "path": f"/webhooks/{index}/clientConfig",
                "value": {
                    "url": url,
                    **{k: v for k, v in entry["clientConfig"].items() if k == "caBundle"},
                },
            }
            for index, entry in enumerate(configuration["webhooks"])
        ]
        self.kubectl.run(
            "patch", "mutatingwebhookconfiguration", CONFIGURATION, "--type=json",
            "-p", json.dumps(patch),
        )  # fmt: skip

    def operator(self, *, peered: bool = False) -> AbstractContextManager[Any]:
        """The operator with the chart's names: its namespace, Secret and configuration.

        `peered` runs it as one of several replicas would: it leads on the chart's Lease.
        """
        settings = injecting_settings(
            namespace=self.namespace,
            webhook_configuration=CONFIGURATION,
            webhook_port=self.webhook_port,
            distribution_port=self.distribution_port,
            cert_dir=self.cert_dir,
            tls=True,
        )
        return running_operator(
            self.plane, **settings, standalone=not peered, metrics_port=self.metrics_port
        )

    def metrics(self) -> dict[tuple[str, str], float]:
        """The operator's own metrics, scraped as Prometheus would: (name, labels) -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, json.dumps(sample.labels, sort_keys=True)): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def status(self, *args: str) -> tuple[int, str]:
        """`routemesh status` with the admin's kubeconfig: its exit code and output."""
        out = io.StringIO()
        code = main(["status", "--kubeconfig", str(self.plane.kubeconfig), *args], stdout=out)
        return code, out.getvalue()


@pytest.fixture
def release(
    helm: Helm, control_plane: LocalControlPlane, kubectl: Kubectl, tmp_path: Path
) -> Iterator[Release]:
    made = Release(helm, control_plane, kubectl, tmp_path / "certs")
    make_namespace(kubectl, made.namespace, {})
    make_namespace(kubectl, made.labelled, OPT_IN)
    make_namespace(kubectl, made.plain, {})
    try:
        yield made
    finally:
        # Never leave a configuration behind that points at nothing, whatever the test did.
        made.helm.run(
            "uninstall", made.name, "-n", made.namespace, "--ignore-not-found",
            f"--kubeconfig={control_plane.kubeconfig}",
        )  # fmt: skip
        kubectl.run("delete", "mutatingwebhookconfiguration", CONFIGURATION, check=False)


def test_with_the_operator_stopped_a_pod_that_opts_in_starts_without_a_sidecar_and_is_listed(
    release: Release, kubectl: Kubectl
):
    release.install()
    release.point_webhook_at_operator()
    with release.operator():
        wait_for_ca_bundle(kubectl, CONFIGURATION)
        # The chart's selectors send both kinds of opt-in, and nothing else.
        assert sidecar_of(create_pod(kubectl, release.labelled)) is not None
        assert sidecar_of(create_pod(kubectl, release.plain, labels=OPT_IN)) is not None
        assert sidecar_of(create_pod(kubectl, release.plain)) is None
        # The pod nobody opts in never reached the webhook: two injections, and no skip.
        scraped = release.metrics()
        assert scraped[("routemesh_operator_admissions_total", '{"decision": "injected"}')] == 2
        assert scraped[("routemesh_operator_admissions_total", '{"decision": "skipped"}')] == 0
        assert scraped[("routemesh_operator_leader", "{}")] == 1
        expiry = "routemesh_operator_webhook_certificate_expiry_timestamp_seconds"
        assert scraped[(expiry, "{}")] > time.time() + 86400
    # The operator is stopped: nothing answers the webhook. failurePolicy Ignore lets the pod of
    # the labelled namespace be created, without a sidecar.
    pod = create_pod(kubectl, release.labelled, labels={"app": "chat"})
    assert sidecar_of(pod) is None
    assert "routemesh.dev/injected" not in (pod["metadata"].get("annotations") or {})
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    # What the user sees: `routemesh status` names the pod, says why, and exits 1.
    code, table = release.status("-n", release.labelled)
    assert code == errors.FINDING, table
    assert "NOT INJECTED" in table
    assert pod["metadata"]["name"] in table
    assert "kubectl rollout restart" in table
    code, document = release.status("-n", release.labelled, "-o", "json")
    (listed,) = json.loads(document)["notInjected"]
    assert listed["name"] == pod["metadata"]["name"]
    assert listed["why"] == (
        "its labels and its namespace's select it for webhook namespace.inject.routemesh.dev"
    )
    # A namespace that chose nothing has nothing to report.
    assert release.status("-n", release.plain)[0] == errors.OK


def test_with_fail_only_pods_that_opt_in_wait_for_the_operator(release: Release, kubectl: Kubectl):
    release.install(CHART, "webhook.failurePolicy=Fail")
    release.point_webhook_at_operator()  # nothing serves that URL: the operator is down
    with pytest.raises(KubectlError) as refused:
        create_pod(kubectl, release.labelled)
    assert 'failed calling webhook "namespace.inject.routemesh.dev"' in str(refused.value)
    with pytest.raises(KubectlError) as refused:
        create_pod(kubectl, release.plain, labels=OPT_IN)
    assert 'failed calling webhook "pod.inject.routemesh.dev"' in str(refused.value)
    # Every other pod is never sent to the webhook, so a dead one cannot block it.
    assert sidecar_of(create_pod(kubectl, release.plain)) is None
    opted_out = {"routemesh.dev/inject": "disabled"}
    assert sidecar_of(create_pod(kubectl, release.labelled, labels=opted_out)) is None
    # The operator's own namespace stays open, so the operator itself can always start.
    assert sidecar_of(create_pod(kubectl, release.namespace, labels=OPT_IN)) is None
    # Once it answers, the waiting pods are admitted (with their sidecar).
    with release.operator():
        wait_for_ca_bundle(kubectl, CONFIGURATION)
        assert sidecar_of(create_pod(kubectl, release.labelled)) is not None


def list_revisions(api_client: Any, namespace: str) -> dict[str, tuple[Any, str]]:
    """For each kind, its list call and the revision it was listed at, to watch from."""
    from kubernetes import client

    calls: dict[str, Callable[..., Any]] = {
        "MutatingWebhookConfiguration": client.AdmissionregistrationV1Api(
            api_client
        ).list_mutating_webhook_configuration,
        "Service": partial(client.CoreV1Api(api_client).list_namespaced_service, namespace),
        "Deployment": partial(client.AppsV1Api(api_client).list_namespaced_deployment, namespace),
    }
    return {kind: (call, call().metadata.resource_version) for kind, call in calls.items()}


def deletion_revisions(listed: dict[str, tuple[Any, str]]) -> dict[str, int]:
    """The etcd revision at which each object was deleted since it was listed.

    A watch from a list's revision replays every event after it, so nothing races the uninstall.
    A deleted object's resourceVersion is the revision of its deletion, one sequence over every
    kind (our own etcd), so the numbers order deletions of different kinds.
    """
    from kubernetes import watch

    found: dict[str, int] = {}
    for kind, (call, revision) in listed.items():
        for event in watch.Watch().stream(call, resource_version=revision, timeout_seconds=2):  # type: ignore[no-untyped-call]
            if event["type"] == "DELETED":
                meta = event["object"].metadata
                found[f"{kind}/{meta.name}"] = int(meta.resource_version)
    return found


def routemesh_objects(kubectl: Kubectl, release: Release) -> list[str]:
    """Every object of the release, or made by its operator, in any namespace or none."""
    kinds = (
        "deployments,services,serviceaccounts,configmaps,secrets,leases,roles,rolebindings,"
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,poddisruptionbudgets,"
        "customresourcedefinitions"
    )
    found = kubectl.get(kinds, "-A")["items"]
    ours = []
    for item in found:
        meta = item["metadata"]
        labels = meta.get("labels") or {}
        by_release = labels.get("app.kubernetes.io/instance") == release.name
        by_operator = labels.get("app.kubernetes.io/managed-by") == "routemesh-operator"
        named = meta["name"].startswith(("routemesh", release.name)) or meta["name"] in CRDS
        in_ours = meta.get("namespace") in (release.namespace, release.labelled, None)
        if by_release or by_operator or (named and in_ours):
            ours.append(f"{item['kind']}/{meta.get('namespace', '')}/{meta['name']}")
    return sorted(ours)


def test_helm_uninstall_deletes_the_webhook_first_and_leaves_only_the_crds(
    release: Release, kubectl: Kubectl, kube_api_client: Any
):
    release.install(CHART, "operator.replicas=2")
    release.point_webhook_at_operator()
    with ServerThread(FakeOpenAI(name="upstream", api_key=OPENAI_KEY).app) as provider:
        docs = chat_setup(url=provider.url + "/v1", api_key=OPENAI_KEY)
        with release.operator(peered=True):
            wait_for_ca_bundle(kubectl, CONFIGURATION)
            kubectl.apply(yaml.safe_dump_all(docs), namespace=release.labelled)
            wait_for_table_version(kubectl, release.labelled)
            # The objects the operator writes at run time, which helm never saw.
            poll_until(
                lambda: (
                    kubectl.run(
                        "get", "configmap", "routemesh-ca", "-n", release.labelled, check=False
                    ).returncode
                ),
                lambda code: code == 0,
                timeout=30,
            )
    before = routemesh_objects(kubectl, release)
    assert f"Secret/{release.namespace}/routemesh-webhook-certs" in before
    assert f"Lease/{release.namespace}/routemesh-operator" in before
    assert f"ConfigMap/{release.labelled}/routemesh-ca" in before
    assert f"Deployment/{release.namespace}/{release.name}-operator" in before

    listed = list_revisions(kube_api_client, release.namespace)
    release.run("uninstall", release.name)
    deleted = deletion_revisions(listed)
    webhook = deleted[f"MutatingWebhookConfiguration/{CONFIGURATION}"]
    assert webhook < deleted[f"Service/{release.name}-operator"], deleted
    assert webhook < deleted[f"Deployment/{release.name}-operator"], deleted

    # The garbage collector deletes what the operator made once its owner is gone; what stays
    # is the CRDs (helm never deletes them; docs/install.md says how) and the user's policy
    # with the route table it owns, which go with the CRDs.
    def left() -> list[str]:
        return routemesh_objects(kubectl, release)

    kept = [
        "CustomResourceDefinition//modelbackends.routemesh.dev",
        "CustomResourceDefinition//routingpolicies.routemesh.dev",
    ]
    remaining = poll_until(
        left, lambda objects: [o for o in objects if not o.startswith("ConfigMap/")] == kept,
        timeout=60,
    )  # fmt: skip
    assert [o for o in remaining if not o.startswith("ConfigMap/")] == kept, remaining
    tables = [o for o in remaining if o.startswith("ConfigMap/")]
    assert tables == [f"ConfigMap/{release.labelled}/routemesh-rt-chat"], remaining
    table = kubectl.get("configmap", "routemesh-rt-chat", namespace=release.labelled)
    assert [o["kind"] for o in table["metadata"]["ownerReferences"]] == ["RoutingPolicy"]
    install_docs = (REPO_ROOT / "docs" / "install.md").read_text()
    assert "kubectl delete crd routingpolicies.routemesh.dev modelbackends.routemesh.dev" in (
        install_docs
    )


def chat(sidecar: InjectedSidecar) -> str:
    with openai.OpenAI(
        base_url=sidecar.app_env()["OPENAI_BASE_URL"], api_key="app", max_retries=0, timeout=20
    ) as client:
        answer = client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}]
        )
    return answer.choices[0].message.content or ""


def sidecar_pod(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    ports = {"routemesh.dev/sidecar-port": str(free_port())}
    ports["routemesh.dev/sidecar-admin-port"] = str(free_port())
    return create_pod(kubectl, namespace, labels={"app": "chat"}, annotations=ports)


def test_helm_upgrade_from_the_previous_chart_keeps_every_policy_and_sidecar_working(
    release: Release, kubectl: Kubectl, tmp_path: Path
):
    release.install(PREVIOUS_CHART)
    release.point_webhook_at_operator()
    with (
        ServerThread(FakeOpenAI(name="upstream", api_key=OPENAI_KEY).app) as provider,
        ExitStack() as pods,
    ):
        docs = chat_setup(url=provider.url + "/v1", api_key=OPENAI_KEY)
        with release.operator():
            bundle = wait_for_ca_bundle(kubectl, CONFIGURATION)
            kubectl.apply(yaml.safe_dump_all(docs), namespace=release.labelled)
            version = wait_for_table_version(kubectl, release.labelled)
            old_pod = sidecar_pod(kubectl, release.labelled)
            assert sidecar_of(old_pod) is not None
            old = pods.enter_context(InjectedSidecar(kubectl, old_pod, tmp_path / "old"))
            assert "upstream" in chat(old)
        # The operator's rollout to the new pod template, with the upgrade while it is down, so
        # that nothing but the chart can have put the CA into the new entries. Meanwhile the old
        # sidecar routes on its last table.
        release.upgrade(CHART)
        upgraded = kubectl.get("mutatingwebhookconfiguration", CONFIGURATION)
        assert [w["name"] for w in upgraded["webhooks"]] == [
            "namespace.inject.routemesh.dev",
            "pod.inject.routemesh.dev",
        ]
        assert {w["clientConfig"].get("caBundle") for w in upgraded["webhooks"]} == {bundle}
        release.point_webhook_at_operator()
        assert "upstream" in chat(old)
        with release.operator():
            status = kubectl.get("routingpolicy", "chat", namespace=release.labelled)["status"]
            assert status["routeTableVersion"] == version, "the same inputs compile the same"
            new_pod = sidecar_pod(kubectl, release.labelled)
            assert sidecar_of(new_pod) is not None
            new = pods.enter_context(InjectedSidecar(kubectl, new_pod, tmp_path / "new"))
            assert "upstream" in chat(new)
            assert "upstream" in chat(old)
            synced = poll_until(
                lambda: kubectl.get("routingpolicy", "chat", namespace=release.labelled)[
                    "status"
                ].get("sidecars", {}),
                lambda sidecars: sidecars.get("synced", 0) >= 2,
                timeout=30,
            )
            assert synced.get("rejected", 0) == 0, synced
            # The certificate Secret chart 0.1.0 left unowned now belongs to the configuration.
            secret = kubectl.get("secret", "routemesh-webhook-certs", namespace=release.namespace)
            owners = secret["metadata"].get("ownerReferences") or []
            assert [o["name"] for o in owners] == [CONFIGURATION]
