"""The webhook's HTTP side without a cluster: AdmissionReview in, a JSON patch or a refusal out."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from routemesh_operator.admission.server import AdmissionServer, secrets_of
from routemesh_operator.api.v1alpha1.common import LabelSelector
from routemesh_operator.distribution.board import Board, Published
from routemesh_operator.injection.context import SecretKey
from routemesh_operator.injection.settings import InjectionSettings
from routemesh_sidecar.routetable import Credentials
from routemesh_testing.tables import backend, route, table

pytestmark = pytest.mark.timeout(20)

LABELS = {"apps": {"routemesh.dev/inject": "enabled"}, "plain": {}}


def chat_table() -> Any:
    credentials = Credentials(file="/var/run/routemesh/credentials/provider-key/api-key")
    return table({"b": backend("http://x/v1", credentials=credentials)}, route("r", ("b", "m")))


@pytest_asyncio.fixture
async def webhook() -> AsyncIterator[str]:
    board = Board()
    selector = LabelSelector.model_validate({"matchLabels": {"app": "chat"}})
    board.publish(Published("apps", "chat", selector, chat_table()))

    async def namespace_labels(namespace: str) -> dict[str, str]:
        return LABELS.get(namespace, {})

    server = AdmissionServer(board, InjectionSettings, namespace_labels)
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/mutate-pods"
    finally:
        await runner.cleanup()


def review(namespace: str, pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation,
            "namespace": namespace,
            "object": pod,
        },
    }


def pod(labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": labels, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }


async def ask(url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200
        answer: dict[str, Any] = (await response.json())["response"]
        return answer


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    assert answer["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(answer["patch"]))
    return ops


@pytest.mark.asyncio
async def test_a_pod_in_a_labelled_namespace_gets_the_sidecar_and_its_policys_secrets(webhook: str):
    answer = await ask(webhook, review("apps", pod({"app": "chat"})))
    assert answer == {**answer, "uid": "u-1", "allowed": True}
    ops = patch_of(answer)
    volumes = [op["value"] for op in ops if op["path"].startswith("/spec/volumes")]
    flat = [v for value in volumes for v in (value if isinstance(value, list) else [value])]
    names = {v["name"]: v for v in flat}
    credentials = next(v for n, v in names.items() if "credentials" in n)
    sources = credentials["projected"]["sources"]
    assert sources[0]["secret"]["name"] == "provider-key"
    assert sources[0]["secret"]["items"] == [{"key": "api-key", "path": "provider-key/api-key"}]
    fallback = next(v for n, v in names.items() if "configMap" in v)
    assert fallback["configMap"]["name"] == "routemesh-rt-chat"


@pytest.mark.asyncio
async def test_pods_not_for_injection_are_allowed_unchanged(webhook: str):
    for answer in (
        await ask(webhook, review("plain", pod({"app": "chat"}))),
        await ask(webhook, review("apps", pod({}, {"routemesh.dev/inject": "disabled"}))),
        await ask(webhook, review("kube-system", pod({}, {"routemesh.dev/inject": "enabled"}))),
        await ask(webhook, review("apps", pod({"app": "chat"}), operation="UPDATE")),
    ):
        assert answer["allowed"] is True
        assert "patch" not in answer


@pytest.mark.asyncio
async def test_a_pod_no_policy_selects_gets_no_configmap_fallback(webhook: str):
    ops = patch_of(await ask(webhook, review("apps", pod({"app": "other"}))))
    assert "routemesh-rt-" not in json.dumps(ops)


@pytest.mark.asyncio
async def test_a_nonsense_override_refuses_the_pod_with_the_reason(webhook: str):
    bad = pod({"app": "chat"}, {"routemesh.dev/sidecar-port": "99999"})
    answer = await ask(webhook, review("apps", bad))
    assert answer["allowed"] is False
    assert "routemesh.dev/sidecar-port" in answer["status"]["message"]
    assert answer["status"]["code"] == 400


def test_secrets_come_from_the_files_the_compiler_named():
    assert secrets_of(chat_table(), PurePosixPath("/var/run/routemesh/credentials")) == frozenset(
        {SecretKey("provider-key", "api-key")}
    )
