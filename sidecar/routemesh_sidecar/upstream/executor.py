"""The attempt loop: retries on one target, then fallback along the plan, within one deadline.

The listener calls `Executor.execute` with the plan routing chose (targets in the order to try)
and the route's retry and timeout settings. For each target it retries the error classes the
route allows, with jittered backoff or the upstream's Retry-After, as long as the retry budget
and the request's deadline allow; then it falls back to the next target if the error class
permits. Waiting is the last resort: a refused connection is retried at once on another endpoint
or given up for the next target, and a Retry-After is waited for only when no later target can
take the request (the breaker keeps the backend cooled down meanwhile). Which classes fall back
is decided in `classify`; this loop reads only the class.

Around every attempt it asks the backend's circuit breaker for a permit (skipping a backend whose
breaker opened since routing looked, or whose probe slots are taken), lets the balancer choose
the endpoint, and reports the result to the breaker, outlier detection and the load signals; a
stream is reported when it ends. The health transitions this causes become span events.

A Cascade route's plan is tried the same way, and one more rule decides when to stop: an answer
from any target but the last is judged by the route's quality gate (`upstream.cascade`); a
rejected answer escalates to the next target, and is kept, so that if every later target fails
the downstream still gets the best answer seen rather than an error. Such answers, streamed or
not, are read whole before the downstream sees any of them (a buffered stream that breaks fails
over unseen); the last target's answer is never judged and streams through.

It never picks targets (routing does) and never writes to the downstream (the listener does).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from routemesh_sidecar.routetable import Backend, Hedging, ModelInfo, QualityGate, Route
from routemesh_sidecar.telemetry.records import AttemptRecord
from routemesh_sidecar.upstream.balancer import EndpointState
from routemesh_sidecar.upstream.breaker import Permit, Transition
from routemesh_sidecar.upstream.budget import RequestBudget, Skip
from routemesh_sidecar.upstream.cascade import (
    BufferedStream,
    Escalation,
    UnsentStreamBroken,
    buffer_stream,
    judge_result,
)
from routemesh_sidecar.upstream.classify import FALLBACK_CLASSES, UpstreamFailure
from routemesh_sidecar.upstream.client import (
    AttemptTarget,
    AttemptTimeouts,
    DownstreamCall,
    UpstreamClient,
    UpstreamReply,
    UpstreamStream,
)
from routemesh_sidecar.upstream.hedge import Race, RaceLost
from routemesh_sidecar.upstream.registry import BackendHealth, HealthRegistry
from routemesh_sidecar.upstream.retry import Clock, RetryBudget, backoff_delay


@dataclass(frozen=True)
class PlannedTarget:
    """A target in the order routing chose."""

    backend_name: str
    backend: Backend
    model: str
    model_info: ModelInfo
    health: BackendHealth

    @property
    def label(self) -> str:
        """How traces name it: backend/model, as routing's candidates do."""
        return f"{self.backend_name}/{self.model}"


class AttemptObserver(Protocol):
    """Telemetry's view of attempts: called when one starts and when it ends."""

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """Record an event of the request (a health transition, a skipped backend)."""

    def attempt_started(self, record: AttemptRecord) -> Mapping[str, str]:
        """Begin the attempt's span; return the trace headers to send upstream."""

    def attempt_ended(self, record: AttemptRecord) -> None:
        """End the attempt's span with its outcome."""


Result = UpstreamReply | UpstreamStream | BufferedStream
# How a cascade ended: an answer passed the gate, the last target answered (never judged), or
# every later target failed and the last rejected answer was kept.
CascadeEnd = Literal["accepted", "last_target", "rejected_kept"]


@dataclass
class Outcome:
    """The successful attempt, and every attempt that led to it."""

    result: Result
    target: PlannedTarget
    attempts: list[AttemptRecord]
    escalations: list[Escalation] = field(default_factory=list)  # a cascade's rejected answers
    cascade: CascadeEnd | None = None  # None: not a cascade

    @property
    def discarded(self) -> list[Escalation]:
        """Rejected answers the downstream never saw; their tokens were paid for all the same."""
        if self.cascade == "rejected_kept":
            return self.escalations[:-1]
        return self.escalations


class RequestFailed(Exception):
    """No attempt succeeded. `failure` is the one the downstream should see."""

    def __init__(self, failure: UpstreamFailure, attempts: list[AttemptRecord]) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.attempts = attempts


class BudgetExceeded(RequestFailed):
    """No attempt succeeded, and the request's cost or token budget kept it from trying more.

    `skips` says which targets were passed over and by which budget; `failure` is the last
    upstream failure when some attempt was made.
    """

    def __init__(
        self, skips: list[Skip], last: UpstreamFailure | None, attempts: list[AttemptRecord]
    ) -> None:
        names = ", ".join(dict.fromkeys(skip.budget for skip in skips))
        tried = f"; the last attempt failed with {last}" if last is not None else ""
        message = (
            f"the request's budget ({names}) leaves no target that fits: "
            + "; ".join(str(skip) for skip in skips)
            + tried
        )
        super().__init__(UpstreamFailure("client_error", message), attempts)
        self.skips = skips
        self.budget = skips[0].budget


Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Executor:
    """Runs the attempts of one request; shared by all requests of a sidecar."""

    client: UpstreamClient
    clock: Clock
    rng: random.Random
    health: HealthRegistry
    sleep: Sleep = asyncio.sleep
    _budgets: dict[tuple[str, str], RetryBudget] = field(default_factory=dict)

    def budget_for(self, route: Route) -> RetryBudget:
        """The retry budget of a route, kept across requests and route-table swaps."""
        key = (route.policy, route.name)
        budget = self._budgets.get(key)
        settings = route.retry.budget
        # Identity first: comparing the models field by field costs more than the rest of this.
        if budget is None or (budget.settings is not settings and budget.settings != settings):
            budget = RetryBudget(route.retry.budget, self.clock)
            self._budgets[key] = budget
        return budget

    async def execute(
        self,
        call: DownstreamCall,
        plan: list[PlannedTarget],
        route: Route,
        observer: AttemptObserver,
        *,
        limits: RequestBudget | None = None,
        content_fallbacks: list[PlannedTarget] | None = None,
    ) -> Outcome:
        """Try the plan; return the first success (for a cascade, the first good enough one).

        A content_policy refusal falls back only to `content_fallbacks` (the route's, already
        filtered by routing), which take the place of the plan's remaining targets.

        `limits` is the request's own budget (cost, tokens, its tier's latency), when its route
        has one: every attempt must fit what is left of it. Raise `RequestFailed` when no attempt
        succeeded (`BudgetExceeded` when the budget kept targets from being tried).
        """
        deadline = self.clock.monotonic() + route.timeouts.total
        if limits is not None:
            deadline = limits.deadline(deadline)
            plan = _fitting_first(plan, limits, self.clock.monotonic())
        budget = self.budget_for(route)
        budget.record_request()
        walk = _Walk(list(plan), deadline, content_fallbacks or [])
        run = _Run(call, route, budget, observer, limits, walk)
        gate = route.quality_gate
        kept: Outcome | None = None  # a cascade's last rejected answer
        for position, planned in enumerate(walk.plan):
            if walk.ruled_out(planned) or position in walk.hedged:
                continue
            try:
                index, result = await self._attempt_at(run, position)
            except (_BreakerOpen, _Skipped):
                continue
            except UpstreamFailure as failure:
                if walk.goes_on(failure, position, self.clock.monotonic(), observer):
                    continue
                break
            target = walk.plan[index]
            outcome = Outcome(result, target, run.attempts, run.escalations)
            if gate is None:
                return outcome
            if not run.judged(index) or isinstance(result, UpstreamStream):
                outcome.cascade = "last_target"
                return outcome
            if self._accepts(gate, call, outcome, observer):
                outcome.cascade = "accepted"
                return outcome
            if limits is not None:
                limits.charge_usage(outcome.escalations[-1].usage, target.model_info)
            kept = outcome
        if kept is not None:
            return self._keep(kept, walk.last, observer)
        raise _no_success(walk.last, run.attempts, limits)

    async def _attempt_at(self, run: _Run, position: int) -> tuple[int, Result]:
        """The attempts on the plan's target at `position`, hedged when the route says so.

        Returns the answering target's position (a hedge's, when it won) and its answer.
        """
        hedging = run.route.hedging
        if hedging is None or run.route.quality_gate is not None:  # a cascade judges in turn
            return position, await self._try_target(run, position)
        return await self._race(run, position, hedging)

    async def _race(self, run: _Run, position: int, hedging: Hedging) -> tuple[int, Result]:
        """The target at `position`, hedged to the plan's next targets while it is slow.

        Raise the failure a fallback decision should read when every raced target failed.
        """
        walk, observer, limits = run.walk, run.observer, run.limits
        plan = walk.plan
        first = plan[position]
        spare = [
            i
            for i in range(position + 1, len(plan))
            if not walk.ruled_out(plan[i]) and i not in walk.hedged
        ]

        def may_hedge(index: int) -> bool:
            target = plan[index]
            if limits is not None and limits.admits(target.label, target.model_info):
                return False
            now = self.clock.monotonic()
            return now < walk.deadline and target.health.may_take(now) and run.budget.allow_retry()

        def on_hedge(index: int, delay: float) -> None:
            walk.hedged.add(index)
            target = plan[index]
            observer.event(
                "routemesh.hedge.started",
                {
                    "routemesh.backend": target.backend_name,
                    "routemesh.model": target.model,
                    "routemesh.hedge.after": first.label,
                    "routemesh.hedge.delay_seconds": delay,
                },
            )

        race: Race[Result] = Race(
            lambda index, hedge: self._try_target(run, index, hedge=hedge),
            self.sleep,
            lambda: _hedge_delay(hedging, first),
            may_hedge,
            on_hedge,
            _discard,
            hedging.max_extra_attempts,
        )
        try:
            index, result = await race.run(position, spare)
        except RaceLost as lost:
            raise _race_failure(lost) from None
        if index != position:
            observer.event("routemesh.hedge.won", {"routemesh.hedge.winner": plan[index].label})
        return index, result

    @staticmethod
    def _accepts(
        gate: QualityGate, call: DownstreamCall, outcome: Outcome, observer: AttemptObserver
    ) -> bool:
        """Judge a cascade's answer; a rejected one is recorded (span, event) as escalated."""
        result = outcome.result
        if isinstance(result, UpstreamStream):  # never judged: only the last target streams
            return True
        verdict = judge_result(gate, call, result)
        if verdict.accepted:
            return True
        target, record = outcome.target, outcome.attempts[-1]
        escalation = Escalation(
            target.backend_name, target.model, target.model_info, verdict, result.usage
        )
        outcome.escalations.append(escalation)
        record.escalation, record.usage = verdict.reasons, result.usage
        observer.attempt_ended(record)
        attributes: dict[str, Any] = {
            "routemesh.backend": target.backend_name,
            "routemesh.model": target.model,
            "routemesh.attempt.index": record.index,
            "routemesh.cascade.reasons": list(verdict.reasons),
            "routemesh.cascade.output_tokens": verdict.output_tokens,
        }
        if verdict.finish_reason is not None:
            attributes["routemesh.cascade.finish_reason"] = verdict.finish_reason
        observer.event("routemesh.cascade.escalated", attributes)
        return False

    @staticmethod
    def _keep(kept: Outcome, last: UpstreamFailure | None, observer: AttemptObserver) -> Outcome:
        """Every target after a rejected answer failed: that answer beats an error."""
        kept.cascade = "rejected_kept"
        observer.event(
            "routemesh.cascade.kept",
            {
                "routemesh.backend": kept.target.backend_name,
                "routemesh.model": kept.target.model,
                "routemesh.cascade.cause": last.error_class if last else "no_target_left",
            },
        )
        return kept

    async def _try_target(self, run: _Run, position: int, *, hedge: bool = False) -> Result:
        """Attempts on one target of the plan, with retries; raise the last failure when giving up.

        A cascade's judged answer (all but the last target's) is buffered: a stream is read whole
        before it is returned, and if it breaks on the way that attempt failed (health hears of
        it from the stream's own end) and may be retried. The plan's later targets decide
        whether falling back beats waiting.
        """
        target = run.walk.plan[position]
        rest = run.walk.plan[position + 1 :]
        retry = run.route.retry
        failed: frozenset[str] = frozenset()  # endpoints that failed this request
        failure: UpstreamFailure | None = None  # this target's last, once it has one
        for retry_index in range(retry.attempts):
            if run.limits is not None:
                self._check_limits(run.limits, target, run.attempts, run.observer, failure)
            permit, endpoint = self._permit(run, target, failed)
            record = AttemptRecord(
                len(run.attempts),
                target.backend_name,
                target.backend.api,
                target.model,
                endpoint.url,
                retry_index,
                hedge=hedge and retry_index == 0,
            )
            run.attempts.append(record)
            result = await self._attempt(
                run, target, record, permit=permit, endpoint=endpoint, position=position
            )
            if not isinstance(result, UpstreamFailure):
                run.observer.attempt_ended(record)
                return result
            failure = result
            failed |= {endpoint.url}
            delay = self._after_failure(run, target, record, result, failed=failed, rest=rest)
            if delay is None:
                raise result
            if delay > 0:
                await self.sleep(delay)
        raise AssertionError("unreachable: the last attempt either returns or raises")

    def _permit(
        self, run: _Run, target: PlannedTarget, failed: frozenset[str]
    ) -> tuple[Permit, EndpointState]:
        """The breaker's permit and the endpoint for the next attempt; `_BreakerOpen` if none."""
        health = target.health
        with self.health.capture() as transitions:
            now = self.clock.monotonic()
            permit = health.acquire(now)
            endpoint = health.pick_endpoint(now, self.rng, failed) if permit else None
        _report(run.observer, transitions)
        if permit is None or endpoint is None:
            run.observer.event(
                "routemesh.circuit_breaker.skipped",
                {
                    "routemesh.backend": target.backend_name,
                    "routemesh.breaker.state": health.breaker.state,
                },
            )
            raise _BreakerOpen(target.backend_name)
        return permit, endpoint

    async def _attempt(
        self,
        run: _Run,
        target: PlannedTarget,
        record: AttemptRecord,
        *,
        permit: Permit,
        endpoint: EndpointState,
        position: int,
    ) -> Result | UpstreamFailure:
        """One attempt with the time that is left; a cancelled one is recorded as cancelled."""
        route, limits = run.route, run.limits
        headers = run.observer.attempt_started(record)
        now = self.clock.monotonic()
        remaining = run.walk.deadline - now
        if route.retry.per_try_timeout is not None:
            remaining = min(remaining, route.retry.per_try_timeout)
        first_byte = route.timeouts.first_token
        if limits is not None:
            first_byte = limits.first_byte_timeout(first_byte, now)
        try:
            return await self._send(
                run.call,
                target,
                permit=permit,
                endpoint=endpoint,
                timeouts=AttemptTimeouts(route.timeouts.connect, first_byte, remaining),
                headers=headers,
                buffer=run.judged(position) and run.call.stream,
                observer=run.observer,
            )
        except asyncio.CancelledError:  # another attempt answered first
            record.cancelled = True
            run.observer.attempt_ended(record)
            if limits is not None:
                limits.charge_failure("timeout", target.model_info)  # it had the prompt
            raise

    def _after_failure(
        self,
        run: _Run,
        target: PlannedTarget,
        record: AttemptRecord,
        failure: UpstreamFailure,
        *,
        failed: frozenset[str],
        rest: list[PlannedTarget],
    ) -> float | None:
        """Record a failed attempt; return how long to wait before retrying, None to give up."""
        record.error_class, record.status = failure.error_class, failure.status
        record.message = failure.message
        run.observer.attempt_ended(record)
        if run.limits is not None:
            run.limits.charge_failure(failure.error_class, target.model_info)
        now = self.clock.monotonic()
        choice = _RetryChoice(
            other_endpoint=target.health.has_other_endpoint(now, failed),
            fallback=any(later.health.may_take(now) for later in rest),
        )
        delay = self._retry_delay(
            failure, record.retry, run.route, run.walk.deadline, budget=run.budget, choice=choice
        )
        if failure.retry_after is not None and run.route.retry.honor_retry_after:
            event = _retry_after_event(target, failure, delay, choice)
            run.observer.event("routemesh.retry_after", event)
        return delay

    def _check_limits(
        self,
        limits: RequestBudget,
        target: PlannedTarget,
        attempts: list[AttemptRecord],
        observer: AttemptObserver,
        failure: UpstreamFailure | None,
    ) -> None:
        """Raise when an attempt on `target` would break the request's budget.

        `_Skipped` moves on to the next target; a retry the budget stops raises instead the
        target's own `failure`, which stands. A target too slow for the caller's tier is skipped
        only as a fallback or retry: the first attempt goes ahead (the deadline still bounds it),
        since an estimate is not proof.
        """
        label = target.label
        skip = limits.admits(label, target.model_info)
        if skip is None and attempts:
            now = self.clock.monotonic()
            skip = limits.in_time(label, target.health.balancer.latency(now), now)
        if skip is None:
            return
        limits.skipped.append(skip)
        observer.event(
            "routemesh.budget.skipped",
            {
                "routemesh.backend": target.backend_name,
                "routemesh.model": target.model,
                "routemesh.budget.name": skip.budget,
                "routemesh.budget.reason": skip.reason,
            },
        )
        if failure is not None:
            raise failure
        raise _Skipped(skip)

    async def _send(
        self,
        call: DownstreamCall,
        target: PlannedTarget,
        *,
        permit: Permit,
        endpoint: EndpointState,
        timeouts: AttemptTimeouts,
        headers: Mapping[str, str],
        buffer: bool,
        observer: AttemptObserver,
    ) -> Result | UpstreamFailure:
        """One attempt, reported to health; its failure is returned, not raised."""
        attempt_target = AttemptTarget(
            target.backend_name, target.backend, endpoint.endpoint, target.model, target.model_info
        )
        sent_at = self.clock.monotonic()
        endpoint.in_flight += 1
        if target.health.limiter is not None:
            target.health.limiter.record_request(sent_at)
        try:
            result = await self.client.send(call, attempt_target, timeouts, headers)
        except UpstreamFailure as failure:
            self._report_failure(
                target, permit, endpoint, failure=failure, sent_at=sent_at, observer=observer
            )
            return failure
        except asyncio.CancelledError:
            # Cancelled, not failed: the upstream is no worse for it, and its slot is free.
            endpoint.in_flight -= 1
            target.health.release(permit)
            raise
        self._report_success(
            target, permit, endpoint, result=result, sent_at=sent_at, observer=observer
        )
        if buffer and isinstance(result, UpstreamStream):
            try:
                return await buffer_stream(result)
            except UnsentStreamBroken as broken:
                return broken  # health heard of it when the stream ended
        return result

    def _report_failure(
        self,
        target: PlannedTarget,
        permit: Permit,
        endpoint: EndpointState,
        *,
        failure: UpstreamFailure,
        sent_at: float,
        observer: AttemptObserver,
    ) -> None:
        """Tell health about a failed attempt; a timeout is also a (long) latency sample."""
        now = self.clock.monotonic()
        endpoint.in_flight -= 1
        with self.health.capture() as transitions:
            if failure.error_class == "timeout":
                target.health.observe_latency(endpoint, now - sent_at, now)
            target.health.record(permit, endpoint, failure.error_class, now, failure.retry_after)
        _report(observer, transitions)

    def _report_success(
        self,
        target: PlannedTarget,
        permit: Permit,
        endpoint: EndpointState,
        *,
        result: UpstreamReply | UpstreamStream,
        sent_at: float,
        observer: AttemptObserver,
    ) -> None:
        """Tell health about an answer: its latency now, its result now or when a stream ends."""
        now = self.clock.monotonic()
        health = target.health
        health.observe_latency(endpoint, now - sent_at, now)
        health.observe_first_byte(now - sent_at)
        health.observe_headers(
            result.headers if isinstance(result, UpstreamReply) else result.response.headers, now
        )
        if isinstance(result, UpstreamStream):
            result.on_end = lambda error_class: self._stream_ended(
                health, permit, endpoint, error_class, observer
            )
            return
        endpoint.in_flight -= 1
        with self.health.capture() as transitions:
            health.record(permit, endpoint, None, now)
        _report(observer, transitions)

    def _stream_ended(
        self,
        health: BackendHealth,
        permit: Permit,
        endpoint: EndpointState,
        error_class: Any,
        observer: AttemptObserver,
    ) -> None:
        endpoint.in_flight -= 1
        with self.health.capture() as transitions:
            health.record(permit, endpoint, error_class, self.clock.monotonic())
        _report(observer, transitions)

    def _retry_delay(
        self,
        failure: UpstreamFailure,
        retry_index: int,
        route: Route,
        deadline: float,
        *,
        budget: RetryBudget,
        choice: _RetryChoice,
    ) -> float | None:
        """How long to wait before retrying this target, or None to give up on it.

        Waiting is the last resort. A refused connection cost the upstream nothing, so it is
        retried at once on another endpoint, or else given up for the next target. A Retry-After
        is the upstream asking for time: with another target left, the breaker keeps this one
        cooled down and the request goes there now; alone, it waits only as long as the retry
        policy's longest backoff allows (a longer wait reaches the downstream as its own
        Retry-After, which the SDKs honour).
        """
        retry = route.retry
        if retry_index + 1 >= retry.attempts or failure.error_class not in retry.retry_on:
            return None
        if failure.error_class == "connect_error" and (choice.other_endpoint or choice.fallback):
            if not choice.other_endpoint:
                return None
            delay = 0.0
        elif retry.honor_retry_after and failure.retry_after is not None:
            if choice.fallback or failure.retry_after > retry.backoff.max:
                return None
            delay = failure.retry_after
        else:
            delay = backoff_delay(retry.backoff, retry_index, self.rng)
        # A wait that would end after the deadline cannot lead to a useful retry; another
        # target may still answer in time.
        if self.clock.monotonic() + delay >= deadline:
            return None
        if not budget.allow_retry():
            return None
        return delay


@dataclass(frozen=True)
class _RetryChoice:
    """What else a failed attempt could turn to: this backend's other endpoints, later targets."""

    other_endpoint: bool
    fallback: bool


def _retry_after_event(
    target: PlannedTarget, failure: UpstreamFailure, delay: float | None, choice: _RetryChoice
) -> dict[str, Any]:
    """What became of a Retry-After (span event): waited for, fallen back from, or passed on.

    "returned" means the downstream gets the failure and the Retry-After with it.
    """
    fell_back = "fell_back" if choice.fallback else "returned"
    decision = "waited" if delay is not None else fell_back
    return {
        "routemesh.backend": target.backend_name,
        "routemesh.retry_after.seconds": failure.retry_after,
        "routemesh.retry_after.decision": decision,
    }


@dataclass
class _Run:
    """One request on its way through the plan: what each of its attempts needs."""

    call: DownstreamCall
    route: Route
    budget: RetryBudget
    observer: AttemptObserver
    limits: RequestBudget | None
    walk: _Walk
    attempts: list[AttemptRecord] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)  # a cascade's rejected answers

    def judged(self, position: int) -> bool:
        """Whether the answer of the target at `position` is judged (a cascade's, not last)."""
        return self.route.quality_gate is not None and position < len(self.walk.plan) - 1


@dataclass
class _Walk:
    """A request's way along its plan: what is left to try, and what its failures rule out.

    The plan is walked by index (a list iterator), so a content-policy refusal can replace the
    plan's tail with the route's content-policy fallbacks and have them walked next.
    """

    plan: list[PlannedTarget]
    deadline: float
    content_fallbacks: list[PlannedTarget]
    last: UpstreamFailure | None = None
    context_too_small: int | None = None  # a context_length failure's window: skip no larger
    refused_for_content: bool = False
    hedged: set[int] = field(default_factory=set)  # positions a hedge already tried

    def ruled_out(self, target: PlannedTarget) -> bool:
        """Whether an earlier failure already says this target cannot serve the request."""
        small = self.context_too_small
        return small is not None and target.model_info.context_window <= small

    def goes_on(
        self, failure: UpstreamFailure, position: int, now: float, observer: AttemptObserver
    ) -> bool:
        """Whether to go on to the plan's next target after this target failed."""
        self.last = failure
        out_of_time = now >= self.deadline
        if failure.error_class == "content_policy" and not out_of_time:
            if not self.refused_for_content and self.content_fallbacks:
                self.refused_for_content = True
                target = self.plan[position]
                del self.plan[position + 1 :]
                self.plan.extend(t for t in self.content_fallbacks if t is not target)
                observer.event(*_content_policy_event(target, self.content_fallbacks))
            if self.refused_for_content:
                return True  # and a content-policy fallback's own refusal: the next one
        if not _falls_back(failure) or out_of_time:
            return False
        if failure.error_class == "context_length":
            self.context_too_small = self.plan[position].model_info.context_window
        return True


def _hedge_delay(hedging: Hedging, target: PlannedTarget) -> float:
    """The fixed delay, or the target's observed percentile once it has enough answers."""
    if hedging.delay_percentile is not None:
        observed = target.health.first_byte_percentile(hedging.delay_percentile)
        if observed is not None:
            return observed
    return hedging.delay


def _discard(result: Result) -> None:
    """An answer that finished together with the winner: free its upstream connection."""
    if isinstance(result, UpstreamStream):
        result.abandon()


def _race_failure(lost: RaceLost) -> Exception:
    """What a fallback decision reads when every raced target failed: the last real failure."""
    failures = [e for _, e in lost.failures if isinstance(e, UpstreamFailure)]
    if failures:
        return failures[-1]
    others = [e for _, e in lost.failures if isinstance(e, Exception)]
    return others[-1] if others else RuntimeError("every hedged attempt was cancelled")


def _content_policy_event(
    target: PlannedTarget, fallbacks: list[PlannedTarget]
) -> tuple[str, dict[str, Any]]:
    """The span event of a content-policy refusal that goes to the route's fallbacks for it."""
    return "routemesh.content_policy.fallback", {
        "routemesh.backend": target.backend_name,
        "routemesh.content_policy.targets": [t.label for t in fallbacks],
    }


def _no_success(
    last: UpstreamFailure | None, attempts: list[AttemptRecord], limits: RequestBudget | None
) -> RequestFailed:
    """Why the plan ran out: the budget, the last failure, or why nothing was tried."""
    if limits is not None and limits.budget_skips:
        return BudgetExceeded(limits.budget_skips, last, attempts)
    if last is None and not attempts:
        last = UpstreamFailure(
            "overloaded", "no healthy upstream: the circuit breaker of every target is open"
        )
    if last is None:
        last = UpstreamFailure("context_length", "no target has a larger context window")
    return RequestFailed(last, attempts)


class _Skipped(Exception):
    """The request's budget does not allow an attempt on this target: go on to the next."""

    def __init__(self, skip: Skip) -> None:
        super().__init__(str(skip))
        self.skip = skip


def _fitting_first(
    plan: list[PlannedTarget], limits: RequestBudget, now: float
) -> list[PlannedTarget]:
    """The plan with the targets whose usual latency fits the caller's tier first, in order.

    Nothing moves when the tier has no latency budget, or when every target fits or none does.
    """
    if limits.first_token_by is None and limits.total_by is None:
        return plan
    fits = [limits.in_time("", target.health.balancer.latency(now), now) is None for target in plan]
    if all(fits) or not any(fits):
        return plan
    return [t for t, ok in zip(plan, fits, strict=True) if ok] + [
        t for t, ok in zip(plan, fits, strict=True) if not ok
    ]


class _BreakerOpen(Exception):
    """The backend's breaker refused the attempt: go on to the next target."""

    def __init__(self, backend_name: str) -> None:
        super().__init__(f"circuit breaker of {backend_name} is open")
        self.backend_name = backend_name


def _falls_back(failure: UpstreamFailure) -> bool:
    """Whether the next target may be tried after this failure.

    A buffered stream that broke was never seen downstream, so it fails over as any failure
    before the first byte does, whatever its class.
    """
    return failure.error_class in FALLBACK_CLASSES or isinstance(failure, UnsentStreamBroken)


def transition_event(transition: Transition) -> tuple[str, dict[str, Any]]:
    """A health transition as a span event: its name and attributes."""
    attributes: dict[str, Any] = {
        "routemesh.health.subject": transition.subject,
        "routemesh.health.from": transition.from_state,
        "routemesh.health.to": transition.to_state,
        "routemesh.health.reason": transition.reason,
    }
    return f"routemesh.{transition.mechanism}.{transition.to_state}", attributes


def _report(observer: AttemptObserver, transitions: list[Transition]) -> None:
    for transition in transitions:
        observer.event(*transition_event(transition))
