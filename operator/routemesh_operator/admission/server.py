"""The mutating webhook's HTTP side: AdmissionReview in, the injection patch out.

The API server calls `POST /mutate-pods` (over TLS; the runtime serves it with the certificates
`certstore` keeps) for every Pod CREATE that the webhook configuration's namespace selector lets
through. The handler asks `injection.decide` whether to inject (reading the namespace's labels,
cached), finds what the operator knows of the pod (the policy whose selector matches its labels,
and the Secrets that policy's backends read their keys from), and returns `injection.build_patch`
as a JSON patch. An annotation override that makes no sense refuses the pod with the reason; a
pod that is not for injection is allowed unchanged. It builds nothing itself: the patch is
injection's, the tables are the board's.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath
from typing import Any

from aiohttp import web

from routemesh_operator.compiler.inputs import CompilerSettings
from routemesh_operator.distribution.board import Board
from routemesh_operator.expiring import ExpiringCache
from routemesh_operator.injection.context import InjectionContext, SecretKey
from routemesh_operator.injection.decide import decide, is_injected
from routemesh_operator.injection.options import InjectionError
from routemesh_operator.injection.patch import build_patch
from routemesh_operator.injection.settings import InjectionSettings
from routemesh_operator.kube import KubeApi, labels_of
from routemesh_sidecar.routetable import RouteTable

logger = logging.getLogger(__name__)

NamespaceLabels = Callable[[str], Awaitable[dict[str, str]]]


class NamespaceLabelCache:
    """Namespace labels from the API server, kept `cache_seconds` (labels rarely change)."""

    def __init__(
        self,
        api: KubeApi,
        cache_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._cache: ExpiringCache[str, dict[str, str]] = ExpiringCache(cache_seconds, clock=clock)

    async def __call__(self, namespace: str) -> dict[str, str]:
        """The namespace's labels (none when it cannot be read)."""
        return await self._cache.get(namespace, lambda: self._read(namespace))

    async def _read(self, namespace: str) -> dict[str, str]:
        return labels_of(await self._api.get(f"/api/v1/namespaces/{namespace}"))


def secrets_of(table: RouteTable, credentials_dir: PurePosixPath) -> frozenset[SecretKey]:
    """The Secret keys a table's backends read, from the files the compiler named."""
    found = set()
    for backend in table.backends.values():
        credentials = backend.credentials
        if credentials is None or credentials.file is None:
            continue
        relative = PurePosixPath(str(credentials.file)).relative_to(credentials_dir)
        if len(relative.parts) == 2:
            found.add(SecretKey(relative.parts[0], relative.parts[1]))
    return frozenset(found)


class AdmissionServer:
    """The webhook application; see the module docstring."""

    def __init__(
        self,
        board: Board,
        settings: Callable[[], InjectionSettings],
        namespace_labels: NamespaceLabels,
        compiler_settings: CompilerSettings | None = None,
        on_decision: Callable[[str], None] = lambda decision: None,
    ) -> None:
        self._board = board
        self._on_decision = on_decision  # injected, skipped or refused, once per answer
        self._settings = settings
        self._namespace_labels = namespace_labels
        self._credentials_dir = (compiler_settings or CompilerSettings()).credentials_dir

    def app(self) -> web.Application:
        """The web application to serve over TLS."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/mutate-pods", self.mutate)
        return app

    async def mutate(self, request: web.Request) -> web.Response:
        """Answer one AdmissionReview."""
        try:
            review = await request.json()
            admission = review["request"]
            uid = str(admission["uid"])
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPBadRequest(text=f"not an AdmissionReview: {exc}") from exc
        try:
            patch = await self._patch_for(admission)
        except InjectionError as exc:
            logger.info("refusing pod in %s: %s", admission.get("namespace"), exc)
            self._on_decision("refused")
            return _answer(uid, allowed=False, message=f"RouteMesh sidecar injection: {exc}")
        except Exception:
            # The API server then applies the failure policy (Ignore: the pod runs without a
            # sidecar): count it, so that an alert can say so.
            self._on_decision("error")
            raise
        return _answer(uid, allowed=True, patch=patch)

    async def _patch_for(self, admission: dict[str, Any]) -> list[dict[str, Any]]:
        if admission.get("operation") != "CREATE" or admission.get("kind", {}).get("kind") != "Pod":
            self._on_decision("skipped")
            return []
        pod: dict[str, Any] = admission.get("object") or {}
        namespace = str(admission.get("namespace") or pod.get("metadata", {}).get("namespace"))
        settings = self._settings()
        labels = await self._namespace_labels(namespace)
        decision = decide(pod, namespace, labels, settings)
        if not decision.inject:
            logger.debug("not injecting a pod in %s: %s", namespace, decision.reason)
            # A reinvocation (another webhook changed the pod after us) finds it injected.
            self._on_decision("reinvoked" if is_injected(pod) else "skipped")
            return []
        pod_labels = (pod.get("metadata") or {}).get("labels") or {}
        published = self._board.select(namespace, pod_labels)
        context = InjectionContext(
            namespace=namespace,
            policy=published.policy if published else None,
            secrets=secrets_of(published.table, self._credentials_dir)
            if published
            else frozenset(),
        )
        patch = build_patch(pod, context, settings)
        self._on_decision("injected")
        return patch


def _answer(
    uid: str,
    *,
    allowed: bool,
    patch: list[dict[str, Any]] | None = None,
    message: str | None = None,
) -> web.Response:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if message:
        response["status"] = {"code": 400 if not allowed else 200, "message": message}
    return web.json_response(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    )
