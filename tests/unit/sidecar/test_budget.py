"""The per-request budget's arithmetic, and the attempt loop under a budget, on a virtual clock.

Prices are dollars per million tokens (`model_info(input_price=..., output_price=...)`), so the
expected costs below are worked out by hand in each case.
"""

import random
from typing import Any

import pytest
from tests.unit.sidecar.test_executor import (
    CALL,
    Observer,
    ScriptedClient,
    VirtualClock,
    a_route,
    fail,
    plan,
)

from routemesh_sidecar.protocol.usage import Usage
from routemesh_sidecar.routetable import Budget, ModelInfo, Route, TierLatency
from routemesh_sidecar.upstream.budget import RequestBudget
from routemesh_sidecar.upstream.executor import (
    BudgetExceeded,
    Executor,
    PlannedTarget,
    RequestFailed,
)
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_testing.tables import model_info

CHEAP = model_info(input_price=1.0, output_price=2.0)  # $1 / $2 per million
DEAR = model_info(input_price=10.0, output_price=30.0)  # $10 / $30 per million


def budget(**fields) -> RequestBudget:
    settings = {"prompt_tokens": 1000, "requested_output": 500, **fields}
    return RequestBudget(max_cost=settings.pop("max_cost", None), max_tokens=None, **settings)


@pytest.mark.parametrize(
    ("info", "requested", "tokens", "cost"),
    [
        (CHEAP, 500, 1500, (1000 * 1.0 + 500 * 2.0) / 1e6),
        (DEAR, 500, 1500, (1000 * 10.0 + 500 * 30.0) / 1e6),
        # no max_tokens in the request: the model's own maximum output bounds it
        (
            ModelInfo.model_validate({**DEAR.model_dump(), "max_output_tokens": 4000}),
            None,
            5000,
            (1000 * 10.0 + 4000 * 30.0) / 1e6,
        ),
        # neither says: the prompt alone
        (DEAR, None, 1000, 1000 * 10.0 / 1e6),
    ],
)
def test_an_attempt_is_estimated_from_the_prompt_and_the_most_output_it_may_produce(
    info, requested, tokens, cost
):
    estimate = budget(requested_output=requested).estimate(info)
    assert estimate.tokens == tokens
    assert estimate.cost == pytest.approx(cost)


@pytest.mark.parametrize(
    ("max_cost", "max_tokens", "spent_cost", "spent_tokens", "info", "skipped_by"),
    [
        (0.05, None, 0.0, 0, DEAR, None),  # $0.025 fits $0.05
        (0.02, None, 0.0, 0, DEAR, "maxCostPerRequest"),  # $0.025 does not fit $0.02
        (0.05, None, 0.03, 0, DEAR, "maxCostPerRequest"),  # fits alone, not after $0.03 spent
        (0.05, None, 0.03, 0, CHEAP, None),  # $0.002 still fits
        (None, 2000, 0.0, 0, DEAR, None),  # 1500 tokens fit 2000
        (None, 2000, 0.0, 1000, DEAR, "maxTokensPerRequest"),  # not after 1000 spent
        (None, 1499, 0.0, 0, CHEAP, "maxTokensPerRequest"),
    ],
)
def test_a_target_is_admitted_only_when_its_estimate_fits_what_is_left(
    max_cost, max_tokens, spent_cost, spent_tokens, info, skipped_by
):
    limits = RequestBudget(max_cost, max_tokens, 1000, 500)
    limits.spent_cost, limits.spent_tokens = spent_cost, spent_tokens
    skip = limits.admits("b/m", info)
    assert (skip.budget if skip else None) == skipped_by
    if skip is not None:
        assert str(skip).startswith(f"b/m: {skipped_by}: ")


@pytest.mark.parametrize(
    ("error_class", "tokens", "cost"),
    [
        ("connect_error", 0, 0.0),
        ("rate_limited", 0, 0.0),
        ("overloaded", 0, 0.0),
        ("client_error", 0, 0.0),
        ("timeout", 1000, 1000 * 10.0 / 1e6),
        ("server_error", 1000, 1000 * 10.0 / 1e6),
        ("bad_response", 1000, 1000 * 10.0 / 1e6),
        ("stream_broken", 1000, 1000 * 10.0 / 1e6),
    ],
)
def test_a_failed_attempt_is_charged_its_prompt_only_when_it_may_have_been_processed(
    error_class, tokens, cost
):
    limits = budget(max_cost=1.0)
    limits.charge_failure(error_class, DEAR)
    assert limits.spent_tokens == tokens
    assert limits.spent_cost == pytest.approx(cost)


def test_a_rejected_answer_is_charged_what_its_usage_says():
    limits = budget(max_cost=1.0)
    limits.charge_usage(Usage(input_tokens=800, output_tokens=100), DEAR)
    assert limits.spent_tokens == 900
    assert limits.spent_cost == pytest.approx((800 * 10 + 100 * 30) / 1e6)


def test_the_tier_bounds_the_deadline_and_each_attempts_wait_for_its_first_byte():
    spec = Budget(latency_per_tier=(TierLatency(tier="free", first_token=2.0, total=10.0),))
    limits = RequestBudget.for_request(
        spec, tier="free", prompt_tokens=10, requested_output=None, now=100.0
    )
    assert limits.deadline(100.0 + 300) == 110.0, "the tier's total is sooner than the route's"
    assert limits.deadline(105.0) == 105.0
    assert limits.first_byte_timeout(30.0, now=100.5) == pytest.approx(1.5)
    assert limits.first_byte_timeout(1.0, now=100.5) == 1.0
    assert limits.in_time("b/m", 1.0, now=100.5) is None
    skip = limits.in_time("b/m", 1.6, now=100.5)
    assert skip is not None
    assert skip.budget == "latencyPerTier"


def test_a_caller_without_a_listed_tier_has_no_latency_budget():
    spec = Budget(latency_per_tier=(TierLatency(tier="free", first_token=2.0),))
    for tier in (None, "paid"):
        limits = RequestBudget.for_request(
            spec, tier=tier, prompt_tokens=10, requested_output=None, now=100.0
        )
        assert limits.first_token_by is None
        assert limits.tier is None
        assert limits.first_byte_timeout(30.0, 100.0) == 30.0


# ----------------------------------------------------------------------------- the attempt loop


def priced_plan(*names_and_infos: tuple[str, ModelInfo]) -> list[PlannedTarget]:
    targets = plan(*[name for name, _ in names_and_infos])
    return [
        PlannedTarget(t.backend_name, t.backend, t.model, info, t.health)
        for t, (_, info) in zip(targets, names_and_infos, strict=True)
    ]


async def execute(
    script: dict[str, list[Any]],
    targets: list[PlannedTarget],
    limits: RequestBudget,
    r: Route | None = None,
    clock: VirtualClock | None = None,
) -> tuple[ScriptedClient, Observer, Any]:
    """Run the plan under `limits`; the result is the Outcome, or the RequestFailed raised."""
    clock = clock or VirtualClock()
    client = ScriptedClient(clock, script)
    executor = Executor(
        client,  # type: ignore[arg-type]
        clock,
        random.Random(1),
        HealthRegistry(clock),
        sleep=clock.sleep,
    )
    observer = Observer()
    result: Any
    try:
        result = await executor.execute(CALL, targets, r or a_route(), observer, limits=limits)
    except RequestFailed as failed:
        result = failed
    return client, observer, result


@pytest.mark.asyncio
async def test_a_budget_stops_a_fallback_that_would_break_it_and_names_the_budget():
    # The primary fails after working on the prompt ($0.01 spent); the dear fallback would
    # cost $0.025 more, past the $0.03 budget.
    limits = budget(max_cost=0.03)
    targets = priced_plan(("a", DEAR), ("b", DEAR))
    r = a_route(retry={"attempts": 1})
    client, observer, failed = await execute(
        {"a": [fail("server_error")], "b": []}, targets, limits, r
    )
    assert isinstance(failed, BudgetExceeded)
    assert [name for name, _ in client.calls] == ["a"], "the fallback was never sent"
    assert failed.budget == "maxCostPerRequest"
    assert "maxCostPerRequest" in failed.failure.message
    assert "server_error" in failed.failure.message, "the error also says what failed first"
    assert [
        e["routemesh.budget.name"] for n, e in observer.events if n == "routemesh.budget.skipped"
    ] == ["maxCostPerRequest"]


@pytest.mark.asyncio
async def test_a_target_over_budget_is_passed_over_for_one_that_fits():
    limits = budget(max_cost=0.01)
    client, _, outcome = await execute({}, priced_plan(("dear", DEAR), ("cheap", CHEAP)), limits)
    assert [name for name, _ in client.calls] == ["cheap"]
    assert outcome.target.backend_name == "cheap"
    assert [s.target for s in limits.skipped] == ["dear/m"]


@pytest.mark.asyncio
async def test_retries_count_against_the_budget_too():
    # Each timed-out attempt spends its prompt ($0.01 at $10/M) and may cost $0.025: the third
    # would need $0.045 of the $0.04.
    limits = budget(max_cost=0.04)
    r = a_route(retry={"attempts": 5, "backoff": {"base": 0.01, "max": 0.01, "jitter": "None"}})
    client, _, failed = await execute(
        {"a": [fail("timeout")] * 5}, priced_plan(("a", DEAR)), limits, r
    )
    assert isinstance(failed, BudgetExceeded)
    assert len(client.calls) == 2
    assert limits.spent_cost == pytest.approx(0.02)


@pytest.mark.asyncio
async def test_the_tiers_first_token_deadline_bounds_the_whole_fallback_chain():
    clock = VirtualClock()
    spec = Budget(latency_per_tier=(TierLatency(tier="free", first_token=1.0),))
    limits = RequestBudget.for_request(
        spec, tier="free", prompt_tokens=10, requested_output=None, now=clock.now
    )
    client = ScriptedClient(
        clock, {"a": [fail("timeout")], "b": [fail("timeout")], "c": []}, cost=0.6
    )
    executor = Executor(client, clock, random.Random(1), HealthRegistry(clock), sleep=clock.sleep)  # type: ignore[arg-type]
    r = a_route(retry={"attempts": 1})
    with pytest.raises(RequestFailed) as failed:
        await executor.execute(CALL, plan("a", "b", "c"), r, Observer(), limits=limits)
    # a took 0.6 s of the 1 s; b may wait 0.4 s at most; nothing is left for c.
    assert [name for name, _ in client.calls] == ["a", "b"]
    assert failed.value.failure.error_class == "timeout"
    assert [s.budget for s in limits.skipped] == ["latencyPerTier"]


@pytest.mark.asyncio
async def test_targets_whose_latency_fits_the_tier_are_tried_first():
    clock = VirtualClock()
    health = HealthRegistry(clock)
    targets = plan("slow", "fast", health=health)
    slow_endpoint = targets[0].health.balancer.endpoints[0]
    targets[0].health.observe_latency(slow_endpoint, 3.0, clock.now)
    spec = Budget(latency_per_tier=(TierLatency(tier="free", first_token=1.0),))
    limits = RequestBudget.for_request(
        spec, tier="free", prompt_tokens=10, requested_output=None, now=clock.now
    )
    client, _, outcome = await execute({}, targets, limits, clock=clock)
    assert [name for name, _ in client.calls] == ["fast"]
    assert outcome.target.backend_name == "fast"


@pytest.mark.asyncio
async def test_a_retry_the_budget_stops_leaves_the_targets_own_failure_for_the_downstream():
    clock = VirtualClock()
    spec = Budget(latency_per_tier=(TierLatency(tier="free", first_token=1.0),))
    limits = RequestBudget.for_request(
        spec, tier="free", prompt_tokens=10, requested_output=None, now=clock.now
    )
    client = ScriptedClient(clock, {"a": [fail("timeout")] * 3}, cost=1.0)
    executor = Executor(client, clock, random.Random(1), HealthRegistry(clock), sleep=clock.sleep)  # type: ignore[arg-type]
    with pytest.raises(RequestFailed) as failed:
        await executor.execute(CALL, plan("a"), a_route(), Observer(), limits=limits)
    assert not isinstance(failed.value, BudgetExceeded), "a tier's latency is no cost budget"
    assert failed.value.failure.error_class == "timeout"
    assert len(client.calls) == 1
