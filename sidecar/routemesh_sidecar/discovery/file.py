"""A route-table source that reads a file and reloads it when it changes.

Standalone mode (`routemesh-sidecar --route-table FILE`) and the ConfigMap fallback use it; the
operator's watch-based source implements the same `RouteTableSource` interface. It polls the
file's modification time and size rather than using inotify, because a ConfigMap volume is
updated by swapping a symlink, which inotify on the file itself does not see.

It only reads; it never writes the file and never routes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from routemesh_sidecar.routetable import (
    ActiveRouteTable,
    RouteTableError,
    TableRefused,
    load_route_table_file,
)

log = logging.getLogger(__name__)


class RouteTableSource(Protocol):
    """Something that keeps an `ActiveRouteTable` up to date."""

    async def load_once(self) -> None:
        """Load the current table (or record why it was refused)."""

    async def run(self) -> None:
        """Keep loading changes until cancelled."""

    async def close(self) -> None:
        """Release what the source holds (connections); called once the sidecar stops."""


class FileRouteTableSource:
    """Loads a route table file, then reloads it whenever its stat changes."""

    def __init__(self, path: Path, active: ActiveRouteTable, interval: float = 1.0) -> None:
        self.path = path
        self.active = active
        self.interval = interval
        self._seen: tuple[float, int, int] | None = None

    def _stat(self) -> tuple[float, int, int] | None:
        try:
            # resolve() follows the ConfigMap's ..data symlink swap to the real file.
            stat = self.path.resolve().stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size, stat.st_ino)

    async def load_once(self) -> None:
        """Read the file now; swap the table in, or keep the old one and record why not."""
        self._seen = self._stat()
        try:
            table = load_route_table_file(self.path)
        except RouteTableError as exc:
            reason = f"route table {self.path} refused: {exc}"
            self.active.refuse(reason)
            log.error("%s; keeping version %s", reason, _label(self.active))
            return
        try:
            swapped = await self.active.admit(table)
        except TableRefused as exc:
            log.error(
                "route table %s refused: %s; keeping version %s",
                self.path,
                exc,
                _label(self.active),
            )
            return
        if swapped:
            log.info("route table %s loaded from %s", table.version_label, self.path)

    async def poll_once(self) -> bool:
        """Reload if the file changed since the last load; return whether it had changed."""
        if self._stat() == self._seen:
            return False
        await self.load_once()
        return True

    async def run(self) -> None:
        """Poll until cancelled. A failure to reload is logged, never fatal."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("route table file poll failed; will retry")

    async def close(self) -> None:
        """Nothing to release: the file is opened and closed on each read."""


def _label(active: ActiveRouteTable) -> str:
    return active.current.version_label if active.current else "none"
