"""The discovery source: watch the operator for route tables, and ACK or NACK each one.

It implements the same `RouteTableSource` interface as the file source. Each request is a long
poll to the operator's `GET /v1/routetable`, carrying the version this sidecar runs and its
verdict on the last response (`ack=` after a table was swapped in, `nack=` with the error after
one was refused), as Envoy's xDS does. The ServiceAccount token is re-read from its file before
every request, because the kubelet rotates projected tokens.

When the operator cannot be reached at start, the sidecar starts from its fallbacks (the last
good table it wrote to disk, then the operator's ConfigMap copy), and keeps retrying the operator
with exponential backoff and full jitter. Every table it swaps in is written back to the
last-good file. It never routes, and never writes anything but that file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from routemesh_sidecar.backoff import full_jitter
from routemesh_sidecar.discovery.file import FileRouteTableSource
from routemesh_sidecar.routetable import ActiveRouteTable, RouteTable, RouteTableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchTarget:
    """Where to watch, and who this sidecar is."""

    url: str  # the operator's distribution server, e.g. https://routemesh-operator.ns.svc:9443
    namespace: str
    pod: str
    labels: dict[str, str] = field(default_factory=dict)
    token_file: Path | None = None
    ca_file: Path | None = None


@dataclass
class Verdict:
    """What this sidecar will say about the last table it was sent."""

    ack: str | None = None
    nack: str | None = None
    error: str | None = None


class WatchRouteTableSource:
    """Long-polls the operator; see the module docstring."""

    def __init__(
        self,
        target: WatchTarget,
        active: ActiveRouteTable,
        *,
        fallbacks: Sequence[Path] = (),
        last_good: Path | None = None,
        wait: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.target = target
        self.active = active
        self.fallbacks = list(fallbacks)
        self.last_good = last_good
        self.wait = wait
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.verdict = Verdict()
        self.connected = False  # whether the last request reached the operator
        self._session: aiohttp.ClientSession | None = None
        if last_good is not None:
            active.on_swap(self._write_last_good)

    async def load_once(self) -> None:
        """Ask the operator without waiting; fall back to the files when it cannot answer."""
        try:
            await self.poll_once(wait=0.0)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("operator unreachable at start (%s); trying the fallback tables", exc)
        if self.active.current is None:
            await self._load_fallback()

    async def run(self) -> None:
        """Watch until cancelled; a failure is logged and retried with backoff."""
        failures = 0
        try:
            while True:
                try:
                    await self.poll_once(wait=self.wait)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning("route-table watch failed (%s); retrying in %.1fs", exc, delay)
                    await self.sleep(delay)
        finally:
            await self.close()

    async def poll_once(self, wait: float) -> bool:
        """One watch request; return whether a new table was offered."""
        response = await self._request(wait)
        self.connected = True
        if response is None:
            return False
        version = str(response.get("version", ""))
        try:
            table = RouteTable.model_validate(response.get("table"))
            # A table this sidecar cannot run (TableRefused) is NACKed like an invalid one.
            swapped = await self.active.admit(table)
        except ValueError as exc:  # pydantic's ValidationError and TableRefused are ValueErrors
            reason = f"route table {version} refused: {exc}"
            self.active.refuse(reason)
            self.verdict = Verdict(nack=version, error=str(exc)[:2000])
            log.error("%s; keeping version %s", reason, _label(self.active))
            return False
        self.verdict = Verdict(ack=table.version_label)
        if swapped:
            log.info("route table %s received from the operator", table.version_label)
        return swapped

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, wait: float) -> dict[str, Any] | None:
        session = self._ensure_session()
        params: list[tuple[str, str]] = [
            ("namespace", self.target.namespace),
            ("pod", self.target.pod),
            ("version", _label(self.active, empty="")),
            ("wait", f"{wait:g}"),
        ]
        params += [("label", f"{k}={v}") for k, v in sorted(self.target.labels.items())]
        if self.verdict.ack:
            params.append(("ack", self.verdict.ack))
        if self.verdict.nack:
            params += [("nack", self.verdict.nack), ("error", self.verdict.error or "")]
        headers = auth_headers(self.target)
        timeout = aiohttp.ClientTimeout(total=wait + 10, connect=5)
        url = self.target.url.rstrip("/") + "/v1/routetable"
        async with session.get(url, params=params, headers=headers, timeout=timeout) as response:
            if response.status == 304:
                return None
            text = await response.text()
            if response.status != 200:
                raise WatchRefused(response.status, text)
            body: dict[str, Any] = json.loads(text)
            return body

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = open_session(self.target)
        return self._session

    def _backoff(self, failures: int) -> float:
        # Full jitter: sidecars that lost the operator together do not reconnect in step.
        return full_jitter(self.backoff_base, self.backoff_max, failures - 1, self.rng)

    async def _load_fallback(self) -> None:
        for path in ([self.last_good] if self.last_good else []) + self.fallbacks:
            if not path.exists():
                continue
            await FileRouteTableSource(path, self.active).load_once()
            if self.active.current is not None:
                log.info("started from fallback route table %s", path)
                return

    def _write_last_good(self, table: RouteTable) -> None:
        if self.last_good is None:
            return
        try:
            self.last_good.parent.mkdir(parents=True, exist_ok=True)
            partial = self.last_good.with_suffix(".partial")
            partial.write_text(table.model_dump_json())
            os.replace(partial, self.last_good)  # atomic: a crash never leaves half a table
        except OSError as exc:
            log.warning("cannot keep the last good route table at %s: %s", self.last_good, exc)


class WatchRefused(RouteTableError):
    """The operator answered the watch with an error status."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        super().__init__(f"operator answered {status}: {body[:500]}")


def open_session(target: WatchTarget) -> aiohttp.ClientSession:
    """An HTTP session to the operator, trusting its CA when one is given."""
    context: ssl.SSLContext | bool = True
    if target.ca_file is not None:
        context = ssl.create_default_context(cafile=str(target.ca_file))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


def auth_headers(target: WatchTarget) -> dict[str, str]:
    """The bearer token, re-read from its file each time: the kubelet rotates projected tokens."""
    if target.token_file is None:
        return {}
    try:
        return {"Authorization": f"Bearer {target.token_file.read_text().strip()}"}
    except OSError as exc:
        log.warning("cannot read the ServiceAccount token %s: %s", target.token_file, exc)
        return {}


def _label(active: ActiveRouteTable, empty: str = "none") -> str:
    return active.current.version_label if active.current else empty


def read_downward_labels(path: Path) -> dict[str, str]:
    """Pod labels from a downward-API file (`key="value"` per line)."""
    labels = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            labels[key.strip()] = json.loads(value) if value.startswith('"') else value
    return labels
