"""Which sidecar runs which route-table version: the ACKs and NACKs, and the counts from them.

The distribution server records each sidecar's watch (its namespace, labels and the policy
that selects it) and what it reported about the versions it was sent. The reconciler reads the
counts into each policy's `status.sidecars`: desired (sidecars the policy selects that watched
recently), synced (those that ACKed the current version) and rejected (those that NACKed it,
with the last error). It also keeps each sidecar's shadow-route totals, which the reconciler
sums per policy into `status.shadow`. A sidecar that stops watching is forgotten after
`forget_after` seconds.
No I/O; the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ShadowTotals:
    """A policy's shadow-route totals: from one sidecar, or summed over the policy's sidecars."""

    evaluated: int = 0
    divergent: int = 0
    live_cost_usd: float = 0.0
    shadow_cost_usd: float = 0.0

    def __add__(self, other: ShadowTotals) -> ShadowTotals:
        return ShadowTotals(
            self.evaluated + other.evaluated,
            self.divergent + other.divergent,
            self.live_cost_usd + other.live_cost_usd,
            self.shadow_cost_usd + other.shadow_cost_usd,
        )


@dataclass
class SidecarRecord:
    """What one sidecar (a pod) last told us."""

    namespace: str
    policy: str | None
    seen: float
    acked: str | None = None  # the version label it runs
    nacked: str | None = None  # the version label it refused
    error: str | None = None
    shadow: dict[str, ShadowTotals] | None = None  # its shadow totals by policy, cumulative


@dataclass(frozen=True)
class SyncCounts:
    """The counts `status.sidecars` shows, plus the latest reason for a rejection."""

    desired: int
    synced: int
    rejected: int
    last_error: str | None = None


class SyncTracker:
    """Sidecar records by (namespace, pod name)."""

    def __init__(
        self, forget_after: float = 120.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._records: dict[tuple[str, str], SidecarRecord] = {}
        self._forget_after = forget_after
        self._clock = clock

    def report(
        self,
        namespace: str,
        pod: str,
        policy: str | None,
        *,
        acked: str | None = None,
        nacked: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Record a watch request; return whether any count may have changed."""
        key = (namespace, pod)
        before = self._records.get(key)
        record = SidecarRecord(namespace, policy, self._clock())
        if before is not None:
            record.acked, record.nacked, record.error = before.acked, before.nacked, before.error
            record.shadow = before.shadow
        if acked is not None:
            record.acked, record.nacked, record.error = acked, None, None
        if nacked is not None:
            record.nacked, record.error = nacked, error or "refused without a reason"
        self._records[key] = record
        return before is None or (before.policy, before.acked, before.nacked) != (
            record.policy,
            record.acked,
            record.nacked,
        )

    def report_shadow(self, namespace: str, pod: str, totals: dict[str, ShadowTotals]) -> bool:
        """A sidecar's shadow totals (cumulative); return whether they changed.

        Only a sidecar that watches is counted: its watch says which policy it runs.
        """
        record = self._records.get((namespace, pod))
        if record is None or record.shadow == totals:
            return False
        record.shadow = dict(totals)
        return True

    def shadow_totals(self, namespace: str, policy: str) -> ShadowTotals | None:
        """The policy's shadow totals over the sidecars that run it now; None when none report."""
        found = [
            record.shadow[policy]
            for (ns, _), record in self._records.items()
            if ns == namespace
            and record.policy == policy
            and record.shadow is not None
            and policy in record.shadow
        ]
        return sum(found, ShadowTotals()) if found else None

    def states(self) -> dict[str, int]:
        """Sidecars by the state of their last answer: synced, rejected or pending."""
        counts = {"synced": 0, "rejected": 0, "pending": 0}
        for record in self._records.values():
            state = "rejected" if record.nacked else "synced" if record.acked else "pending"
            counts[state] += 1
        return counts

    def sidecars_in(self, namespace: str) -> int:
        """How many sidecars of the namespace watch now: they share its provider accounts."""
        return sum(1 for ns, _ in self._records if ns == namespace)

    def forget(self, namespace: str, pod: str) -> bool:
        """A sidecar that said goodbye (or whose pod is gone)."""
        return self._records.pop((namespace, pod), None) is not None

    def expire(self) -> set[str]:
        """Forget sidecars not seen for a while; return the namespaces that changed."""
        deadline = self._clock() - self._forget_after
        stale = [key for key, record in self._records.items() if record.seen < deadline]
        for key in stale:
            del self._records[key]
        return {namespace for namespace, _ in stale}

    def counts(self, namespace: str, policy: str, current: str | None) -> SyncCounts:
        """Counts for one policy whose current version label is `current`."""
        desired = synced = rejected = 0
        last_error = None
        for (ns, _), record in sorted(self._records.items()):
            if ns != namespace or record.policy != policy:
                continue
            desired += 1
            if current is not None and record.acked == current:
                synced += 1
            elif current is not None and record.nacked == current:
                rejected += 1
                last_error = record.error
        return SyncCounts(desired, synced, rejected, last_error)
