"""The shadow ledger: per policy, how the shadow routes' decisions compare with the live ones.

The listener records each request's shadow outcome here (whether the shadow's choice differs
from the live one, and the live cost against the shadow's predicted cost); the shadow reporter
(`discovery.shadow_report`) posts the totals to the operator, which sums them over the policy's
sidecars into its status. Totals are cumulative since the sidecar started, so that a lost report
loses nothing: the next one carries it. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShadowTotals:
    """One policy's shadow totals."""

    evaluated: int = 0
    divergent: int = 0
    live_cost_usd: float = 0.0
    shadow_cost_usd: float = 0.0

    def as_json(self) -> dict[str, float | int]:
        """The wire form the operator reads."""
        return {
            "evaluated": self.evaluated,
            "divergent": self.divergent,
            "live_cost_usd": round(self.live_cost_usd, 9),
            "shadow_cost_usd": round(self.shadow_cost_usd, 9),
        }


@dataclass
class ShadowLedger:
    """Shadow totals by policy; `revision` grows with every record, so a reporter knows news."""

    totals: dict[str, ShadowTotals] = field(default_factory=dict)
    revision: int = 0

    def record(
        self, policy: str, *, differs: bool, live_cost: float | None, shadow_cost: float | None
    ) -> None:
        """One request's shadow outcome; costs are None when the request got no answer."""
        totals = self.totals.setdefault(policy, ShadowTotals())
        totals.evaluated += 1
        totals.divergent += int(differs)
        if live_cost is not None and shadow_cost is not None:
            totals.live_cost_usd += live_cost
            totals.shadow_cost_usd += shadow_cost
        self.revision += 1

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """Every policy's totals, in the wire form."""
        return {policy: totals.as_json() for policy, totals in sorted(self.totals.items())}
