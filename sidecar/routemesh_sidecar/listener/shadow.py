"""Shadow routes on live traffic: the decision they would make, its predicted cost, and mirrors.

The listener asks `Shadowing.evaluate` once per request whose route table has shadow routes,
after the live decision; the result goes on the route span at once, and `settle` records how the
request ended: the live cost against the shadow's predicted cost (the live answer's own tokens at
the shadow choice's prices: a model, since the shadow never ran), in the ledger the operator
collects and in the metrics. A table with `mirror_percent` also sends that share of requests to
the shadow's choice in a background task and discards the answer, counting its cost apart.

Mirrors never delay or change the live answer: they start after the live decision, run as
their own tasks, and are dropped first when the sidecar is busy (too many live requests, or too
many mirrors, in flight). Nothing here routes live traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import RouteTable
from routemesh_sidecar.routing.contracts import Candidate, RoutingRequest
from routemesh_sidecar.routing.pipeline import Decision, Router, ShadowDecision
from routemesh_sidecar.telemetry.accounting import request_cost
from routemesh_sidecar.telemetry.metrics import Metrics
from routemesh_sidecar.telemetry.shadow import ShadowLedger
from routemesh_sidecar.upstream.classify import UpstreamFailure
from routemesh_sidecar.upstream.client import (
    AttemptTarget,
    AttemptTimeouts,
    DownstreamCall,
    UpstreamClient,
    UpstreamStream,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MirrorLimits:
    """When mirrors are dropped: the sidecar's live requests in flight, and mirrors in flight."""

    busy_requests: int = 64
    max_in_flight: int = 8


@dataclass(frozen=True)
class Shadowed:
    """One request's shadow decision, beside the live one."""

    policy: str
    decision: ShadowDecision
    differs: bool


@dataclass
class Shadowing:
    """Shadow evaluation, accounting and mirrors, shared by all requests of a sidecar."""

    router: Router
    client: UpstreamClient
    metrics: Metrics
    rng: random.Random
    ledger: ShadowLedger = field(default_factory=ShadowLedger)
    limits: MirrorLimits = field(default_factory=MirrorLimits)
    live_in_flight: int = 0  # the listener keeps it
    _mirrors: set[asyncio.Task[None]] = field(default_factory=set)

    def evaluate(
        self, table: RouteTable, live: Decision, request: RoutingRequest, call: DownstreamCall
    ) -> Shadowed | None:
        """The shadow decision for a request (None without shadow routes); maybe a mirror."""
        decision = self.router.shadow(table, request)
        if decision is None:
            return None
        live_label = live.plan[0].label if live.plan else None
        shadowed = Shadowed(live.route.policy, decision, decision.label != live_label)
        outcome = "none" if decision.choice is None else "different" if shadowed.differs else "same"
        self.metrics.of(
            self.metrics.shadow_decisions, shadowed.policy, decision.route or "", outcome
        ).inc()
        percent = table.shadow.mirror_percent if table.shadow is not None else 0.0
        # The draw only when mirroring is on: a table without mirrors uses no randomness here.
        if decision.choice is not None and percent > 0 and self.rng.random() * 100 < percent:
            self._mirror(shadowed.policy, decision.choice, call, live)
        return shadowed

    def settle(
        self, shadowed: Shadowed, usage: Usage | None, live_cost: float | None
    ) -> dict[str, Any]:
        """Record how the request ended; return the route span's shadow cost attributes."""
        choice = shadowed.decision.choice
        shadow_cost = None
        if choice is not None and usage is not None and live_cost is not None:
            shadow_cost = request_cost(usage, choice.model_info.pricing)
            metrics = self.metrics
            metrics.of(metrics.shadow_cost, shadowed.policy).inc(shadow_cost)
            metrics.of(metrics.shadow_live_cost, shadowed.policy).inc(live_cost)
        self.ledger.record(
            shadowed.policy,
            differs=shadowed.differs,
            live_cost=live_cost if shadow_cost is not None else None,
            shadow_cost=shadow_cost,
        )
        if shadow_cost is None or live_cost is None:
            return {}
        return {
            "routemesh.shadow.cost_usd": shadow_cost,
            "routemesh.shadow.cost_change_usd": shadow_cost - live_cost,
        }

    def _mirror(self, policy: str, choice: Candidate, call: DownstreamCall, live: Decision) -> None:
        metrics = self.metrics
        labels = (policy, choice.target.backend, choice.target.model)
        if (
            self.live_in_flight > self.limits.busy_requests
            or len(self._mirrors) >= self.limits.max_in_flight
        ):
            metrics.of(metrics.mirror_requests, *labels, "dropped").inc()
            return
        timeouts = live.route.timeouts
        task = asyncio.create_task(
            self._send_mirror(
                labels,
                choice,
                call,
                AttemptTimeouts(timeouts.connect, timeouts.first_token, timeouts.total),
            ),
            name=f"mirror {choice.label}",
        )
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _send_mirror(
        self,
        labels: tuple[str, str, str],
        choice: Candidate,
        call: DownstreamCall,
        timeouts: AttemptTimeouts,
    ) -> None:
        """Send the request to the shadow's choice and discard the answer; count its cost."""
        metrics = self.metrics
        endpoint = choice.backend.endpoints[0]
        target = AttemptTarget(
            choice.target.backend, choice.backend, endpoint, choice.target.model, choice.model_info
        )
        try:
            result = await self.client.send(call, target, timeouts, {})
            if isinstance(result, UpstreamStream):
                async with contextlib.aclosing(result.relay()) as relayed:
                    async for _ in relayed:
                        pass
        except UpstreamFailure as failure:
            metrics.of(metrics.mirror_requests, *labels, failure.error_class).inc()
            return
        except Exception as exc:  # a mirror's failure is logged and never reaches a request
            log.info("mirror to %s failed: %r", choice.label, exc)
            metrics.of(metrics.mirror_requests, *labels, "stream_broken").inc()
            return
        metrics.of(metrics.mirror_requests, *labels, "ok").inc()
        metrics.of(metrics.mirror_cost, *labels).inc(
            request_cost(result.usage, choice.model_info.pricing)
        )

    async def close(self) -> None:
        """Cancel the mirrors in flight (at shutdown)."""
        for task in list(self._mirrors):
            task.cancel()
        await asyncio.gather(*self._mirrors, return_exceptions=True)


def shadow_attributes(shadowed: Shadowed) -> dict[str, Any]:
    """The route span's record of the shadow decision."""
    decision = shadowed.decision
    return {
        "routemesh.shadow.route": decision.route or "",
        "routemesh.shadow.choice": decision.label,
        "routemesh.shadow.differs": shadowed.differs,
    }
