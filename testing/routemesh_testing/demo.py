"""`make demo`: the whole of RouteMesh on this machine, on the embedded default, in about a minute.

It starts the OTel trace backend (Phoenix, from `make otel-backend`), the local control plane
(kube-apiserver, etcd and the controller manager, from `make controlplane`) and three fake model
providers, each behind a fault proxy: `frontier` (the strongest and dearest model), `economy` (a
cheap hosted model) and `llama`, a self-hosted vLLM-like server with `/metrics` that the operator
finds through its Service's EndpointSlice. It runs the operator with its webhook and applies what a
user would: a namespace labelled for injection, three ModelBackends, a RoutingPolicy (code to the
strongest model, long documents and chat to cheaper ones, each with fallbacks) and three app Pods.
The API server has the webhook inject the sidecar into each Pod; the demo runs those sidecars as
processes (there is no kubelet) and each app sends its kind of request through its own sidecar
with the official OpenAI client, while `economy` goes down and comes back and `llama` answers a
429 storm. It prints `kubectl get rp,mb`, a summary (requests per backend, fallbacks, breaker
openings, p50/p99, cost against always the strongest model) and the URL of a failover's trace in
the backend's UI, then keeps everything up until Ctrl-C (`--no-hold` ends at once). Nothing is
left behind.

Demo support only: product code never imports it. The workload and summary are in demo_traffic.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from routemesh_testing.controlplane import (
    REPO_ROOT,
    Binaries,
    ControlPlaneSettings,
    LocalControlPlane,
    free_port,
)
from routemesh_testing.demo_traffic import App, Outcome, Price, Summary, send_together
from routemesh_testing.fakes import OPENAI_KEY
from routemesh_testing.faultproxy import FaultyUpstream, RateLimitStorm, Reset
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.manifests import (
    endpoint_slice,
    hosted_backend,
    injection_webhook,
    key_secret,
    wait_for_ca_bundle,
)
from routemesh_testing.operator import injecting_settings, running_operator
from routemesh_testing.phoenix import PhoenixServer
from routemesh_testing.podrun import InjectedSidecar
from routemesh_testing.sidecar import metric_samples
from routemesh_testing.waiting import poll_until

DEMO = "demo"
OPERATOR_NAMESPACE = "routemesh-system"
WEBHOOK = "routemesh-demo-injector"
PART_OF = "demo-shop"
CHAT = "/chat/completions"
# The breaker's base open time in the demo's policy: a backend that came back gets its probe then.
BREAKER_OPEN_SECONDS = 5
STRONGEST = Price(2.50, 10.00)
# (backend, model, price, quality tier) of the hosted providers; `llama` is self-hosted.
HOSTED = (
    ("frontier", "strong", STRONGEST, "Premium"),
    ("economy", "mini", Price(0.15, 0.60), "Economy"),
)
LLAMA = ("llama", "llama-3.1-8b", Price(0.05, 0.10), "Standard")
APPS = (("chat-app", "question"), ("code-assistant", "code"), ("doc-summarizer", "document"))
# Each route's first target, as the policy below lists them; the summary counts the rest.
FIRST_BACKEND = {"code": "frontier", "documents": "economy", "chat": "llama"}


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


def model(name: str, price: Price, tier: str, context_window: int = 128000) -> dict[str, Any]:
    """A ModelBackend's model entry."""
    return {
        "name": name,
        "contextWindow": context_window,
        "capabilities": ["Tools"],
        "qualityTier": tier,
        "pricing": {
            "inputPerMillion": f"{price.input_per_million:.2f}",
            "outputPerMillion": f"{price.output_per_million:.2f}",
        },
    }


def pod_address() -> str:
    """This machine's own non-loopback IPv4 address, where the fake vLLM pod listens.

    The API server refuses loopback addresses in an EndpointSlice, as a real cluster's pods never
    have one. Connecting a UDP socket sends nothing; it only picks the address a route would use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: never a real host
        except OSError as exc:
            raise RuntimeError(
                "the demo needs a non-loopback IPv4 address for its vLLM pod's EndpointSlice, "
                f"and this machine has no route to one: {exc}"
            ) from exc
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        raise RuntimeError("the demo needs a non-loopback IPv4 address; this machine has none")
    return address


def backends(urls: dict[str, str], llama_ip: str, llama_port: int) -> list[dict[str, Any]]:
    """What a user would apply for the providers: a key, two hosted backends, a self-hosted one."""
    key = key_secret("provider-key", OPENAI_KEY)
    hosted = [
        hosted_backend(name, urls[name], [model(model_name, price, tier)])
        for name, model_name, price, tier in HOSTED
    ]
    name, model_name, price, tier = LLAMA
    llama = {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": name},
        "spec": {
            "provider": "VLLM",
            "selfHosted": {
                "image": "vllm/vllm-openai:v0.6.4",
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "servedModelName": model_name,
                "replicas": 1,
                "gpu": {"count": 1},
            },
            "healthCheck": {"interval": "2s", "metrics": {"path": "/metrics"}},
            "models": [model(model_name, price, tier, context_window=16384)],
        },
    }
    # There is no kubelet, so no vLLM pod: the EndpointSlice a real cluster's controller would
    # write for the operator's Service points at the fake instead.
    return [key, *hosted, llama, endpoint_slice(name, llama_port, [(llama_ip, None)])]


def policy() -> dict[str, Any]:
    """The RoutingPolicy: code to the strongest model, documents and chat to cheaper ones."""
    fallback = {"type": "Fallback"}
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/part-of": PART_OF}},
            "defaults": {
                "retry": {"attempts": 2},
                "circuitBreaker": {
                    "consecutiveFailures": 3,
                    "baseOpenTime": f"{BREAKER_OPEN_SECONDS}s",
                },
            },
            "routes": [
                {
                    "name": "code",
                    "match": {"signals": {"codePresent": True}},
                    "strategy": fallback,
                    "targets": [
                        {"backend": "frontier", "model": "strong"},
                        {"backend": "economy", "model": "mini"},
                    ],
                },
                {
                    "name": "documents",
                    "match": {"signals": {"tokens": {"min": 1500}}},
                    "strategy": fallback,
                    "targets": [
                        {"backend": "economy", "model": "mini"},
                        {"backend": "frontier", "model": "strong"},
                    ],
                },
                {
                    "name": "chat",
                    "strategy": fallback,
                    "targets": [
                        {"backend": "llama", "model": "llama-3.1-8b"},
                        {"backend": "economy", "model": "mini"},
                        {"backend": "frontier", "model": "strong"},
                    ],
                },
            ],
        },
    }


def pod(name: str) -> dict[str, Any]:
    """An app Pod, with the sidecar's ports chosen so that three can run on one machine."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/part-of": PART_OF, "app": name},
            "annotations": {
                "routemesh.dev/sidecar-port": str(free_port()),
                "routemesh.dev/sidecar-admin-port": str(free_port()),
            },
        },
        "spec": {"containers": [{"name": "app", "image": f"example/{name}:1"}]},
    }


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
    kubectl.wait_for_default_service_account(DEMO)


def operator(stack: ExitStack, plane: LocalControlPlane, workdir: Path, otlp_endpoint: str) -> None:
    """The operator with its webhook, and the webhook configuration the chart would install."""
    kubectl = plane.kubectl()
    webhook_port, distribution_port = free_port(), free_port()
    kubectl.apply(yaml.safe_dump(injection_webhook(WEBHOOK, webhook_port, [DEMO])))
    stack.callback(kubectl.run, "delete", "mutatingwebhookconfiguration", WEBHOOK, check=False)
    settings = injecting_settings(
        namespace=OPERATOR_NAMESPACE,
        webhook_configuration=WEBHOOK,
        webhook_port=webhook_port,
        distribution_port=distribution_port,
        cert_dir=workdir / "webhook",
        otlp_endpoint=otlp_endpoint,
    )
    stack.enter_context(running_operator(plane, **settings))
    wait_for_ca_bundle(kubectl, WEBHOOK)


def apply_and_wait(kubectl: Kubectl, upstreams: dict[str, FaultyUpstream]) -> None:
    """The backends and the policy, applied; back when the policy has its first route table."""
    urls = {name: upstream.url for name, upstream in upstreams.items()}
    llama = urlsplit(urls["llama"])
    docs = [*backends(urls, llama.hostname or "", llama.port or 80), policy()]
    kubectl.apply(yaml.safe_dump_all(docs), namespace=DEMO)
    poll_until(
        lambda: kubectl.get("routingpolicy", "shop", namespace=DEMO).get("status", {}),
        lambda status: "routeTableVersion" in status,
        timeout=60,
    )


def start_apps(stack: ExitStack, kubectl: Kubectl, workdir: Path) -> list[tuple[App, str]]:
    """Create the app Pods, run each injected sidecar; (app, its sidecar's admin URL) each."""
    apps = []
    for name, kind in APPS:
        kubectl.apply(yaml.safe_dump(pod(name)), namespace=DEMO)
        stored = kubectl.get("pod", name, namespace=DEMO)
        injected = [c["name"] for c in stored["spec"].get("initContainers") or ()]
        out(f"    {name}: the webhook injected initContainers={injected}")
        sidecar = stack.enter_context(InjectedSidecar(kubectl, stored, workdir / name))
        apps.append((App(name, kind, sidecar.app_env()["OPENAI_BASE_URL"]), sidecar.admin_url))
    return apps


def traffic(apps: list[App], upstreams: dict[str, FaultyUpstream]) -> list[Outcome]:
    """The story of the traffic: outages and a 429 storm while every app keeps asking."""
    economy, llama = upstreams["economy"].faults, upstreams["llama"].faults
    outcomes: list[Outcome] = []

    def phase(title: str, name: str, count: int) -> None:
        say(title)
        found = send_together(apps, name, count, STRONGEST)
        outcomes.extend(found)
        served = sorted({o.backend for o in found if o.backend})
        out(f"    {len(found)} requests; answered by {', '.join(served)}")

    phase("all providers up: every app sends its kind of request", "all-up", 6)
    economy.set_fault(Reset(), paths=(CHAT,))
    phase("`economy` goes hard down (connections reset); its breaker opens", "economy-down", 6)
    economy.clear()
    time.sleep(BREAKER_OPEN_SECONDS + 0.5)  # the breaker's open time: the next request probes
    phase("`economy` is back: a probe closes its breaker", "economy-back", 6)
    llama.set_fault(RateLimitStorm(retry_after=1), paths=(CHAT,))
    phase("a 429 storm on the self-hosted `llama`, with Retry-After", "429-retry-after", 6)
    llama.set_fault(RateLimitStorm(), paths=(CHAT,))
    phase("the storm goes on, without Retry-After", "429-bare", 6)
    llama.clear()
    time.sleep(BREAKER_OPEN_SECONDS + 0.5)
    phase("the storm is over", "recovered", 6)
    return outcomes


def breaker_openings(admin_urls: list[str]) -> int:
    """Circuit-breaker openings counted by every sidecar."""
    name = "routemesh_health_transitions_total"
    labels = {"mechanism": "circuit_breaker", "to_state": "open"}
    return int(sum(sum(metric_samples(url, name, **labels)) for url in admin_urls))


def failover_trace(phoenix: PhoenixServer) -> str:
    """The trace id of a request that fell back, once the backend has its route span."""
    spans = phoenix.wait_for(
        "default",
        lambda found: any("routemesh.fallback.cause" in s["attributes"] for s in found),
        name="routemesh.route",
        timeout=30,
    )
    fallen = [s for s in spans if "routemesh.fallback.cause" in s["attributes"]]
    return str(fallen[0]["context"]["trace_id"])


def screenshot(url: str, path: Path) -> None:
    """A PNG of a page, taken with headless Chromium (Debian's `chromium` package)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise RuntimeError("--screenshot needs Chromium: apt-get install chromium")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    subprocess.run(
        [
            browser,
            *flags,
            "--hide-scrollbars",
            "--window-size=1600,1000",
            "--virtual-time-budget=15000",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def run(hold: bool, screenshot_path: Path | None) -> None:
    """The demo, start to end; everything it started stops when it returns."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="routemesh-demo-")))
        say("starting the OTel trace backend (Phoenix) and the local control plane")
        phoenix = PhoenixServer(PhoenixServer.locate(), workdir / "phoenix")
        phoenix.start()  # it takes about 10 s: the control plane starts meanwhile
        stack.callback(phoenix.__exit__, None, None, None)
        plane = stack.enter_context(control_plane(workdir / "controlplane"))
        phoenix.wait_until_healthy()
        out(f"    Phoenix at {phoenix.url}")
        kubectl = plane.kubectl()
        say("three fake providers behind fault proxies: `frontier`, `economy`, `llama` (vLLM)")
        # (host, key): the self-hosted vLLM listens where a pod would and asks for no key.
        serving = {
            "frontier": ("127.0.0.1", OPENAI_KEY),
            "economy": ("127.0.0.1", OPENAI_KEY),
            "llama": (pod_address(), None),
        }
        upstreams = {
            name: stack.enter_context(FaultyUpstream(name, key, host))
            for name, (host, key) in serving.items()
        }
        namespaces(kubectl)
        say("starting the operator (compiler, distribution, webhook with its own certificates)")
        operator(stack, plane, workdir, phoenix.otlp_endpoint)
        say("kubectl apply: three ModelBackends and a RoutingPolicy")
        apply_and_wait(kubectl, upstreams)
        say("kubectl apply: three app Pods; their injected sidecars run as processes")
        apps = start_apps(stack, kubectl, workdir / "pods")
        outcomes = traffic([app for app, _ in apps], upstreams)
        time.sleep(2)  # the sidecars' sync counts reach the status
        say("kubectl get rp,mb -n demo")
        out(kubectl.run("get", "rp,mb", "-n", DEMO).stdout)
        say("summary")
        summary = Summary.of(outcomes, FIRST_BACKEND, breaker_openings([a for _, a in apps]))
        for line in summary.lines():
            out(f"    {line}")
        trace_url = phoenix.trace_url(failover_trace(phoenix))
        say(f"the trace of a failover, in Phoenix: {trace_url}")
        if screenshot_path is not None:
            screenshot(trace_url, screenshot_path)
            out(f"    screenshot: {screenshot_path}")
        if hold:
            say(f"holding: KUBECONFIG={plane.kubeconfig}, Phoenix at {phoenix.url}; Ctrl-C ends it")
            while True:
                time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; it holds at the end until Ctrl-C unless told not to."""
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument(
        "--no-hold", action="store_true", help="end at once after the summary (for scripts)"
    )
    parser.add_argument(
        "--screenshot", type=Path, help="save a PNG of the failover's trace (needs chromium)"
    )
    args = parser.parse_args(argv)
    try:
        run(hold=not args.no_hold, screenshot_path=args.screenshot)
    except KeyboardInterrupt:
        out("\nstopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
