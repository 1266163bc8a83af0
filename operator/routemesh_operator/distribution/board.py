"""The board: the route tables currently published, and a signal when any of them changes.

The reconciler publishes what the compiler produced; the distribution server reads the board to
answer sidecars' watches, and waits on it for the next change. A policy that turns invalid keeps
its last good table on the board (the sidecars keep running it); only deleting the policy takes
its table down. In memory only: after a restart the reconciler republishes from the ConfigMaps,
with the same versions, so no sidecar sees a change that did not happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from routemesh_operator.api.v1alpha1.common import LabelSelector
from routemesh_sidecar.routetable import RouteTable


@dataclass(frozen=True)
class Published:
    """One policy's table and the selector of the sidecars that run it."""

    namespace: str
    policy: str
    selector: LabelSelector
    table: RouteTable
    created: str = ""  # the policy's creationTimestamp: the oldest matching policy wins


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches everything."""
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.match_expressions or ():
        present = requirement.key in labels
        found = labels.get(requirement.key)
        values = set(requirement.values or ())
        holds = {
            "In": present and found in values,
            "NotIn": not present or found not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[requirement.operator]
        if not holds:
            return False
    return True


class Board:
    """Published tables by (namespace, policy), with a revision that grows on every change."""

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], Published] = {}
        self._by_namespace: dict[str, dict[str, Published]] = {}  # what a watch looks up
        self._revision = 0
        self._changed = asyncio.Event()

    @property
    def revision(self) -> int:
        """Grows by one on every publish or withdrawal that changed something."""
        return self._revision

    def __len__(self) -> int:
        """How many tables are published."""
        return len(self._tables)

    def get(self, namespace: str, policy: str) -> Published | None:
        """The table a policy has published, if any."""
        return self._tables.get((namespace, policy))

    def in_namespace(self, namespace: str) -> list[Published]:
        """Every table published in one namespace, by policy name."""
        published = self._by_namespace.get(namespace, {})
        return [published[name] for name in sorted(published)]

    def select(self, namespace: str, labels: Mapping[str, str]) -> Published | None:
        """The table a pod with these labels runs: the oldest matching policy's."""
        published = self._by_namespace.get(namespace, {}).values()
        matching = [p for p in published if selector_matches(p.selector, labels)]
        return min(matching, key=lambda p: (p.created, p.policy), default=None)

    def publish(self, published: Published) -> bool:
        """Put a table up; False when the same version was already there."""
        key = (published.namespace, published.policy)
        current = self._tables.get(key)
        if (
            current is not None
            and current.table is published.table
            and current.selector == published.selector
        ):
            return False
        self._tables[key] = published
        self._by_namespace.setdefault(published.namespace, {})[published.policy] = published
        self._bump()
        return True

    def withdraw(self, namespace: str, policy: str) -> bool:
        """Take a deleted policy's table down."""
        if self._tables.pop((namespace, policy), None) is None:
            return False
        self._by_namespace.get(namespace, {}).pop(policy, None)
        self._bump()
        return True

    async def wait_for_change(self, revision: int) -> int:
        """Wait until the board is past `revision`; return the new revision."""
        while self._revision <= revision:
            await self._changed.wait()
        return self._revision

    def _bump(self) -> None:
        self._revision += 1
        # Wake every waiter once, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
