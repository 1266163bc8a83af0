"""The operator's webhook certificates against the real API server: Secret, caBundle, rotation.

Each test creates its own MutatingWebhookConfiguration, labelled so that the session cleanup
deletes it, pointing at 127.0.0.1 with `failurePolicy: Ignore` (except where the test serves it)
and a namespace selector that matches only the test's namespace, so it never intercepts the Pods
of other tests. The clock the store reads is the test's; only the last test keeps it within
minutes of the real one, because there the API server checks the certificates itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from routemesh_operator.admission import certs
from routemesh_operator.admission.certs import KeyPair
from routemesh_operator.admission.certstore import WebhookCertificates, write_files
from routemesh_operator.anchor import Anchor
from routemesh_operator.kube import Credentials, KubeApi
from routemesh_testing.controlplane import LocalControlPlane, free_port
from routemesh_testing.kubectl import Kubectl
from routemesh_testing.pytest_plugin import TEST_NAMESPACE_LABEL
from routemesh_testing.waiting import poll_until

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
SECRET = "webhook-certs"
DAY = timedelta(days=1)
START = datetime(2031, 5, 1, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def hosts(namespace: str) -> list[str]:
    return ["routemesh-operator", f"routemesh-operator.{namespace}.svc", "127.0.0.1"]


def store(api: KubeApi, namespace: str, configuration: str, clock: Clock, **lifetimes: Any):
    return WebhookCertificates(
        api,
        namespace=namespace,
        secret_name=SECRET,
        webhook_configuration=configuration,
        hosts=hosts(namespace),
        **{
            "ca_validity": 10 * DAY,
            "serving_validity": 4 * DAY,
            "rotate_before": DAY,
            "clock": clock,
            **lifetimes,
        },
    )


def with_api(plane: LocalControlPlane, work: Callable[[KubeApi], Awaitable[T]]) -> T:
    async def main() -> T:
        async with KubeApi(Credentials.load(str(plane.kubeconfig))) as api:
            return await work(api)

    return asyncio.run(main())


def configure(kubectl: Kubectl, name: str, namespace: str, port: int, policy: str) -> None:
    # Two webhooks, so that the test sees every entry get the bundle; none has one yet.
    hooks = "".join(
        f"""
  - name: {hook}.routemesh.dev
    clientConfig:
      url: https://127.0.0.1:{port}/mutate
    rules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {namespace}
    failurePolicy: {policy}
    sideEffects: None
    admissionReviewVersions: [v1]
    timeoutSeconds: 5"""
        for hook in ("inject", "second")
    )
    kubectl.apply(
        f"""
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
  labels:
    {TEST_NAMESPACE_LABEL}: "true"
webhooks:{hooks}
"""
    )


@pytest.fixture
def configuration(kubectl: Kubectl, namespace: str) -> Iterator[str]:
    name = f"{namespace}-injector"
    configure(kubectl, name, namespace, 9, "Ignore")
    try:
        yield name
    finally:
        kubectl.run("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


def secret(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = kubectl.get("secret", SECRET, namespace=namespace)
    return found


def data(kubectl: Kubectl, namespace: str, key: str) -> bytes:
    return base64.b64decode(secret(kubectl, namespace)["data"][key])


def bundles(kubectl: Kubectl, name: str) -> list[bytes]:
    found = kubectl.get("mutatingwebhookconfiguration", name)
    return [base64.b64decode(hook["clientConfig"]["caBundle"]) for hook in found["webhooks"]]


def version(kubectl: Kubectl, *args: str, namespace: str | None = None) -> str:
    return str(kubectl.get(*args, namespace=namespace)["metadata"]["resourceVersion"])


def test_first_ensure_stores_the_certificates_and_trusts_them_in_every_webhook(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, configuration: str
):
    clock = Clock(START)

    async def first(api: KubeApi) -> tuple[KeyPair, bytes, bool]:
        certificates = store(api, namespace, configuration, clock)
        pair = await certificates.ensure()
        return pair, certificates.ca_bundle, certificates.published

    pair, trusted, published = with_api(control_plane, first)
    assert published
    stored = secret(kubectl, namespace)
    assert stored["type"] == "kubernetes.io/tls"
    assert sorted(stored["data"]) == ["ca-bundle.crt", "ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "routemesh-operator"
    assert data(kubectl, namespace, "tls.crt") == pair.cert_pem
    assert data(kubectl, namespace, "tls.key") == pair.key_pem
    ca = KeyPair(data(kubectl, namespace, "ca.crt"), data(kubectl, namespace, "ca.key"))
    assert certs.signed_by(pair.cert_pem, ca.cert_pem)
    assert certs.matches(ca)
    assert certs.covers(pair.cert_pem, hosts(namespace))
    assert trusted == ca.cert_pem == data(kubectl, namespace, "ca-bundle.crt")
    assert bundles(kubectl, configuration) == [trusted, trusted]

    # The same clock again, from this replica or a fresh one: nothing is issued or written.
    secret_version = version(kubectl, "secret", SECRET, namespace=namespace)
    configuration_version = version(kubectl, "mutatingwebhookconfiguration", configuration)

    async def again(api: KubeApi) -> list[KeyPair]:
        certificates = store(api, namespace, configuration, clock)
        return [await certificates.ensure(), await certificates.ensure()]

    assert with_api(control_plane, again) == [pair, pair]
    assert version(kubectl, "secret", SECRET, namespace=namespace) == secret_version
    assert version(kubectl, "mutatingwebhookconfiguration", configuration) == configuration_version


def test_an_older_unowned_secret_is_adopted_by_the_configuration_and_collected_with_it(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, configuration: str
):
    # As chart 0.1.0 left it: the Secret has no owner. Once the anchor knows the configuration,
    # the next check adds it as owner, keeps the certificates, and deleting the configuration
    # (as helm uninstall does) lets the garbage collector delete the Secret.
    clock = Clock(START)

    async def unowned_then_owned(api: KubeApi) -> tuple[KeyPair, KeyPair, list[dict[str, Any]]]:
        first = await store(api, namespace, configuration, clock).ensure()
        anchor = Anchor(api, configuration)
        await anchor.refresh()
        certificates = store(api, namespace, configuration, clock, owners=anchor.references)
        return first, await certificates.ensure(), anchor.references()

    first, adopted, owners = with_api(control_plane, unowned_then_owned)
    assert adopted == first, "adopting never reissues"
    uid = kubectl.get("mutatingwebhookconfiguration", configuration)["metadata"]["uid"]
    assert [o["uid"] for o in owners] == [uid]
    stored_owners = secret(kubectl, namespace)["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o["uid"]) for o in stored_owners] == [
        ("MutatingWebhookConfiguration", configuration, uid)
    ]
    kubectl.run("delete", "mutatingwebhookconfiguration", configuration)
    poll_until(
        lambda: kubectl.run("get", "secret", SECRET, "-n", namespace, check=False).returncode,
        lambda code: code != 0,
        timeout=60,
    )


def test_serving_then_ca_rotation_keeps_the_old_ca_trusted_until_it_expires(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, configuration: str
):
    clock = Clock(START)

    async def steps(api: KubeApi) -> list[tuple[KeyPair, bytes]]:
        certificates = store(api, namespace, configuration, clock)
        seen = []
        # CA: 10 days; serving: 4 days; rotate 1 day before expiry.
        for day in (0, 3.5, 7, 9.2, 9.2, 10.5):
            clock.now = START + day * DAY
            seen.append((await certificates.ensure(), certificates.ca_bundle))
        return seen

    seen = with_api(control_plane, steps)
    (first, ca1), (second, same), (third, still), (kept, both), (fourth, both_again), last = seen
    # Day 3.5: the serving certificate is due; its successor comes from the same CA.
    assert second != first
    assert same == ca1
    assert certs.signed_by(second.cert_pem, ca1)
    # Day 7: due again, and this time its lifetime is capped at the CA's expiry.
    assert certs.not_after(third.cert_pem) == certs.not_after(ca1) == START + 10 * DAY
    assert still == ca1
    # Day 9.2: the CA is due. A new CA joins the bundle; the old CA's serving pair stays one
    # more check, so the API server trusts the new CA before anything it signed is served.
    ca2 = certs.split(both)[0]
    assert certs.split(both) == [ca2, ca1]
    assert kept == third
    assert data(kubectl, namespace, "ca.crt") == ca2
    # The next check serves a certificate from the new CA; both CAs stay trusted.
    assert both_again == both
    assert certs.signed_by(fourth.cert_pem, ca2)
    assert certs.not_after(fourth.cert_pem) == START + 9.2 * DAY + 4 * DAY
    # Day 10.5: the old CA has expired and leaves the bundle; the serving pair stays.
    assert last == (fourth, ca2)
    assert bundles(kubectl, configuration) == [ca2, ca2]
    assert data(kubectl, namespace, "ca-bundle.crt") == ca2


def test_racing_replicas_agree_on_one_secret(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, configuration: str
):
    clock = Clock(START)

    async def race(api: KubeApi) -> list[list[KeyPair]]:
        replicas = [store(api, namespace, configuration, clock) for _ in range(3)]
        rounds = []
        for day in (0, 3.5, 9.5):  # from nothing; a due serving certificate; a due CA
            clock.now = START + day * DAY
            rounds.append(list(await asyncio.gather(*(r.ensure() for r in replicas))))
        return rounds

    rounds = with_api(control_plane, race)
    for pairs in rounds:
        assert pairs[0] == pairs[1] == pairs[2]
    assert len({pairs[0] for pairs in rounds}) == 3
    assert data(kubectl, namespace, "tls.crt") == rounds[-1][0].cert_pem
    trusted = data(kubectl, namespace, "ca-bundle.crt")
    assert bundles(kubectl, configuration) == [trusted, trusted]
    # The CA rotated once, whoever won: the bundle holds exactly the old and the new CA.
    assert len(certs.split(trusted)) == 2


def test_a_missing_configuration_is_a_warning_and_gets_the_bundle_once_it_exists(
    control_plane: LocalControlPlane,
    kubectl: Kubectl,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
):
    clock = Clock(START)
    name = f"{namespace}-late"

    async def before(api: KubeApi) -> tuple[KeyPair, bool]:
        certificates = store(api, namespace, name, clock)
        return await certificates.ensure(), certificates.published

    with caplog.at_level(logging.WARNING, logger="routemesh_operator.admission.certstore"):
        pair, published = with_api(control_plane, before)
    assert not published
    assert any(name in record.getMessage() for record in caplog.records)
    assert data(kubectl, namespace, "tls.crt") == pair.cert_pem

    configure(kubectl, name, namespace, 9, "Ignore")
    try:
        after = with_api(control_plane, before)
        assert after == (pair, True)
        assert bundles(kubectl, name) == [data(kubectl, namespace, "ca.crt")] * 2
    finally:
        kubectl.run("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


def test_run_hands_on_each_new_pair_and_survives_failures(
    control_plane: LocalControlPlane, namespace: str, configuration: str, tmp_path: Path
):
    clock = Clock(START)
    received: list[KeyPair] = []

    def on_rotate(pair: KeyPair) -> None:
        received.append(pair)
        write_files(pair, tmp_path)
        if len(received) == 1:
            raise RuntimeError("a reload that fails once")  # logged; handed on again

    async def main(api: KubeApi) -> KeyPair:
        certificates = store(api, namespace, configuration, clock)
        initial = await certificates.ensure()  # as the runtime does before it serves
        task = asyncio.create_task(certificates.run(on_rotate, 0.05), name="webhook-certs")
        await asyncio.sleep(0.3)
        assert received == []  # the caller already has this pair
        clock.now = START + 3.5 * DAY

        async def rotated() -> None:
            while len(received) < 2:
                assert not task.done()
                await asyncio.sleep(0.05)

        await asyncio.wait_for(rotated(), timeout=10)
        await asyncio.sleep(0.3)  # and nothing more: the pair is handed on once it is taken
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return initial

    initial = with_api(control_plane, main)
    assert len(received) == 2
    assert received[0] == received[1] != initial
    assert (tmp_path / "tls.crt").read_bytes() == received[0].cert_pem


class ReloadingServer:
    """A TLS webhook on a fixed 127.0.0.1 port, started anew from files for every phase.

    Starting anew closes the API server's kept-alive connections, so each phase's Pod create
    opens a new TLS connection and verifies the certificate then served.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.calls = 0

    @contextmanager
    def serving(self, cert: Path, key: str | Path) -> Iterator[None]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                patch = [{"op": "add", "path": "/metadata/labels", "value": {"called": "yes"}}]
                response = {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                }
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": response,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, name="test-webhook", daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
    - name: app
      image: example/app:1
"""


def create(
    kubectl: Kubectl, namespace: str, manifest: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return kubectl.run("create", "-n", namespace, "-f", "-", stdin=manifest, check=check)


def test_the_api_server_keeps_calling_the_webhook_across_rotations(
    control_plane: LocalControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
):
    # Here the API server verifies the certificates, at its real time: the clock moves only
    # within the five minutes every certificate is backdated by.
    start = datetime.now(UTC)
    clock = Clock(start)
    minutes = timedelta(minutes=1)
    port = free_port()
    name = f"{namespace}-served"
    configure(kubectl, name, namespace, port, "Fail")  # a refused TLS handshake fails the create
    server = ReloadingServer(port)

    async def check(api: KubeApi) -> tuple[KeyPair, bytes]:
        # CA: 10 minutes, serving: 9, rotate 8 before expiry: the serving pair is due after
        # 1 minute, the CA after 2. A fresh store each phase, as after a restart.
        certificates = store(
            api,
            namespace,
            name,
            clock,
            ca_validity=10 * minutes,
            serving_validity=9 * minutes,
            rotate_before=8 * minutes,
        )
        return await certificates.ensure(), certificates.ca_bundle

    seen = []
    try:
        for index, offset in enumerate((0, 1.5, 3, 3)):
            clock.now = start + offset * minutes
            pair, trusted = with_api(control_plane, check)
            seen.append((pair, trusted))
            cert, key = write_files(pair, tmp_path / str(index))
            with server.serving(cert, key):
                manifest = POD.format(name=f"app-{index}")
                if index == 0:
                    # The API server learns of the first caBundle through a watch; until then it
                    # cannot verify anything. Later phases need no wait: whatever it has cached
                    # already trusts the pair then served.
                    result = poll_until(
                        partial(create, kubectl, namespace, manifest, check=False),
                        lambda result: result.returncode == 0,
                        timeout=10,
                    )
                    assert result.returncode == 0, result.stderr
                else:
                    create(kubectl, namespace, manifest)
                found = kubectl.get("pod", f"app-{index}", namespace=namespace)
                assert found["metadata"]["labels"] == {"called": "yes"}
        cas = [certs.split(trusted)[0] for _, trusted in seen]
        assert cas[0] == cas[1] != cas[2] == cas[3]  # a serving rotation, then a CA rotation
        assert [len(certs.split(trusted)) for _, trusted in seen] == [1, 1, 2, 2]
        pairs = [pair for pair, _ in seen]
        assert pairs[0] != pairs[1] == pairs[2] != pairs[3]  # the CA change kept it one check
        assert certs.signed_by(pairs[3].cert_pem, cas[3])
        assert server.calls >= 2 * len(seen)  # both webhooks, every phase
    finally:
        kubectl.run("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
