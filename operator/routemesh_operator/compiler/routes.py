"""Compile one RoutingPolicy route into the route table's `Route`, with every default applied.

Called by `compiler.compile`. A route's retry, timeouts, circuitBreaker, outlierDetection,
budget and hedging replace the policy's defaults of the same name as a whole (the API says so);
what is absent in both gets the value the API documents, so the sidecar never has to know what
"absent" means.
Durations become seconds and decimal strings become numbers (a category's threshold, absent
meaning 0.5); a Cascade route gets its quality gate with the API's defaults (at least one output
token, refusals and cut-off answers rejected). Pure: no I/O.
"""

from __future__ import annotations

from routemesh_operator.api.v1alpha1.common import parse_duration
from routemesh_operator.api.v1alpha1.routingpolicy import Budget as ApiBudget
from routemesh_operator.api.v1alpha1.routingpolicy import Category as ApiCategory
from routemesh_operator.api.v1alpha1.routingpolicy import CircuitBreaker as ApiBreaker
from routemesh_operator.api.v1alpha1.routingpolicy import Hedging as ApiHedging
from routemesh_operator.api.v1alpha1.routingpolicy import OutlierDetection as ApiOutlier
from routemesh_operator.api.v1alpha1.routingpolicy import Privacy as ApiPrivacy
from routemesh_operator.api.v1alpha1.routingpolicy import Resilience
from routemesh_operator.api.v1alpha1.routingpolicy import Retry as ApiRetry
from routemesh_operator.api.v1alpha1.routingpolicy import Route as ApiRoute
from routemesh_operator.api.v1alpha1.routingpolicy import RouteMatch as ApiMatch
from routemesh_operator.api.v1alpha1.routingpolicy import Strategy as ApiStrategy
from routemesh_operator.api.v1alpha1.routingpolicy import Timeouts as ApiTimeouts
from routemesh_sidecar import routetable as wire


def seconds(duration: str | None, default: float) -> float:
    """A duration string in seconds, or the default when absent."""
    return parse_duration(duration).total_seconds() if duration else default


def compile_route(
    policy: str, route: ApiRoute, defaults: Resilience | None, privacy: ApiPrivacy | None = None
) -> wire.Route:
    """The route with the policy's defaults merged in and every absent field resolved."""
    defaults = defaults or Resilience()
    score = route.strategy.score
    return wire.Route(
        name=route.name,
        policy=policy,
        match=_match(route.match),
        strategy=route.strategy.type,
        targets=tuple(
            wire.Target(backend=t.backend, model=t.model, weight=t.weight) for t in route.targets
        ),
        retry=_retry(route.retry or defaults.retry),
        timeouts=_timeouts(route.timeouts or defaults.timeouts),
        circuit_breaker=_breaker(route.circuit_breaker or defaults.circuit_breaker),
        outlier_detection=_outlier(route.outlier_detection or defaults.outlier_detection),
        score_weights=(
            wire.ScoreWeights(
                cost=score.weights.cost or 0,
                latency=score.weights.latency or 0,
                load=score.weights.load or 0,
                quality=score.weights.quality or 0,
            )
            if score is not None
            else None
        ),
        cascade=_cascade(route.strategy),
        budget=_budget(route.budget or defaults.budget),
        hedging=_hedging(route.hedging or defaults.hedging),
        content_policy_fallbacks=tuple(
            wire.Target(backend=ref.backend, model=ref.model)
            for ref in route.content_policy_fallbacks or ()
        ),
        retention=required_retention(route, privacy),
        retention_header=privacy.request_header.lower()
        if privacy is not None and privacy.request_header
        else None,
    )


def required_retention(route: ApiRoute, privacy: ApiPrivacy | None) -> wire.Retention | None:
    """The stricter of the policy's and the route's retention levels; None when neither sets one."""
    levels: list[wire.Retention] = []
    if privacy is not None and privacy.retention is not None:
        levels.append(privacy.retention)
    if route.privacy is not None:
        levels.append(route.privacy.retention)
    if not levels:
        return None
    strictest: wire.Retention = min(levels, key=wire.RETENTION_ORDER.__getitem__)
    return strictest


def _hedging(hedging: ApiHedging | None) -> wire.Hedging | None:
    """A route's hedging in seconds, with the API's default of one extra attempt."""
    if hedging is None:
        return None
    return wire.Hedging(
        delay=max(0.001, seconds(hedging.delay, 0)),  # "0s" means at once
        delay_percentile=hedging.delay_percentile,
        max_extra_attempts=hedging.max_extra_attempts or 1,
    )


def _budget(budget: ApiBudget | None) -> wire.Budget | None:
    """A route's budget: dollars as a number, durations in seconds; None when it sets none."""
    if budget is None:
        return None
    compiled = wire.Budget(
        max_cost_usd=float(budget.max_cost_per_request)
        if budget.max_cost_per_request is not None
        else None,
        max_tokens=budget.max_tokens_per_request,
        latency_per_tier=tuple(
            wire.TierLatency(
                tier=tier.tier,
                first_token=seconds(tier.first_token, 0) or None,
                total=seconds(tier.total, 0) or None,
            )
            for tier in budget.latency_per_tier or ()
        ),
    )
    return None if compiled == wire.Budget() else compiled


def _cascade(strategy: ApiStrategy) -> wire.Cascade | None:
    """A Cascade route's quality gate, every absent setting given the API's default."""
    if strategy.type != "Cascade":
        return None
    gate = strategy.cascade.quality_gate if strategy.cascade is not None else None
    if gate is None:
        return wire.Cascade()
    return wire.Cascade(
        quality_gate=wire.QualityGate(
            min_output_tokens=gate.min_output_tokens if gate.min_output_tokens is not None else 1,
            reject_refusals=gate.reject_refusals is not False,
            require_complete=gate.require_complete is not False,
        )
    )


def _match(match: ApiMatch | None) -> wire.RouteMatch:
    if match is None:
        return wire.RouteMatch()
    signals = match.signals
    return wire.RouteMatch(
        models=frozenset(match.models or ()),
        headers=tuple(
            wire.HeaderMatch(name=h.name.lower(), value=h.value, type=h.type or "Exact")
            for h in match.headers or ()
        ),
        signals=wire.Signals()
        if signals is None
        else wire.Signals(
            min_tokens=signals.tokens.min if signals.tokens else None,
            max_tokens=signals.tokens.max if signals.tokens else None,
            code_present=signals.code_present,
            keywords=frozenset(signals.keywords or ()),
            modalities=frozenset(signals.modalities or ()),
            tools_present=signals.tools_present,
            min_turns=signals.turns.min if signals.turns else None,
            max_turns=signals.turns.max if signals.turns else None,
            reasoning=signals.reasoning,
            languages=frozenset(signals.languages or ()),
            categories=tuple(_category(c) for c in signals.categories or ()),
            learned_router=wire.LearnedRouterMatch(
                strong_share=float(signals.learned_router.strong_share)
            )
            if signals.learned_router
            else None,
        ),
    )


def _category(category: ApiCategory) -> wire.Category:
    return wire.Category(
        name=category.name,
        threshold=float(category.threshold) if category.threshold else 0.5,
        examples=tuple(category.examples),
    )


def _retry(retry: ApiRetry | None) -> wire.Retry:
    if retry is None:
        return wire.Retry()
    backoff = retry.backoff
    base = seconds(backoff.base_interval if backoff else None, 0.1)
    budget = retry.budget
    return wire.Retry(
        attempts=retry.attempts or 2,
        per_try_timeout=seconds(retry.per_try_timeout, 0) or None,
        backoff=wire.Backoff(
            base=base,
            max=seconds(backoff.max_interval if backoff else None, 10 * base),
            jitter=(backoff.jitter if backoff else None) or "Full",
        ),
        honor_retry_after=retry.honor_retry_after is not False,
        retry_on=frozenset(retry.retry_on) if retry.retry_on else wire.DEFAULT_RETRY_ON,
        budget=wire.RetryBudget(
            percent=budget.percent,
            min_retries_per_second=(
                budget.min_retries_per_second if budget.min_retries_per_second is not None else 10
            ),
        )
        if budget is not None
        else wire.RetryBudget(),
    )


def _timeouts(timeouts: ApiTimeouts | None) -> wire.Timeouts:
    if timeouts is None:
        return wire.Timeouts()
    return wire.Timeouts(
        connect=seconds(timeouts.connect, 5.0),
        first_token=seconds(timeouts.first_token, 30.0),
        total=seconds(timeouts.total, 300.0),
    )


def _breaker(breaker: ApiBreaker | None) -> wire.CircuitBreaker:
    if breaker is None:
        return wire.CircuitBreaker()
    rate = breaker.failure_rate
    return wire.CircuitBreaker(
        consecutive_failures=breaker.consecutive_failures or 5,
        failure_rate=wire.FailureRate(
            percent=rate.percent,
            window=seconds(rate.window, 30.0),
            minimum_requests=rate.minimum_requests,
        )
        if rate is not None
        else None,
        base_open_time=seconds(breaker.base_open_time, 30.0),
        max_open_time=seconds(breaker.max_open_time, 300.0),
        half_open_probes=breaker.half_open_probes or 1,
    )


def _outlier(outlier: ApiOutlier | None) -> wire.OutlierDetection:
    if outlier is None:
        return wire.OutlierDetection()
    return wire.OutlierDetection(
        consecutive_failures=outlier.consecutive_failures or 5,
        base_ejection_time=seconds(outlier.base_ejection_time, 30.0),
        max_ejection_time=seconds(outlier.max_ejection_time, 300.0),
        max_ejected_percent=(
            outlier.max_ejected_percent if outlier.max_ejected_percent is not None else 50
        ),
        panic_threshold_percent=(
            outlier.panic_threshold_percent if outlier.panic_threshold_percent is not None else 50
        ),
    )
