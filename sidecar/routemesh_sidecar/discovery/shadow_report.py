"""The shadow report: this sidecar's shadow totals, posted to the operator for the policy's status.

A named task posts the ledger's totals (`telemetry.shadow`) to the operator's `POST /v1/shadow`
every `interval` seconds when they changed. The totals are cumulative since the sidecar started,
so a report that fails loses nothing: the next one carries it. Transport only: it never reads
requests or routes, and a failure to reach the operator is logged and never affects a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from routemesh_sidecar.discovery.watch import WatchTarget, auth_headers, open_session
from routemesh_sidecar.telemetry.shadow import ShadowLedger

log = logging.getLogger(__name__)


class ShadowReporter:
    """Posts the shadow ledger's totals; see the module docstring."""

    def __init__(
        self,
        target: WatchTarget,
        ledger: ShadowLedger,
        *,
        interval: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.target = target
        self.ledger = ledger
        self.interval = interval
        self.sleep = sleep
        self.sent_revision = 0
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Report until cancelled."""
        while True:
            await self.sleep(self.interval)
            try:
                await self.report_once()
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("shadow report failed (%s); the next one carries it", exc)

    async def report_once(self) -> bool:
        """Post the totals if they changed since the last report; return whether it posted."""
        revision = self.ledger.revision
        if revision == self.sent_revision:
            return False
        body = {"pod": self.target.pod, "policies": self.ledger.snapshot()}
        async with self._ensure_session().post(
            self.target.url.rstrip("/") + "/v1/shadow",
            json=body,
            headers=auth_headers(self.target),
            timeout=aiohttp.ClientTimeout(10),
        ) as response:
            if response.status != 200:
                raise ValueError(f"operator answered {response.status}: {await response.text()}")
        self.sent_revision = revision
        return True

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = open_session(self.target)
        return self._session
