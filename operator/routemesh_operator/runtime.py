"""The operator's runtime: the objects that live as long as the operator, wired together.

Started by the kopf startup handler and stopped by the cleanup handler; the kopf handlers reach it
through kopf's memo, never through a global. `observe` is the one entry for what the cluster
says: a watch event (from a handler) or an item of the start-up listing. The listing fills the
inventory with every kind before the first compile, so a restarted operator never reports a
Secret missing just because the Secrets' watch had not caught up with the policies'.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import socket
import ssl
import uuid
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from routemesh_operator.admission import certs
from routemesh_operator.admission.certstore import WebhookCertificates
from routemesh_operator.admission.server import AdmissionServer, NamespaceLabelCache
from routemesh_operator.admission.serving import serve_webhook
from routemesh_operator.anchor import Anchor
from routemesh_operator.api.v1alpha1.kinds import GROUP_VERSION
from routemesh_operator.distribution.auth import PodLabels, TokenReviewer
from routemesh_operator.distribution.board import Board
from routemesh_operator.distribution.server import DistributionServer
from routemesh_operator.distribution.shared_health import SharedHealth
from routemesh_operator.distribution.sync import SyncTracker
from routemesh_operator.inventory import Inventory
from routemesh_operator.kube import ApiError, Credentials, KubeApi
from routemesh_operator.leader import LeaseElector
from routemesh_operator.metrics import OperatorMetrics, RuntimeState
from routemesh_operator.reconciler import Reconciler
from routemesh_operator.settings import OperatorSettings
from routemesh_operator.workloads import MANAGED_BY, MANAGED_BY_LABEL

logger = logging.getLogger(__name__)

# What the operator watches: kind -> cluster-wide list path and its query.
WATCHED: dict[str, tuple[str, dict[str, str]]] = {
    "RoutingPolicy": (f"/apis/{GROUP_VERSION}/routingpolicies", {}),
    "ModelBackend": (f"/apis/{GROUP_VERSION}/modelbackends", {}),
    "Secret": ("/api/v1/secrets", {}),
    "Service": ("/api/v1/services", {}),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1/endpointslices", {}),
    "Deployment": (
        "/apis/apps/v1/deployments",
        {"labelSelector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"},
    ),
}


class Runtime:
    """Inventory, board, reconciler and API client of one operator process."""

    def __init__(self, settings: OperatorSettings, credentials: Credentials) -> None:
        self.settings = settings
        self.api = KubeApi(credentials)
        self.inventory = Inventory()
        self.board = Board()
        self.tracker = SyncTracker(forget_after=settings.sidecar_forget_seconds)
        self.anchor = Anchor(self.api, settings.webhook_configuration)
        self.reconciler = Reconciler(
            self.inventory,
            self.api,
            self.board,
            tracker=self.tracker,
            owners=self.anchor.references,
        )
        self.distribution = DistributionServer(
            self.board,
            self.tracker,
            TokenReviewer(self.api, tuple(settings.token_audiences)),
            on_sync_change=self.reconciler.mark_status,
            pod_labels=PodLabels(self.api),
            serving=lambda: self.reconciler.writing,
            standby_reason=lambda: self.elector.problem if self.elector is not None else None,
            shared_health=SharedHealth(
                min_reporters=settings.shared_health_min_reporters,
                window=settings.shared_health_window_seconds,
            ),
        )
        self._certificates: WebhookCertificates | None = None
        self.metrics = OperatorMetrics(
            RuntimeState(
                leading=lambda: self.reconciler.writing,
                route_tables=lambda: len(self.board),
                sidecars=self.tracker.states,
                compiles=lambda: self.reconciler.compiles,
                certificate_expiry=self._certificate_expiry,
            )
        )
        self.distribution_port: int | None = None  # once listening
        self.webhook_port: int | None = None  # once listening
        self.elector: LeaseElector | None = None
        if not settings.standalone:
            self.reconciler.writing = False
            self.elector = LeaseElector(
                self.api,
                settings.namespace,
                settings.pod_name or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                lease_seconds=settings.lease_seconds,
                renew_seconds=settings.lease_seconds / 3,
                on_change=self.reconciler.set_writing,
                owners=self.anchor.references,
            )
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the client, read the cluster once, and start the loops and the server."""
        try:
            await self._stack.enter_async_context(self.api)
            await self._seed()
            with contextlib.suppress(ApiError):  # RBAC may forbid it; `follow` says so
                await self.anchor.refresh()
            self._spawn("routemesh-owner-anchor", self.anchor.follow())
            self._spawn("routemesh-reconcile", self.reconciler.run())
            self._spawn("routemesh-sidecar-expiry", self._expire_sidecars())
            if self.elector is not None:
                self._spawn("routemesh-leader-election", self.elector.run())
            if self.settings.metrics_port:
                await self._serve_metrics()
            if not self.settings.distribution_tls:
                await self._serve_distribution()
            if self.settings.webhook_enabled:
                self._spawn("routemesh-webhook", self._serve_webhook())
        except BaseException:
            # kopf retries a failed startup with a new runtime; leave nothing open behind.
            logger.exception("operator runtime failed to start")
            await self.stop()
            raise

    async def _seed(self) -> None:
        for kind, (path, params) in WATCHED.items():
            listing = await self.api.request("GET", path, params=params or None)
            for item in listing.get("items") or ():
                # A list's items carry neither kind nor apiVersion; its envelope says them.
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", listing.get("apiVersion"))
                self.observe(kind, "ADDED", item)

    async def stop(self) -> None:
        """Cancel the background tasks and close the client."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    async def _serve_metrics(self) -> None:
        runner = web.AppRunner(self.metrics.app(), access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.settings.metrics_host, self.settings.metrics_port)
        await site.start()
        logger.info("operator metrics on port %s", self.settings.metrics_port)

    def _certificate_expiry(self) -> datetime | None:
        current = self._certificates.current if self._certificates is not None else None
        return certs.not_after(current.cert_pem) if current is not None else None

    async def _serve_distribution(self, shared: ssl.SSLContext | None = None) -> None:
        settings = self.settings
        runner = web.AppRunner(self.distribution.app(), access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        context = shared
        if shared is None and settings.distribution_cert_file and settings.distribution_key_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.distribution_cert_file, settings.distribution_key_file)
        site = web.TCPSite(
            runner, settings.distribution_host, settings.distribution_port, ssl_context=context
        )
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or ()
        self.distribution_port = sockets[0].getsockname()[1] if sockets else None
        logger.info("route-table distribution listening on port %s", self.distribution_port)

    async def _serve_webhook(self) -> None:
        settings = self.settings
        certificates = (
            WebhookCertificates.from_settings(self.api, settings, owners=self.anchor.references)
            if settings.webhook_certificates == "operator"
            else None
        )
        self._certificates = certificates
        server = AdmissionServer(
            self.board,
            lambda: settings.injection,
            NamespaceLabelCache(self.api),
            on_decision=self.metrics.count_admission,
        )
        # The CA is published only for a distribution server that serves with its certificate.
        if settings.distribution_tls and certificates is not None:
            self.reconciler.ca_bundle = lambda: certificates.ca_bundle or None
            self._spawn("routemesh-ca-publisher", self._follow_ca(certificates))
        elif settings.distribution_tls:  # cert-manager writes the CA beside the certificate
            self.reconciler.ca_bundle = lambda: _read_bytes(
                Path(settings.webhook_cert_dir) / "ca.crt"
            )
        await serve_webhook(
            server.app(),
            settings,
            certificates,
            self._webhook_listening,
            self._serve_distribution if settings.distribution_tls else None,
        )

    async def _follow_ca(self, certificates: WebhookCertificates) -> None:
        """Republish the CA into every namespace when it, or its ConfigMaps' owner, changes.

        Rare: a CA lasts years, and the owner (the webhook configuration) changes only when it
        was missing when the operator started, or was deleted and created again.
        """
        seen = (certificates.ca_bundle, self.anchor.references())
        while True:
            await asyncio.sleep(60)
            now = (certificates.ca_bundle, self.anchor.references())
            if now != seen:
                seen = now
                for namespace in self.inventory.namespaces():
                    self.reconciler.mark(namespace)

    def _webhook_listening(self, port: int) -> None:
        self.webhook_port = port

    async def _expire_sidecars(self) -> None:
        interval = min(30.0, self.settings.sidecar_forget_seconds / 2)
        while True:
            await asyncio.sleep(interval)
            for namespace in self.tracker.expire():
                self.reconciler.mark_status(namespace)

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Record what the cluster said, and mark the namespace when compile inputs changed."""
        metadata = body.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not namespace or not name:
            return
        if not self._watches(namespace):
            return
        deleted = event_type == "DELETED"
        if kind == "ConfigMap" or _owned(body):
            self.reconciler.owned_changed(kind, namespace, body, deleted)
        if kind == "ConfigMap":
            return
        changed = self._apply(kind, deleted, namespace, name, body)
        if changed:
            self.reconciler.mark(namespace)

    def _apply(
        self, kind: str, deleted: bool, namespace: str, name: str, body: Mapping[str, Any]
    ) -> bool:
        inventory = self.inventory
        if kind in ("RoutingPolicy", "ModelBackend"):
            return inventory.remove_resource(body) if deleted else inventory.upsert_resource(body)
        handlers: dict[str, tuple[Callable[[str, str], bool], Callable[[], bool]]] = {
            "Secret": (
                inventory.remove_secret,
                lambda: inventory.upsert_secret(namespace, name, (body.get("data") or {}).keys()),
            ),
            "Service": (
                inventory.remove_service,
                lambda: inventory.upsert_service(namespace, name, body.get("spec") or {}),
            ),
            "EndpointSlice": (
                inventory.remove_slice,
                lambda: inventory.upsert_slice(namespace, name, body),
            ),
            "Deployment": (
                inventory.remove_deployment,
                lambda: inventory.upsert_deployment(namespace, name, body),
            ),
        }
        if kind not in handlers:
            return False
        remove, upsert = handlers[kind]
        return remove(namespace, name) if deleted else upsert()

    def _watches(self, namespace: str) -> bool:
        patterns = self.settings.watch_namespaces
        return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)

    def _spawn(self, name: str, work: Any) -> None:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(_log_exit)
        self._tasks.append(task)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _owned(body: Mapping[str, Any]) -> bool:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY)


def _log_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.error("background task %s died", task.get_name(), exc_info=error)
