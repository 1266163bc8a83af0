"""`make demo`: the whole of RouteMesh on this machine, on the embedded default, in a minute.

It starts the local control plane (kube-apiserver, etcd and the controller manager, built by
`make controlplane`), an OTLP receiver, and two fake model providers (`flaky`, which fails every
request, and `steady`), then runs the operator with its webhook and applies a namespace labelled
for injection, two ModelBackends, a RoutingPolicy that tries `flaky` first and falls back to
`steady`, and a Pod. The API server has the webhook inject the sidecar into the Pod; the demo
runs that sidecar as a process (there is no kubelet), sends requests through it with the official
OpenAI client, and prints the answers, what `kubectl get rp,mb` says, and the traces.
Everything stops when it ends (or at Ctrl-C), and nothing is left behind.

Demo support only: product code never imports it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import openai
import yaml

from routemesh_operator.injection.settings import InjectionSettings
from routemesh_testing.controlplane import (
    REPO_ROOT,
    Binaries,
    ControlPlaneSettings,
    LocalControlPlane,
    free_port,
)
from routemesh_testing.fakes import OPENAI_KEY, FakeOpenAI
from routemesh_testing.faultproxy import FaultProxy, Status
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import injection_webhook
from routemesh_testing.operator import running_operator
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.podrun import InjectedSidecar
from routemesh_testing.serving import ServerThread
from routemesh_testing.waiting import poll_until

DEMO = "demo"
OPERATOR_NAMESPACE = "routemesh-system"
WEBHOOK = "routemesh-demo-injector"


def out(text: str) -> None:
    """Print to the terminal.

    kopf's in-process runner (click's test runner) swaps sys.stdout for a buffer while the
    operator runs, so the demo writes to the process's real stdout.
    """
    stream = sys.__stdout__
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()


def say(text: str) -> None:
    """One step of the story."""
    out(f"\n==> {text}")


def manifests(flaky_url: str, steady_url: str, port: int, admin: int) -> list[dict[str, Any]]:
    """What a user would apply: backends, a policy, a Pod."""
    model = {
        "contextWindow": 128000,
        "capabilities": ["Tools"],
        "qualityTier": "Standard",
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "provider-key"},
            "stringData": {"api-key": OPENAI_KEY},
        },
        *(
            {
                "apiVersion": "routemesh.dev/v1alpha1",
                "kind": "ModelBackend",
                "metadata": {"name": name},
                "spec": {
                    "provider": "OpenAICompatible",
                    "endpoint": {"url": url},
                    "credentials": {"secretRef": {"name": "provider-key", "key": "api-key"}},
                    "models": [
                        {
                            "name": "m",
                            **model,
                            "pricing": {"inputPerMillion": price, "outputPerMillion": price},
                        }
                    ],
                },
            }
            for name, url, price in (("flaky", flaky_url, "0.10"), ("steady", steady_url, "1.00"))
        ),
        {
            "apiVersion": "routemesh.dev/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "chat"},
            "spec": {
                "selector": {"matchLabels": {"app": "chat"}},
                "defaults": {
                    "retry": {"attempts": 1},
                    "circuitBreaker": {"consecutiveFailures": 2, "baseOpenTime": "60s"},
                },
                "routes": [
                    {
                        "name": "chat",
                        "strategy": {"type": "Fallback"},
                        "targets": [
                            {"backend": "flaky", "model": "m"},
                            {"backend": "steady", "model": "m"},
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "chat-app",
                "labels": {"app": "chat"},
                "annotations": {
                    "routemesh.dev/sidecar-port": str(port),
                    "routemesh.dev/sidecar-admin-port": str(admin),
                },
            },
            "spec": {"containers": [{"name": "app", "image": "example/chat-app:1"}]},
        },
    ]


@contextmanager
def control_plane(workdir: Path) -> Iterator[LocalControlPlane]:
    """The local control plane with the RouteMesh CRDs."""
    settings = ControlPlaneSettings()
    plane = LocalControlPlane(Binaries.locate(settings), workdir, settings)
    plane.start(crds=sorted((REPO_ROOT / "crds").glob("*.yaml")))
    try:
        yield plane
    finally:
        plane.stop()


def namespaces(kubectl: Kubectl) -> None:
    """The demo namespace (labelled for injection) and the operator's."""
    for name, labels in ((DEMO, {"routemesh.dev/inject": "enabled"}), (OPERATOR_NAMESPACE, {})):
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }
        kubectl.apply(yaml.safe_dump(body))
    poll_until(
        lambda: kubectl.run("get", "serviceaccount", "default", "-n", DEMO, check=False),
        lambda result: result.returncode == 0,
    )


def ask(base_url: str, count: int) -> None:
    """Requests through the sidecar, as the app would send them."""
    with openai.OpenAI(base_url=base_url, api_key="ignored", max_retries=0, timeout=20) as client:
        for index in range(count):
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": f"question {index + 1}"}]
            )
            answer = raw.parse().choices[0].message.content
            out(
                f"    {index + 1}. {answer!r}  backend={raw.headers['x-routemesh-backend']}"
                f" attempts={raw.headers['x-routemesh-attempts']}"
                f" cost=${raw.headers['x-routemesh-cost-usd']}"
            )


def show_traces(receiver: OTLPReceiver) -> None:
    """A few route spans and what they say about the decision."""
    routes = receiver.wait_for(lambda s: s.name.startswith("route"), timeout=15)
    for span in routes[:3]:
        attempts = [s for s in receiver.trace(span.trace_id) if s is not span]
        interesting = {
            k: v
            for k, v in span.attributes.items()
            if k.startswith(("routemesh.route", "routemesh.chosen", "routemesh.fallback", "gen_ai"))
        }
        out(f"    trace {span.trace_id[:12]}: {span.name} with {len(attempts)} attempt span(s)")
        for key, value in sorted(interesting.items())[:8]:
            out(f"        {key} = {value}")


def run(hold: bool) -> None:
    """The demo, start to end; everything it started stops when it returns."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="routemesh-demo-")))
        say("starting the local control plane (kube-apiserver, etcd, controller manager)")
        plane = stack.enter_context(control_plane(workdir / "controlplane"))
        kubectl = plane.kubectl()
        say("starting an OTLP receiver and two fake providers: `flaky` (always 503), `steady`")
        receiver = OTLPReceiver()
        receiver.bind(stack.enter_context(ServerThread(receiver.app, name="otlp")))
        steady = stack.enter_context(ServerThread(FakeOpenAI("steady", OPENAI_KEY).app))
        flaky_fake = stack.enter_context(ServerThread(FakeOpenAI("flaky", OPENAI_KEY).app))
        faults = FaultProxy(flaky_fake.url)
        faults.set_fault(Status(503), paths=("/chat/completions",))
        flaky = stack.enter_context(ServerThread(faults.app, name="flaky"))
        namespaces(kubectl)
        webhook_port, distribution_port = free_port(), free_port()
        kubectl.apply(yaml.safe_dump(injection_webhook(WEBHOOK, webhook_port, [DEMO])))
        stack.callback(kubectl.run, "delete", "mutatingwebhookconfiguration", WEBHOOK, check=False)
        say("starting the operator (compiler, distribution, webhook with its own certificates)")
        stack.enter_context(
            running_operator(
                plane,
                namespace=OPERATOR_NAMESPACE,
                webhook_enabled=True,
                webhook_host="127.0.0.1",
                webhook_port=webhook_port,
                webhook_extra_hosts=["127.0.0.1"],
                webhook_configuration=WEBHOOK,
                webhook_cert_dir=str(workdir / "webhook"),
                distribution_host="127.0.0.1",
                distribution_port=distribution_port,
                injection=InjectionSettings(
                    operator_namespace=OPERATOR_NAMESPACE,
                    discovery_url=f"http://127.0.0.1:{distribution_port}",
                    otlp_endpoint=receiver.endpoint.removesuffix("/v1/traces"),
                ),
            )
        )
        poll_until(
            lambda: kubectl.get("mutatingwebhookconfiguration", WEBHOOK)["webhooks"][0][
                "clientConfig"
            ].get("caBundle"),
            bool,
            timeout=60,
        )
        say("kubectl apply: two ModelBackends, a RoutingPolicy (flaky, then steady) and a Pod")
        port, admin = free_port(), free_port()
        docs = manifests(flaky.url + "/v1", steady.url + "/v1", port, admin)
        kubectl.apply(yaml.safe_dump_all(docs[:-1]), namespace=DEMO)
        poll_until(
            lambda: kubectl.get("routingpolicy", "chat", namespace=DEMO).get("status", {}),
            lambda status: "routeTableVersion" in status,
            timeout=60,
        )
        kubectl.apply(yaml.safe_dump(docs[-1]), namespace=DEMO)
        pod = kubectl.get("pod", "chat-app", namespace=DEMO)
        containers = [c["name"] for c in pod["spec"].get("initContainers") or ()]
        out(f"    the webhook injected: initContainers={containers}")
        say("running the injected sidecar as a process (there is no kubelet here)")
        sidecar = stack.enter_context(InjectedSidecar(kubectl, pod, workdir / "pod"))
        base_url = sidecar.app_env()["OPENAI_BASE_URL"]
        out(f"    the app's OPENAI_BASE_URL={base_url}")
        say(
            "five requests with the official OpenAI client (flaky fails; its breaker opens after 2)"
        )
        ask(base_url, 5)
        time.sleep(2)  # the sidecar's sync count reaches the status
        say("kubectl get rp,mb -n demo")
        out(kubectl.run("get", "rp,mb", "-n", DEMO).stdout)
        say("traces received over OTLP")
        show_traces(receiver)
        if hold:
            say(f"holding: KUBECONFIG={plane.kubeconfig}, sidecar at {base_url}; Ctrl-C ends it")
            while True:
                time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; --hold keeps it running for a look around."""
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--hold", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        run(args.hold)
    except KeyboardInterrupt:
        out("\nstopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
