"""Which sidecar runs which route-table version: the ACKs and NACKs, and the counts from them.

The distribution server records each sidecar's watch (its namespace, labels and the policy
that selects it) and what it reported about the versions it was sent. The reconciler reads the
counts into each policy's `status.sidecars`: desired (sidecars the policy selects that watched
recently), synced (those that ACKed the current version) and rejected (those that NACKed it,
with the last error). A sidecar that stops watching is forgotten after `forget_after` seconds.
No I/O; the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class SidecarRecord:
    """What one sidecar (a pod) last told us."""

    namespace: str
    policy: str | None
    seen: float
    acked: str | None = None  # the version label it runs
    nacked: str | None = None  # the version label it refused
    error: str | None = None


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
