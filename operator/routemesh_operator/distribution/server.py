"""The distribution server: sidecars watch it for route tables, Envoy-style, and ACK or NACK them.

One endpoint, `GET /v1/routetable`, is both the watch and the acknowledgement, as in xDS: each
request carries the version the sidecar runs (`version`), and what it made of the last response
(`ack=<version>`, or `nack=<version>&error=<why>`). The server answers at once when the table
that selects the sidecar has another version, and otherwise holds the request until it changes
or `wait` seconds pass (then 304). The sidecar's `Authorization: Bearer` ServiceAccount token is
checked with a TokenReview; it may only read its own namespace. When the token is bound to a
pod (as projected tokens are), the pod name comes from the token and the labels from the Pod
itself, not from the request.

Which table a sidecar gets: the oldest published policy of its namespace whose selector matches
the labels it declares. It serves only what the board holds; it never compiles.

Shared health has its own pair: `POST /v1/health` takes a sidecar's breaker openings and
ejections, and `GET /v1/health` long-polls what several pods of the namespace agree on (see
`shared_health`). `POST /v1/shadow` takes a sidecar's shadow-route totals, which the status of
the policy it runs sums.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from routemesh_operator.distribution.auth import Identity, TokenReviewer, Unauthenticated
from routemesh_operator.distribution.board import Board, Published, selector_matches
from routemesh_operator.distribution.shared_health import SharedHealth, Subject
from routemesh_operator.distribution.sync import ShadowTotals, SyncTracker

logger = logging.getLogger(__name__)

__all__ = ["DistributionServer", "parse_labels", "selector_matches"]

MAX_WAIT_SECONDS = 300.0
SIDECARS_HEADER = "x-routemesh-sidecars"
MAX_ERROR_LENGTH = 2048


def parse_labels(values: list[str]) -> dict[str, str]:
    """`label=key=value` query parameters as a dict."""
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise web.HTTPBadRequest(text=f"label {item!r} is not key=value")
        labels[key] = value
    return labels


class DistributionServer:
    """The aiohttp application, and what it needs: the board, the tracker and the reviewer."""

    def __init__(
        self,
        board: Board,
        tracker: SyncTracker,
        reviewer: TokenReviewer,
        on_sync_change: Callable[[str], None],
        *,
        default_wait: float = 30.0,
        shared_health: SharedHealth | None = None,
        pod_labels: Callable[[str, str], Awaitable[dict[str, str]]] | None = None,
        serving: Callable[[], bool] = lambda: True,
        standby_reason: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._board = board
        self._tracker = tracker
        self._reviewer = reviewer
        self._on_sync_change = on_sync_change
        self._default_wait = default_wait
        self._closing = asyncio.Event()
        self.shared_health = shared_health or SharedHealth()
        self._pod_labels = pod_labels
        self._serving = serving
        self._standby_reason = standby_reason

    def app(self) -> web.Application:
        """The web application to serve."""
        app = web.Application()
        app.router.add_get("/v1/routetable", self.watch)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_post("/v1/health", self.report_health)
        app.router.add_get("/v1/health", self.watch_health)
        app.router.add_post("/v1/shadow", self.report_shadow)
        app.on_shutdown.append(self._shutdown)
        return app

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready when this replica leads (or runs alone): the Service sends sidecars here only."""
        if not self._serving():
            body: dict[str, str] = {"status": "standby"}
            reason = self._standby_reason()
            if reason:
                body["reason"] = reason
            return web.json_response(body, status=503)
        return web.json_response({"status": "ready", "revision": self._board.revision})

    async def _shutdown(self, app: web.Application) -> None:
        # Held watches end now (304) instead of holding the operator's exit for their `wait`.
        self._closing.set()

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness of the distribution server."""
        return web.json_response({"status": "ok", "revision": self._board.revision})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        """Report the last response's fate, then answer with a newer table or wait for one."""
        identity = await self._identify(request)
        query = request.query
        namespace = query.get("namespace", identity.namespace)
        if namespace != identity.namespace:
            raise _error(
                web.HTTPForbidden,
                f"ServiceAccount {identity.service_account!r} of namespace "
                f"{identity.namespace!r} may not read the route tables of {namespace!r}",
            )
        pod = identity.pod or query.get("pod")
        if not pod:
            raise _error(web.HTTPBadRequest, "the pod parameter is required")
        labels = parse_labels(query.getall("label", []))
        if identity.pod and self._pod_labels is not None:
            # A pod-bound token names the pod: its real labels, not the declared ones, decide.
            labels = await self._pod_labels(namespace, identity.pod)
        have = query.get("version", "")
        wait = min(float(query.get("wait", self._default_wait)), MAX_WAIT_SECONDS)
        deadline = asyncio.get_running_loop().time() + wait
        revision = self._board.revision
        published = self._board.select(namespace, labels)
        self._report(namespace, pod, published, query)
        while published is None or published.table.version_label == have:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or not await self._changed_within(revision, remaining):
                return web.Response(status=304)
            revision = self._board.revision
            published = self._board.select(namespace, labels)
        return _table_response(published)

    async def report_health(self, request: web.Request) -> web.Response:
        """A sidecar's breaker openings and ejections (and their ends), for shared health."""
        identity = await self._identify(request)
        try:
            body = await request.json()
            pod = identity.pod or str(body["pod"])
            reports = [_parse_report(item) for item in body["reports"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise _error(web.HTTPBadRequest, f"not a health report: {exc}") from exc
        for subject, bad, seconds, reason in reports:
            self.shared_health.report(
                identity.namespace, pod, subject, bad=bad, seconds=seconds, reason=reason
            )
        return web.json_response({"revision": self.shared_health.revision(identity.namespace)})

    async def report_shadow(self, request: web.Request) -> web.Response:
        """A sidecar's shadow-route totals by policy, for the policies' status.shadow."""
        identity = await self._identify(request)
        try:
            body = await request.json()
            pod = identity.pod or str(body["pod"])
            totals = {
                str(policy): _shadow_totals(item) for policy, item in body["policies"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _error(web.HTTPBadRequest, f"not a shadow report: {exc}") from exc
        if self._tracker.report_shadow(identity.namespace, pod, totals):
            self._on_sync_change(identity.namespace)
        return web.json_response({"accepted": len(totals)})

    async def watch_health(self, request: web.Request) -> web.Response:
        """The namespace's shared health, at once when it moved past `revision`, else held."""
        identity = await self._identify(request)
        namespace = identity.namespace
        have = int(request.query.get("revision", "-1"))
        wait = min(float(request.query.get("wait", self._default_wait)), MAX_WAIT_SECONDS)
        shared = self.shared_health
        revision = shared.revision(namespace)
        if revision == have and wait > 0:
            await self._until(lambda: shared.wait_for_change(namespace, have, wait), wait)
            revision = shared.revision(namespace)
        # Every answer says how many sidecars share the namespace's provider accounts, so each
        # keeps to its share of a backend's rate limits.
        headers = {SIDECARS_HEADER: str(max(1, self._tracker.sidecars_in(namespace)))}
        if revision == have:
            return web.Response(status=304, headers=headers)
        entries = [entry.as_json() for entry in shared.view(namespace)]
        return web.json_response({"revision": revision, "entries": entries}, headers=headers)

    async def _changed_within(self, revision: int, seconds: float) -> bool:
        """Whether the board moved past `revision` in time (False on timeout or shutdown)."""
        return await self._until(lambda: self._board.wait_for_change(revision), seconds)

    async def _until(self, change: Callable[[], Awaitable[object]], seconds: float) -> bool:
        """Wait for `change()`, at most `seconds`, and never past shutdown; whether it came."""
        if self._closing.is_set():
            return False
        waiting = asyncio.ensure_future(change())
        closing = asyncio.ensure_future(self._closing.wait())
        done, pending = await asyncio.wait(
            {waiting, closing}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        return waiting in done

    async def _identify(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        try:
            return await self._reviewer.authenticate(token)
        except Unauthenticated as exc:
            raise _error(web.HTTPUnauthorized, str(exc)) from exc

    def _report(
        self, namespace: str, pod: str, published: Published | None, query: Mapping[str, str]
    ) -> None:
        policy = published.policy if published is not None else None
        nacked = query.get("nack")
        error = (query.get("error") or "")[:MAX_ERROR_LENGTH] or None
        if nacked:
            logger.warning(
                "sidecar %s/%s refused route table %s: %s", namespace, pod, nacked, error
            )
        if self._tracker.report(
            namespace, pod, policy, acked=query.get("ack"), nacked=nacked, error=error
        ):
            self._on_sync_change(namespace)


def _parse_report(item: dict[str, Any]) -> tuple[Subject, bool, float, str]:
    endpoint = item.get("endpoint")
    subject = (str(item["backend"]), str(endpoint) if endpoint else None)
    reason = str(item.get("reason", ""))[:MAX_ERROR_LENGTH]
    return subject, bool(item["bad"]), float(item.get("seconds", 0)), reason


def _shadow_totals(item: dict[str, Any]) -> ShadowTotals:
    totals = ShadowTotals(
        evaluated=int(item["evaluated"]),
        divergent=int(item["divergent"]),
        live_cost_usd=float(item.get("live_cost_usd", 0)),
        shadow_cost_usd=float(item.get("shadow_cost_usd", 0)),
    )
    if totals.evaluated < 0 or not 0 <= totals.divergent <= totals.evaluated:
        raise ValueError("counts must satisfy 0 <= divergent <= evaluated")
    return totals


def _table_response(published: Published) -> web.Response:
    # The table is already JSON (pydantic's serializer); wrap it without parsing it again.
    body = '{"policy": %s, "version": %s, "table": %s}' % (  # noqa: UP031
        json.dumps(published.policy),
        json.dumps(published.table.version_label),
        published.table.model_dump_json(),
    )
    return web.Response(body=body.encode(), content_type="application/json")


def _error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    """An HTTP error with a JSON body the sidecar can log as it is."""
    return kind(text=json.dumps({"error": {"message": message}}), content_type="application/json")
