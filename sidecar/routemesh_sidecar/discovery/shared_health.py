"""The shared-health channel to the operator: report what this sidecar saw, hear what many saw.

The app feeds `report` with this sidecar's breaker openings and endpoint ejections (and their
ends); a named task posts them in batches to the operator's `POST /v1/health`. Another long-polls
`GET /v1/health` and hands each new set of shared entries (subjects that several pods of the
namespace saw fail) to the `apply` callback, which opens the local breaker or ejects the endpoint
unless this sidecar's own evidence is fresher. Each answer also says how many sidecars share the
namespace's provider accounts (`on_peers`), for each backend's rate-limit share.

Transport only: it knows nothing of breakers (discovery sits beside upstream in the layers), and
it never routes. A failure to reach the operator is logged and retried with backoff and jitter;
it never affects requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from routemesh_sidecar.backoff import full_jitter
from routemesh_sidecar.discovery.watch import WatchTarget, auth_headers, open_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthReport:
    """One thing this sidecar saw: a subject going bad (for `seconds`) or recovering."""

    backend: str
    endpoint: str | None
    bad: bool
    seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class SharedEntry:
    """A subject several pods saw fail, to avoid for `seconds` from now."""

    backend: str
    endpoint: str | None
    seconds: float
    reporters: int
    reason: str


class SharedHealthChannel:
    """Posts reports and long-polls shared entries; see the module docstring."""

    def __init__(
        self,
        target: WatchTarget,
        apply: Callable[[list[SharedEntry]], None],
        *,
        wait: float = 30.0,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_peers: Callable[[int], None] | None = None,
    ) -> None:
        self.target = target
        self.apply = apply
        self.on_peers = on_peers
        self.wait = wait
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.revision = -1
        self._pending: list[HealthReport] = []
        self._has_pending = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def report(self, report: HealthReport) -> None:
        """Queue a report; the sender task posts it soon."""
        self._pending.append(report)
        self._has_pending.set()

    async def run_sender(self) -> None:
        """Post queued reports until cancelled."""
        failures = 0
        while True:
            await self._has_pending.wait()
            self._has_pending.clear()
            batch, self._pending = self._pending, []
            try:
                await self.send(batch)
                failures = 0
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                failures += 1
                self._pending[:0] = batch[-100:]  # keep the newest, try again
                self._has_pending.set()
                await self._back_off(failures, "health report", exc)

    async def run_watcher(self) -> None:
        """Long-poll shared entries until cancelled."""
        failures = 0
        while True:
            try:
                await self.poll_once(self.wait)
                failures = 0
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                failures += 1
                await self._back_off(failures, "shared-health watch", exc)

    async def send(self, batch: list[HealthReport]) -> None:
        """One POST of reports."""
        if not batch:
            return
        body = {
            "pod": self.target.pod,
            "reports": [
                {
                    "backend": r.backend,
                    "endpoint": r.endpoint,
                    "bad": r.bad,
                    "seconds": r.seconds,
                    "reason": r.reason,
                }
                for r in batch
            ],
        }
        async with self._ensure_session().post(
            self._url(), json=body, headers=self._headers(), timeout=aiohttp.ClientTimeout(10)
        ) as response:
            if response.status != 200:
                raise ValueError(f"operator answered {response.status}: {await response.text()}")

    async def poll_once(self, wait: float) -> bool:
        """One long poll; return whether new entries were applied."""
        params = {
            "namespace": self.target.namespace,
            "revision": str(self.revision),
            "wait": f"{wait:g}",
        }
        timeout = aiohttp.ClientTimeout(total=wait + 10, connect=5)
        async with self._ensure_session().get(
            self._url(), params=params, headers=self._headers(), timeout=timeout
        ) as response:
            self._peers(response.headers.get("x-routemesh-sidecars"))
            if response.status == 304:
                return False
            text = await response.text()
            if response.status != 200:
                raise ValueError(f"operator answered {response.status}: {text[:300]}")
        body: dict[str, Any] = json.loads(text)
        self.revision = int(body["revision"])
        self.apply([_entry(item) for item in body.get("entries") or ()])
        return True

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _peers(self, header: str | None) -> None:
        """How many sidecars share the namespace's provider accounts, as the operator counts."""
        if self.on_peers is None or header is None:
            return
        try:
            self.on_peers(max(1, int(header)))
        except ValueError:
            log.warning("the operator's sidecar count %r is not a number", header)

    def _url(self) -> str:
        return self.target.url.rstrip("/") + "/v1/health"

    def _headers(self) -> dict[str, str]:
        return auth_headers(self.target)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = open_session(self.target)
        return self._session

    async def _back_off(self, failures: int, what: str, exc: Exception) -> None:
        delay = full_jitter(0.5, self.backoff_max, failures - 1, self.rng)
        log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
        await self.sleep(delay)


def _entry(item: dict[str, Any]) -> SharedEntry:
    endpoint = item.get("endpoint")
    return SharedEntry(
        backend=str(item["backend"]),
        endpoint=str(endpoint) if endpoint else None,
        seconds=float(item["seconds"]),
        reporters=int(item.get("reporters", 0)),
        reason=str(item.get("reason", "")),
    )
