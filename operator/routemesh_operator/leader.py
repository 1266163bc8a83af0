"""Leader election on a coordination.k8s.io Lease, for more than one operator replica.

Every replica watches, compiles and keeps its board warm; only the leader writes (status,
ConfigMaps, owned workloads, Events) and reports ready, so the Service sends sidecars to it
alone and the sync counts come from one place. A follower takes over when the leader's lease
runs out (`lease_seconds` after its last renewal), already holding the compiled tables.

The elector is one named task: it tries to acquire or renew every `renew_seconds`, and calls
`on_change(leading)` when leadership changes. A replica that cannot renew in time steps down
before another can take over. The clock is injected; the API client is the operator's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from routemesh_operator.kube import ApiError, KubeApi, namespaced

logger = logging.getLogger(__name__)

LEASES = "coordination.k8s.io/v1"


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_micro_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


class LeaseElector:
    """Holds (or waits for) the operator's Lease."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        identity: str,
        *,
        name: str = "routemesh-operator",
        lease_seconds: float = 15.0,
        renew_seconds: float = 5.0,
        on_change: Callable[[bool], None] = lambda leading: None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        owners: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self._api = api
        self._path = namespaced(LEASES, namespace, "leases", name)
        self._collection = namespaced(LEASES, namespace, "leases")
        self._name = name
        self.identity = identity
        self._lease_seconds = lease_seconds
        self._renew_seconds = renew_seconds
        self._on_change = on_change
        self._wall = wall
        self._monotonic = monotonic
        self._owners = owners  # written on every renewal, so an older Lease is adopted
        self.leading = False
        self._renewed_at = 0.0
        self._namespace = namespace
        self.problem: str | None = None  # why this replica cannot lead, for readiness and logs

    async def run(self) -> None:
        """Try to lead until cancelled; step down (and say so) on the way out."""
        try:
            while True:
                try:
                    self._set(await self.try_once())
                    self._report(None)
                except (ApiError, OSError, TimeoutError) as exc:
                    self._report(self._explain(exc))
                    # Without a renewal in time another replica may lead: stop writing first.
                    if self._monotonic() - self._renewed_at > self._lease_seconds * 2 / 3:
                        self._set(False)
                await asyncio.sleep(self._renew_seconds)
        finally:
            self._set(False)

    async def try_once(self) -> bool:
        """One acquire-or-renew; return whether this replica leads now."""
        lease = await self._api.get(self._path)
        now = self._wall()
        if lease is None:
            await self._api.create(self._collection, self._body(now, transitions=0))
            self._renewed_at = self._monotonic()
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        if holder != self.identity and not self._expired(spec, now):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        body = self._body(now, transitions)
        if holder == self.identity and spec.get("acquireTime"):
            body["spec"]["acquireTime"] = spec["acquireTime"]
        # The resourceVersion makes this a compare-and-swap: two followers cannot both win.
        body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        try:
            await self._api.request("PUT", self._path, body)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        self._renewed_at = self._monotonic()
        return True

    def _expired(self, spec: dict[str, Any], now: datetime) -> bool:
        renewed = spec.get("renewTime")
        duration = float(spec.get("leaseDurationSeconds") or self._lease_seconds)
        if not renewed:
            return True
        return now > _parse_micro_time(renewed) + timedelta(seconds=duration)

    def _body(self, now: datetime, transitions: int) -> dict[str, Any]:
        return {
            "apiVersion": LEASES,
            "kind": "Lease",
            "metadata": {"name": self._name, "ownerReferences": self._owners()},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self._lease_seconds)),
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": transitions,
            },
        }

    def _explain(self, exc: BaseException) -> str:
        """What stops this replica from taking the Lease, with the fix when it is known."""
        if isinstance(exc, ApiError) and exc.status == 404:
            return (
                f"cannot take the Lease {self._name!r}: namespace {self._namespace!r} does not "
                f"exist, so this replica never leads and writes nothing. Create it (kubectl "
                f"create namespace {self._namespace}), set ROUTEMESH_OPERATOR_NAMESPACE to the "
                "namespace the operator runs in, or run one replica with "
                "ROUTEMESH_OPERATOR_STANDALONE=true"
            )
        if isinstance(exc, ApiError) and exc.status == 403:
            return (
                f"cannot take the Lease {self._name!r} in namespace {self._namespace!r}: {exc}. "
                "Grant get, create and update on coordination.k8s.io leases there (the chart's "
                "Role does)"
            )
        return f"lease {self._name!r}: {exc}"

    def _report(self, problem: str | None) -> None:
        """Log a new problem loudly once (an error when it has a known fix), and its end."""
        if problem == self.problem:
            return
        if problem is None:
            logger.info("lease %s: reachable again", self._name)
        elif problem.startswith("cannot take"):
            logger.error("%s", problem)
        else:
            logger.warning("%s", problem)
        self.problem = problem

    def _set(self, leading: bool) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        logger.info("%s %s the lease %s", self.identity, "holds" if leading else "lost", self._name)
        self._on_change(leading)
