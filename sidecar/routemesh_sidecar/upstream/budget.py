"""Per-request budgets: what one request may still spend, in dollars, tokens and time.

The listener builds a `RequestBudget` for a request whose route has a budget (from the route's
`Budget`, the caller's tier and the request's signals); the attempt loop asks it before every
attempt whether the target fits what is left, and charges it with what each attempt that did not
answer the downstream may have cost. It is arithmetic only: time comes in as arguments, and it
never sends, records or logs anything.

What an attempt is estimated to cost, before it is sent: the prompt's estimated tokens plus the
most output it may produce (the request's own maximum, else the model's `max_output_tokens`;
a request that sets neither to a model that declares neither counts its prompt only), at the
target's prices. What a failed attempt is charged, after: nothing when the upstream refused the
request before working on it (connect_error, rate_limited, overloaded, and the request's own
faults); the prompt at the input price when it may have worked on it (a timeout, a server error,
a bad or broken answer), since providers bill a prompt they processed. A cascade's rejected answer
is charged what its usage says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import Budget, ErrorClass, ModelInfo
from routemesh_sidecar.telemetry.accounting import request_cost

BudgetName = Literal["maxCostPerRequest", "maxTokensPerRequest", "latencyPerTier"]
_PER_MILLION = 1_000_000
# Failures that tell us the upstream never worked on the prompt, so nothing was billed.
_REFUSED_UNWORKED: frozenset[ErrorClass] = frozenset(
    {
        "connect_error",
        "rate_limited",
        "overloaded",
        "client_error",
        "context_length",
        "content_policy",
    }
)


@dataclass(frozen=True)
class Skip:
    """A target the budget kept a request from trying, and why (for the span and the error)."""

    target: str  # backend/model
    budget: BudgetName
    reason: str

    def __str__(self) -> str:
        return f"{self.target}: {self.budget}: {self.reason}"


@dataclass(frozen=True)
class Estimate:
    """What one attempt on a model may spend at most."""

    tokens: int
    cost: float


@dataclass
class RequestBudget:
    """What one request may still spend; shared by all of its attempts."""

    max_cost: float | None
    max_tokens: int | None
    prompt_tokens: int
    requested_output: int | None
    tier: str | None = None
    first_token_by: float | None = None  # monotonic time the first byte must arrive by
    total_by: float | None = None  # monotonic time the request must end by
    spent_cost: float = 0.0
    spent_tokens: int = 0
    skipped: list[Skip] = field(default_factory=list)

    @classmethod
    def for_request(
        cls,
        budget: Budget,
        *,
        tier: str | None,
        prompt_tokens: int,
        requested_output: int | None,
        now: float,
    ) -> RequestBudget:
        """The budget of a request that arrived at `now`, from a caller of `tier`."""
        latency = budget.tier_latency(tier)
        first_token = latency.first_token if latency is not None else None
        total = latency.total if latency is not None else None
        return cls(
            max_cost=budget.max_cost_usd,
            max_tokens=budget.max_tokens,
            prompt_tokens=prompt_tokens,
            requested_output=requested_output,
            tier=tier if latency is not None else None,
            first_token_by=now + first_token if first_token is not None else None,
            total_by=now + total if total is not None else None,
        )

    def estimate(self, info: ModelInfo) -> Estimate:
        """The most one attempt on this model may spend."""
        output = self.requested_output or info.max_output_tokens or 0
        pricing = info.pricing
        cost = (
            self.prompt_tokens * pricing.input_per_million + output * pricing.output_per_million
        ) / _PER_MILLION
        return Estimate(self.prompt_tokens + output, cost)

    def admits(self, label: str, info: ModelInfo) -> Skip | None:
        """None when an attempt on this model fits what is left; else why it does not."""
        estimate = self.estimate(info)
        if self.max_tokens is not None and self.spent_tokens + estimate.tokens > self.max_tokens:
            left = self.max_tokens - self.spent_tokens
            return Skip(
                label,
                "maxTokensPerRequest",
                f"may use {estimate.tokens} tokens, {left} of {self.max_tokens} left",
            )
        if self.max_cost is not None and self.spent_cost + estimate.cost > self.max_cost:
            dollars_left = self.max_cost - self.spent_cost
            return Skip(
                label,
                "maxCostPerRequest",
                f"may cost ${estimate.cost:.6f}, ${dollars_left:.6f} of ${self.max_cost:.6f} left",
            )
        return None

    def in_time(self, label: str, latency_estimate: float, now: float) -> Skip | None:
        """None when the target's usual time to first byte fits the tier's deadlines."""
        by = _earliest(self.first_token_by, self.total_by)
        if by is None or now + latency_estimate <= by:
            return None
        return Skip(
            label,
            "latencyPerTier",
            f"usually answers in {latency_estimate:.3f}s, {max(0.0, by - now):.3f}s left for "
            f"tier {self.tier}",
        )

    def deadline(self, route_deadline: float) -> float:
        """The request's deadline: the route's, or the tier's when it is sooner."""
        return _earliest(route_deadline, self.total_by) or route_deadline

    def first_byte_timeout(self, route_first_token: float, now: float) -> float:
        """How long the next attempt may wait for its first byte."""
        if self.first_token_by is None:
            return route_first_token
        return max(0.0, min(route_first_token, self.first_token_by - now))

    def charge_failure(self, error_class: ErrorClass, info: ModelInfo) -> None:
        """Count what a failed attempt may have cost: its prompt, unless it was never worked on."""
        if error_class in _REFUSED_UNWORKED:
            return
        self.spent_tokens += self.prompt_tokens
        self.spent_cost += self.prompt_tokens * info.pricing.input_per_million / _PER_MILLION

    def charge_usage(self, usage: Usage | None, info: ModelInfo) -> None:
        """Count an answer the downstream did not get (a cascade's rejected one) by its usage."""
        if usage is None:
            self.charge_failure("bad_response", info)
            return
        self.spent_tokens += usage.input_tokens + usage.output_tokens
        self.spent_cost += request_cost(usage, info.pricing)

    @property
    def budget_skips(self) -> list[Skip]:
        """The skips a cost or token budget made (the ones an error names)."""
        return [s for s in self.skipped if s.budget != "latencyPerTier"]


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None
