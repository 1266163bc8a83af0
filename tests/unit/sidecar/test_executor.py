"""The attempt loop on a virtual clock: retries, backoff, Retry-After, budget, fallback, deadline.

The upstream client is replaced at its seam by a scripted one, and `sleep` advances a virtual
clock, so every wait is asserted exactly and no test sleeps.
"""

import itertools
import random
from collections.abc import Mapping
from typing import Any

import pytest

from routemesh_sidecar.routetable import Route
from routemesh_sidecar.telemetry.records import AttemptRecord
from routemesh_sidecar.upstream.classify import UpstreamFailure
from routemesh_sidecar.upstream.client import (
    AttemptTarget,
    AttemptTimeouts,
    DownstreamCall,
    UpstreamReply,
)
from routemesh_sidecar.upstream.executor import Executor, PlannedTarget, RequestFailed
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_testing.tables import backend, model_info, route

CALL = DownstreamCall("openai", "chat", {"model": "m", "messages": []}, {})


class VirtualClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedClient:
    """Answers attempts from a script: a failure to raise, or "ok"; records what it was asked."""

    def __init__(
        self, clock: VirtualClock, script: dict[str, list[Any]], cost: float = 0.1
    ) -> None:
        self.clock = clock
        self.script = script
        self.cost = cost
        self.calls: list[tuple[str, float]] = []
        self.urls: list[str] = []

    async def send(self, call, target: AttemptTarget, timeouts: AttemptTimeouts, trace_headers):
        self.calls.append((target.backend_name, timeouts.remaining))
        self.urls.append(target.endpoint.url)
        self.clock.now += self.cost
        queue = self.script.get(target.backend_name)
        outcome = queue.pop(0) if queue else "ok"
        if isinstance(outcome, UpstreamFailure):
            raise outcome
        return UpstreamReply(200, b"{}", None, target.model)


class Observer:
    def __init__(self) -> None:
        self.ended: list[AttemptRecord] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def attempt_started(self, record: AttemptRecord) -> Mapping[str, str]:
        return {}

    def attempt_ended(self, record: AttemptRecord) -> None:
        self.ended.append(record)

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.events.append((name, dict(attributes)))


def plan(
    *names: str,
    windows: dict[str, int] | None = None,
    health: HealthRegistry | None = None,
    r: Route | None = None,
    endpoints: dict[str, int] | None = None,
) -> list[PlannedTarget]:
    """Targets with their health state in `health` (a fresh registry unless given)."""
    windows = windows or {}
    health = health or HealthRegistry(VirtualClock())
    targets = []
    for name in names:
        count = (endpoints or {}).get(name, 1)
        urls = [f"http://{name}-{i}/v1" for i in range(count)] if count > 1 else []
        b = backend(urls or f"http://{name}/v1")
        state = health.backend(name, b, r or a_route())
        targets.append(PlannedTarget(name, b, "m", model_info(windows.get(name, 8000)), state))
    return targets


def a_route(**fields: Any) -> Route:
    settings = {
        "retry": {
            "attempts": 3,
            "backoff": {"base": 0.1, "max": 1.0, "jitter": "None"},
            "budget": {"percent": 100, "min_retries_per_second": 10},
        },
        "timeouts": {"connect": 1, "first_token": 5, "total": 30},
        **fields,
    }
    return route("r", ("a", "m"), **settings)


def fail(
    error_class: str, retry_after: float | None = None, status: int | None = None
) -> UpstreamFailure:
    return UpstreamFailure(error_class, "scripted", status=status, retry_after=retry_after)  # type: ignore[arg-type]


async def run(
    script: dict[str, list[Any]],
    targets: list[PlannedTarget],
    r: Route,
    seed: int = 1,
    observer: Observer | None = None,
):
    clock = VirtualClock()
    client = ScriptedClient(clock, script)
    executor = Executor(
        client,  # type: ignore[arg-type]
        clock,
        random.Random(seed),
        HealthRegistry(clock),
        sleep=clock.sleep,
    )
    try:
        outcome = await executor.execute(CALL, targets, r, observer or Observer())
    except RequestFailed as failed:
        return clock, client, failed
    return clock, client, outcome


@pytest.mark.asyncio
async def test_backoff_doubles_between_retries_of_one_target():
    clock, client, outcome = await run(
        {"a": [fail("server_error"), fail("server_error")]}, plan("a"), a_route()
    )
    assert clock.slept == [0.1, 0.2]
    assert [name for name, _ in client.calls] == ["a", "a", "a"]
    assert len(outcome.attempts) == 3


@pytest.mark.asyncio
async def test_full_jitter_waits_a_seeded_random_part_of_the_backoff():
    r = a_route(retry={"attempts": 2, "backoff": {"base": 0.4, "max": 1.0, "jitter": "Full"}})
    clock, _, _ = await run({"a": [fail("timeout")]}, plan("a"), r, seed=3)
    assert clock.slept == [pytest.approx(random.Random(3).uniform(0, 0.4))]


@pytest.mark.asyncio
async def test_retry_after_is_honoured_exactly_when_no_other_target_can_take_the_request():
    observer = Observer()
    clock, client, _ = await run(
        {"a": [fail("rate_limited", retry_after=0.7)]}, plan("a"), a_route(), observer=observer
    )
    assert clock.slept == [0.7]
    assert len(client.calls) == 2
    assert _retry_after_decisions(observer) == ["waited"]


@pytest.mark.asyncio
async def test_a_retry_after_with_a_fallback_goes_to_the_fallback_at_once():
    # The bug: a 429 with Retry-After: 30 slept the full 30 s, then retried the same primary.
    targets = plan("a", "b")
    observer = Observer()
    clock, client, outcome = await run(
        {"a": [fail("rate_limited", retry_after=30.0)], "b": []},
        targets,
        a_route(),
        observer=observer,
    )
    assert clock.slept == []
    assert [name for name, _ in client.calls] == ["a", "b"]
    assert outcome.target.backend_name == "b"
    assert _retry_after_decisions(observer) == ["fell_back"]
    assert targets[0].health.breaker.state == "open", "the primary stays cooled down"


@pytest.mark.asyncio
async def test_a_retry_after_longer_than_the_longest_backoff_is_passed_to_the_downstream():
    observer = Observer()
    clock, client, failed = await run(
        {"a": [fail("rate_limited", retry_after=7.0)]}, plan("a"), a_route(), observer=observer
    )
    assert isinstance(failed, RequestFailed)
    assert clock.slept == []
    assert len(client.calls) == 1
    assert failed.failure.retry_after == 7.0, "the downstream's SDK waits, not the sidecar"
    assert _retry_after_decisions(observer) == ["returned"]


@pytest.mark.asyncio
async def test_a_refused_connection_falls_back_at_once_without_a_backoff():
    clock, client, outcome = await run(
        {"a": [fail("connect_error")], "b": []}, plan("a", "b"), a_route()
    )
    assert clock.slept == []
    assert [name for name, _ in client.calls] == ["a", "b"]
    assert outcome.target.backend_name == "b"


@pytest.mark.asyncio
async def test_a_refused_connection_is_retried_at_once_on_another_endpoint():
    targets = plan("a", "b", endpoints={"a": 2})
    clock, client, outcome = await run(
        {"a": [fail("connect_error")], "b": []}, targets, a_route(), seed=4
    )
    assert clock.slept == []
    assert [name for name, _ in client.calls] == ["a", "a"]
    assert client.urls[0] != client.urls[1], "the retry avoids the endpoint that refused"
    assert outcome.target.backend_name == "a"


@pytest.mark.asyncio
async def test_a_refused_connection_with_nowhere_else_to_go_backs_off():
    clock, client, _ = await run({"a": [fail("connect_error")]}, plan("a"), a_route())
    assert clock.slept == [0.1]
    assert len(client.calls) == 2


def _retry_after_decisions(observer: Observer) -> list[str]:
    return [
        attributes["routemesh.retry_after.decision"]
        for name, attributes in observer.events
        if name == "routemesh.retry_after"
    ]


@pytest.mark.asyncio
async def test_retry_after_past_the_deadline_falls_back_without_waiting():
    clock, client, outcome = await run(
        {"a": [fail("rate_limited", retry_after=60.0)], "b": []}, plan("a", "b"), a_route()
    )
    assert clock.slept == []
    assert [name for name, _ in client.calls] == ["a", "b"]
    assert outcome.target.backend_name == "b"


@pytest.mark.asyncio
async def test_client_error_neither_retries_nor_falls_back():
    _, client, failed = await run(
        {"a": [fail("client_error", status=400)], "b": []}, plan("a", "b"), a_route()
    )
    assert isinstance(failed, RequestFailed)
    assert failed.failure.error_class == "client_error"
    assert [name for name, _ in client.calls] == ["a"]


@pytest.mark.asyncio
async def test_an_error_class_not_in_retry_on_falls_back_at_once():
    r = a_route(retry={"attempts": 3, "retry_on": ["timeout"]})
    _, client, outcome = await run({"a": [fail("server_error")], "b": []}, plan("a", "b"), r)
    assert [name for name, _ in client.calls] == ["a", "b"]
    assert outcome.target.backend_name == "b"


@pytest.mark.asyncio
async def test_context_length_skips_targets_no_larger_than_the_one_that_failed():
    targets = plan(
        "small", "same", "large", windows={"small": 8000, "same": 8000, "large": 200_000}
    )
    _, client, outcome = await run(
        {"small": [fail("context_length")], "same": [], "large": []}, targets, a_route()
    )
    assert [name for name, _ in client.calls] == ["small", "large"]
    assert outcome.target.backend_name == "large"


@pytest.mark.asyncio
async def test_the_retry_budget_stops_retries_in_an_outage():
    r = a_route(
        retry={
            "attempts": 3,
            "backoff": {"base": 0.001, "max": 0.001},
            "budget": {"percent": 20, "min_retries_per_second": 0},
        }
    )
    clock = VirtualClock()
    client = ScriptedClient(clock, {"a": [fail("server_error")] * 1000}, cost=0.001)
    executor = Executor(
        client,  # type: ignore[arg-type]
        clock,
        random.Random(0),
        HealthRegistry(clock),
        sleep=clock.sleep,
    )
    for _ in range(50):
        with pytest.raises(RequestFailed):
            await executor.execute(CALL, plan("a"), r, Observer())
    retries = len(client.calls) - 50
    assert retries <= 10, f"20 percent of 50 requests, not 2 per request: {retries}"


@pytest.mark.asyncio
async def test_the_deadline_bounds_retries_and_each_attempt_gets_only_what_is_left():
    r = a_route(
        timeouts={"connect": 1, "first_token": 5, "total": 1.0},
        retry={"attempts": 5, "backoff": {"base": 0.3, "max": 0.3, "jitter": "None"}},
    )
    clock, client, failed = await run({"a": [fail("timeout")] * 5}, plan("a"), r)
    assert isinstance(failed, RequestFailed)
    remaining = [left for _, left in client.calls]
    assert remaining[0] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in itertools.pairwise(remaining))
    assert clock.now - 100.0 < 1.0 + 0.3, "no wait that ends after the deadline"


@pytest.mark.asyncio
async def test_per_try_timeout_caps_one_attempt():
    r = a_route(retry={"attempts": 1, "per_try_timeout": 2.5})
    _, client, _ = await run({"a": []}, plan("a"), r)
    assert client.calls[0][1] == pytest.approx(2.5)


@pytest.mark.asyncio
async def test_a_content_policy_refusal_never_falls_back_by_default():
    _, client, failed = await run(
        {"a": [fail("content_policy", status=400)], "b": []}, plan("a", "b"), a_route()
    )
    assert isinstance(failed, RequestFailed)
    assert failed.failure.error_class == "content_policy"
    assert [name for name, _ in client.calls] == ["a"]


@pytest.mark.asyncio
async def test_a_content_policy_refusal_goes_to_the_routes_fallbacks_for_it_in_order():
    clock = VirtualClock()
    health = HealthRegistry(clock)
    targets = plan("a", "b", health=health)
    permissive = plan("strict-too", "lenient", health=health)
    client = ScriptedClient(
        clock,
        {
            "a": [fail("content_policy", status=400)],
            "strict-too": [fail("content_policy", status=400)],
        },
    )
    executor = Executor(client, clock, random.Random(1), health, sleep=clock.sleep)  # type: ignore[arg-type]
    observer = Observer()
    outcome = await executor.execute(
        CALL, targets, a_route(), observer, content_fallbacks=permissive
    )
    # b is the route's next target, not one named for content refusals: it is never asked.
    assert [name for name, _ in client.calls] == ["a", "strict-too", "lenient"]
    assert outcome.target.backend_name == "lenient"
    (event,) = [e for name, e in observer.events if name == "routemesh.content_policy.fallback"]
    assert event["routemesh.content_policy.targets"] == ["strict-too/m", "lenient/m"]
