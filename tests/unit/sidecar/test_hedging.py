"""Hedging on a hand-driven clock.

The test decides when each upstream answers and when the hedge timer fires, so every race below
runs the same way every time and nothing sleeps.
"""

import asyncio
import random
from typing import Any

import pytest
from tests.unit.sidecar.test_executor import CALL, Observer, VirtualClock, a_route, plan

from routemesh_sidecar.routetable import Route
from routemesh_sidecar.upstream.classify import UpstreamFailure
from routemesh_sidecar.upstream.client import AttemptTarget, UpstreamReply
from routemesh_sidecar.upstream.executor import Executor, Outcome
from routemesh_sidecar.upstream.registry import HealthRegistry

pytestmark = pytest.mark.timeout(10)


class HandClient:
    """Each attempt waits until the test answers it; records what was cancelled."""

    def __init__(self) -> None:
        self.answers: dict[str, asyncio.Future[Any]] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def send(self, call, target: AttemptTarget, timeouts, trace_headers):
        name = target.backend_name
        self.started.append(name)
        future = self.answers.setdefault(name, asyncio.get_running_loop().create_future())
        try:
            outcome = await future
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.answers.pop(name, None)
        if isinstance(outcome, UpstreamFailure):
            raise outcome
        return UpstreamReply(200, b"{}", None, target.model)

    def answer(self, name: str, outcome: Any = "ok") -> None:
        self.answers[name].set_result(outcome)


class HandTimer:
    """The executor's sleep: each wait is recorded and ends when the test fires it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._fire: asyncio.Event | None = None

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self._fire = asyncio.Event()
        await self._fire.wait()

    def fire(self) -> None:
        assert self._fire is not None, "no timer is waiting"
        self._fire.set()


async def until(condition, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def hedged(**hedging: Any) -> Route:
    return a_route(retry={"attempts": 1}, hedging={"delay": 2.0, **hedging})


def setup(*names: str):
    clock = VirtualClock()
    health = HealthRegistry(clock)
    client, timer = HandClient(), HandTimer()
    executor = Executor(client, clock, random.Random(1), health, sleep=timer.sleep)  # type: ignore[arg-type]
    return executor, client, timer, plan(*names, health=health)


@pytest.mark.asyncio
async def test_a_hedge_wins_against_a_slow_first_target_and_the_loser_is_cancelled():
    executor, client, timer, targets = setup("a", "b")
    observer = Observer()
    task = asyncio.ensure_future(executor.execute(CALL, targets, hedged(), observer))
    await until(lambda: client.started == ["a"] and timer.delays, "a started, the timer set")
    assert timer.delays == [2.0]
    timer.fire()
    await until(lambda: client.started == ["a", "b"], "the hedge to b")
    client.answer("b")
    outcome: Outcome = await task
    assert outcome.target.backend_name == "b"
    assert client.cancelled == ["a"], "the loser was cancelled as soon as b answered"
    first, hedge = outcome.attempts
    assert first.cancelled
    assert not first.error_class, "a cancelled attempt is no failure"
    assert hedge.hedge
    assert not hedge.cancelled
    assert [name for name, _ in observer.events] == [
        "routemesh.hedge.started",
        "routemesh.hedge.won",
    ]
    assert targets[0].backend_name == "a"
    assert targets[0].health.balancer.endpoints[0].in_flight == 0, "the cancelled slot is free"
    assert targets[0].health.breaker.state == "closed", "a cancellation is not a failure"


@pytest.mark.asyncio
async def test_an_answer_before_the_delay_starts_no_hedge():
    executor, client, timer, targets = setup("a", "b")
    task = asyncio.ensure_future(executor.execute(CALL, targets, hedged(), Observer()))
    await until(lambda: client.started == ["a"] and timer.delays, "a started")
    client.answer("a")
    outcome = await task
    assert outcome.target.backend_name == "a"
    assert client.started == ["a"]
    assert len(outcome.attempts) == 1


@pytest.mark.asyncio
async def test_a_failed_hedge_leaves_the_first_attempt_running_and_it_still_wins():
    executor, client, timer, targets = setup("a", "b", "c")
    task = asyncio.ensure_future(executor.execute(CALL, targets, hedged(), Observer()))
    await until(lambda: timer.delays, "the timer")
    timer.fire()
    await until(lambda: "b" in client.started, "the hedge")
    client.answer("b", UpstreamFailure("server_error", "boom", status=500))
    await asyncio.sleep(0)
    client.answer("a")
    outcome = await task
    assert outcome.target.backend_name == "a"
    assert client.cancelled == []
    assert client.started == ["a", "b"], "max_extra_attempts 1: no second hedge"


@pytest.mark.asyncio
async def test_when_every_raced_target_fails_the_fallback_goes_on_past_them():
    executor, client, timer, targets = setup("a", "b", "c")
    task = asyncio.ensure_future(executor.execute(CALL, targets, hedged(), Observer()))
    await until(lambda: timer.delays, "the timer")
    timer.fire()
    await until(lambda: "b" in client.started, "the hedge")
    client.answer("a", UpstreamFailure("server_error", "boom", status=500))
    client.answer("b", UpstreamFailure("server_error", "boom", status=500))
    await until(lambda: "c" in client.started, "the fallback to c, never b again")
    client.answer("c")
    outcome = await task
    assert outcome.target.backend_name == "c"
    assert client.started == ["a", "b", "c"]


@pytest.mark.asyncio
async def test_up_to_max_extra_attempts_hedges_are_in_flight_at_once():
    executor, client, timer, targets = setup("a", "b", "c")
    task = asyncio.ensure_future(
        executor.execute(CALL, targets, hedged(max_extra_attempts=2), Observer())
    )
    await until(lambda: len(timer.delays) == 1, "the first timer")
    timer.fire()
    await until(lambda: "b" in client.started, "the hedge to b")
    await until(lambda: len(timer.delays) == 2, "the second timer")
    timer.fire()
    await until(lambda: "c" in client.started, "the hedge to c")
    client.answer("c")
    outcome = await task
    assert outcome.target.backend_name == "c"
    assert sorted(client.cancelled) == ["a", "b"]


@pytest.mark.asyncio
async def test_the_delay_is_the_targets_observed_percentile_once_it_has_enough_answers():
    executor, client, timer, targets = setup("a", "b")
    for sample in range(1, 101):  # 0.01 .. 1.00 s
        targets[0].health.observe_first_byte(sample / 100)
    task = asyncio.ensure_future(
        executor.execute(CALL, targets, hedged(delay_percentile=90), Observer())
    )
    await until(lambda: timer.delays, "the timer")
    assert timer.delays == [pytest.approx(0.91)]
    client.answer("a")
    await task


@pytest.mark.asyncio
async def test_an_exhausted_retry_budget_stops_hedges():
    executor, client, timer, targets = setup("a", "b")
    route = a_route(
        retry={"attempts": 1, "budget": {"percent": 1, "min_retries_per_second": 0}},
        hedging={"delay": 2.0},
    )
    task = asyncio.ensure_future(executor.execute(CALL, targets, route, Observer()))
    await until(lambda: timer.delays, "the timer")
    timer.fire()
    for _ in range(20):
        await asyncio.sleep(0)
    assert client.started == ["a"], "1 percent of one request allows no hedge"
    client.answer("a")
    assert (await task).target.backend_name == "a"


@pytest.mark.asyncio
async def test_a_cascade_never_hedges():
    executor, client, timer, targets = setup("a", "b")
    route = a_route(retry={"attempts": 1}, hedging={"delay": 2.0}, strategy="Cascade")
    task = asyncio.ensure_future(executor.execute(CALL, targets, route, Observer()))
    await until(lambda: client.started == ["a"], "a")
    assert timer.delays == []
    client.answer("a", UpstreamFailure("server_error", "boom", status=500))
    await until(lambda: "b" in client.started, "b")
    client.answer("b")
    await task
