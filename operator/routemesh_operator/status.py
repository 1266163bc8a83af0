"""Status of RoutingPolicies and ModelBackends, from what the compiler decided.

Called by the reconciler after each compile. It builds the `status` each resource should show
(conditions with CamelCase reasons and actionable messages, `observedGeneration`, the route-table
version) and keeps a condition's `lastTransitionTime` when its status did not change, as the
Kubernetes API conventions ask. It also names the transitions worth a Kubernetes Event. Pure: the
clock is passed in, and nothing here talks to the API server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routemesh_operator.compiler.backends import Problem
from routemesh_operator.compiler.compile import PolicyOutcome
from routemesh_operator.distribution.sync import ShadowTotals, SyncCounts

# Backend problems about what the backend refers to; the rest are about its readiness.
REFERENCE_REASONS = frozenset({"SecretNotFound"})
# Routine states that would post an Event on every new sidecar or rollout; not news.
QUIET_REASONS = frozenset({"SidecarsSyncing", "SidecarsSynced"})


@dataclass(frozen=True)
class ConditionSpec:
    """A condition without its transition time."""

    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to post about a transition."""

    type: str  # Normal or Warning
    reason: str
    message: str


def policy_conditions(outcome: PolicyOutcome) -> list[ConditionSpec]:
    """Accepted, ResolvedRefs and Programmed for one policy."""
    accepted = _condition("Accepted", outcome.not_accepted, "Accepted", "the policy is valid")
    if not outcome.not_accepted and outcome.notes:
        accepted = ConditionSpec(
            "Accepted", "True", "Accepted", "the policy is valid, but " + "; ".join(outcome.notes)
        )
    resolved = _condition(
        "ResolvedRefs", outcome.unresolved, "ResolvedRefs", "every backend and model resolved"
    )
    if outcome.table is not None:
        programmed = ConditionSpec(
            "Programmed",
            "True",
            "Programmed",
            f"route table {outcome.table.version_label} is published to the sidecars",
        )
    else:
        reason = "Invalid" if outcome.not_accepted else "RefsNotResolved"
        programmed = ConditionSpec(
            "Programmed",
            "False",
            reason,
            "no route table is published for this generation; the sidecars keep their last "
            "good table. See the Accepted and ResolvedRefs conditions",
        )
    return [accepted, resolved, programmed]


def sidecar_condition(counts: SyncCounts, current: str | None) -> ConditionSpec:
    """SidecarsSynced: whether every sidecar the policy selects runs its current table."""
    if counts.rejected:
        return ConditionSpec(
            "SidecarsSynced",
            "False",
            "SidecarsRejected",
            f"{counts.rejected} of {counts.desired} sidecar(s) refused route table {current}: "
            f"{counts.last_error}",
        )
    if counts.synced < counts.desired:
        return ConditionSpec(
            "SidecarsSynced",
            "False",
            "SidecarsSyncing",
            f"{counts.synced} of {counts.desired} sidecar(s) run route table {current}",
        )
    return ConditionSpec(
        "SidecarsSynced",
        "True",
        "SidecarsSynced",
        f"all {counts.desired} sidecar(s) run route table {current}"
        if current
        else "no route table is published yet",
    )


def shadow_status(totals: ShadowTotals) -> dict[str, Any]:
    """`status.shadow`: the shadow routes' divergence and predicted cost change, as decimals.

    Decimal strings, as Kubernetes APIs avoid floats; the shares are absent until there is
    something to divide by.
    """
    status: dict[str, Any] = {
        "evaluated": totals.evaluated,
        "divergent": totals.divergent,
        "liveCostUsd": f"{totals.live_cost_usd:.6f}",
        "shadowCostUsd": f"{totals.shadow_cost_usd:.6f}",
    }
    if totals.evaluated:
        status["divergentPercent"] = f"{100 * totals.divergent / totals.evaluated:.1f}"
    if totals.live_cost_usd > 0:
        change = 100 * (totals.shadow_cost_usd - totals.live_cost_usd) / totals.live_cost_usd
        status["costChangePercent"] = f"{change:.1f}"
    return status


def backend_conditions(problem: Problem | None, ready_endpoints: int) -> list[ConditionSpec]:
    """Accepted, ResolvedRefs and Ready for one backend."""
    reference = problem if problem is not None and problem.reason in REFERENCE_REASONS else None
    readiness = problem if problem is not None and reference is None else None
    ready_message = f"{ready_endpoints} endpoint(s) ready to serve"
    return [
        ConditionSpec("Accepted", "True", "Accepted", "the backend is valid"),
        _condition("ResolvedRefs", [reference] if reference else [], "ResolvedRefs", "resolved"),
        _condition("Ready", [readiness] if readiness else [], "Ready", ready_message)
        if reference is None
        else ConditionSpec("Ready", "False", "RefsNotResolved", reference.message),
    ]


def _condition(kind: str, problems: Sequence[Problem], good: str, message: str) -> ConditionSpec:
    if not problems:
        return ConditionSpec(kind, "True", good, message)
    return ConditionSpec(
        kind, "False", problems[0].reason, "; ".join(dict.fromkeys(p.message for p in problems))
    )


def render(
    conditions: Sequence[ConditionSpec],
    generation: int,
    previous: Mapping[str, Any] | None,
    now: str,
    **fields: Any,
) -> dict[str, Any]:
    """The status body, keeping transition times of conditions whose status did not change."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    rendered = []
    for condition in conditions:
        old = before.get(condition.type)
        unchanged = old is not None and old.get("status") == condition.status
        rendered.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message[:32768],
                "observedGeneration": generation,
                "lastTransitionTime": old["lastTransitionTime"]
                if unchanged and old is not None
                else now,
            }
        )
    return {"conditions": rendered, "observedGeneration": generation, **fields}


def same_status(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether `current` already says everything `wanted` says (so no patch is needed)."""
    current = current or {}
    return all(current.get(key) == value for key, value in wanted.items())


def transition_events(
    previous: Mapping[str, Any] | None, conditions: Sequence[ConditionSpec]
) -> list[EventSpec]:
    """Events for conditions that changed status or reason since the last status."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    events = []
    for condition in conditions:
        if condition.reason in QUIET_REASONS:
            continue
        old = before.get(condition.type)
        if old is not None and (old.get("status"), old.get("reason")) == (
            condition.status,
            condition.reason,
        ):
            continue
        if condition.status == "True" and old is None:
            continue  # a first good status is not news; a recovery or a failure is
        kind = "Normal" if condition.status == "True" else "Warning"
        events.append(EventSpec(kind, condition.reason, condition.message))
    return events
