"""Shared health: what several sidecars saw go wrong with a backend, for every sidecar to avoid.

Sidecars report each breaker opening and endpoint ejection (and their end) to the distribution
server. A subject (a backend, or one endpoint of it) becomes shared when at least
`min_reporters` different pods of the namespace report it within `window` seconds; it stays
shared while that holds, for the shortest time the reporters asked for (never longer than
`max_seconds`). The server long-polls the namespace's shared state to its sidecars, which open
their own breaker (or eject the endpoint) unless their own recent evidence says otherwise.

One pod is never enough: a single sidecar's bad luck or bad network must not spread. Durations
travel as seconds, never as clock readings, since pods do not share a clock. No I/O; the clock is
injected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

Subject = tuple[str, str | None]  # (backend, endpoint URL or None for the whole backend)


@dataclass(frozen=True)
class SharedEntry:
    """One subject the namespace's sidecars should avoid, and for how long from now."""

    backend: str
    endpoint: str | None
    seconds: float
    reporters: int
    reason: str

    def as_json(self) -> dict[str, object]:
        """The wire form sidecars read."""
        return {
            "backend": self.backend,
            "endpoint": self.endpoint,
            "seconds": round(self.seconds, 3),
            "reporters": self.reporters,
            "reason": self.reason,
        }


@dataclass
class _Report:
    at: float
    until: float
    reason: str


class SharedHealth:
    """Reports by namespace, subject and pod; a revision per namespace wakes the watchers."""

    def __init__(
        self,
        min_reporters: int = 2,
        window: float = 60.0,
        max_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min_reporters = min_reporters
        self._window = window
        self._max_seconds = max_seconds
        self._clock = clock
        self._reports: dict[str, dict[Subject, dict[str, _Report]]] = {}
        self._revisions: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._last_view: dict[str, list[tuple[str, str | None, int]]] = {}

    def report(
        self,
        namespace: str,
        pod: str,
        subject: Subject,
        *,
        bad: bool,
        seconds: float = 0.0,
        reason: str = "",
    ) -> None:
        """A sidecar saw a subject fail (`bad`, for `seconds`) or recover."""
        now = self._clock()
        pods = self._reports.setdefault(namespace, {}).setdefault(subject, {})
        if bad:
            seconds = max(0.0, min(seconds, self._max_seconds))
            pods[pod] = _Report(now, now + seconds, reason)
        else:
            pods.pop(pod, None)
        self._refresh(namespace)

    def view(self, namespace: str) -> list[SharedEntry]:
        """The subjects shared now, with the time left."""
        now = self._clock()
        entries = []
        for (backend, endpoint), pods in sorted(
            self._reports.get(namespace, {}).items(),
            key=lambda item: (item[0][0], item[0][1] or ""),
        ):
            live = [r for r in pods.values() if r.until > now and now - r.at <= self._window]
            if len(live) < self._min_reporters:
                continue
            seconds = min(r.until for r in live) - now
            reason = f"{len(live)} pods saw it: {live[-1].reason}".rstrip(": ")
            entries.append(SharedEntry(backend, endpoint, seconds, len(live), reason))
        return entries

    def reports(self, namespace: str) -> dict[Subject, int]:
        """How many pods currently report each subject (shared or not yet)."""
        self._prune(namespace)
        return {subject: len(pods) for subject, pods in self._reports.get(namespace, {}).items()}

    def revision(self, namespace: str) -> int:
        """Grows whenever the namespace's shared subjects (or their reporter counts) change."""
        self._refresh(namespace)
        return self._revisions.get(namespace, 0)

    async def wait_for_change(self, namespace: str, revision: int, seconds: float) -> int:
        """Wait up to `seconds` for the namespace to pass `revision`; return the revision."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.revision(namespace) <= revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            event = self._changed.setdefault(namespace, asyncio.Event())
            # Expiry changes the view without a report: look again at least every second.
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 1.0))
            except TimeoutError:
                continue
        return self.revision(namespace)

    def _refresh(self, namespace: str) -> None:
        self._prune(namespace)
        shape = [(e.backend, e.endpoint, e.reporters) for e in self.view(namespace)]
        if shape == self._last_view.get(namespace, []):
            return
        self._last_view[namespace] = shape
        self._revisions[namespace] = self._revisions.get(namespace, 0) + 1
        event = self._changed.pop(namespace, None)
        if event is not None:
            event.set()

    def _prune(self, namespace: str) -> None:
        """Forget reports that can no longer count, and subjects with none left."""
        now = self._clock()
        subjects = self._reports.get(namespace, {})
        for subject in list(subjects):
            pods = subjects[subject]
            for pod in [p for p, r in pods.items() if r.until <= now or now - r.at > self._window]:
                del pods[pod]
            if not pods:
                del subjects[subject]
