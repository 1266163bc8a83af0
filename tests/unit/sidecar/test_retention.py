"""Privacy routing, table-driven.

A route (or a request, through the policy's header) requires a retention level, and no backend
that keeps more of the data is ever a candidate, in degraded mode too.
"""

import random
from typing import Any

import pytest

from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import NoCandidate, NoHealthyUpstream, Router
from routemesh_testing.tables import backend, route, table

HEADER = "x-routemesh-retention"


def request(headers: dict[str, str] | None = None) -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    return RoutingRequest("openai", "chat", "m", headers or {}, body, random.Random(0), 100.0)


def backends() -> dict[str, Any]:
    return {
        "zdr": backend("http://zdr/v1", retention="None"),
        "limited": backend("http://limited/v1", retention="Limited"),
        "standard": backend("http://standard/v1", retention="Standard"),
        "undeclared": backend("http://undeclared/v1"),
    }


ALL = [("standard", "m"), ("undeclared", "m"), ("limited", "m"), ("zdr", "m")]


@pytest.mark.parametrize(
    ("required", "headers", "plan"),
    [
        (None, {}, ["standard", "undeclared", "limited", "zdr"]),  # no requirement
        ("Limited", {}, ["limited", "zdr"]),
        ("None", {}, ["zdr"]),
        (None, {HEADER: "Limited"}, ["limited", "zdr"]),  # a request may tighten
        (None, {HEADER: " None "}, ["zdr"]),
        ("Limited", {HEADER: "Standard"}, ["limited", "zdr"]),  # but never loosen
        ("Limited", {HEADER: "None"}, ["zdr"]),
    ],
)
def test_only_backends_at_the_required_level_or_stricter_are_candidates(required, headers, plan):
    t = table(backends(), route("r", *ALL, retention=required, retention_header=HEADER))
    decision = Router().decide(t, request(headers))
    assert [c.target.backend for c in decision.plan] == plan


def test_the_header_counts_only_when_the_policy_allows_it():
    t = table(backends(), route("r", *ALL))
    decision = Router().decide(t, request({HEADER: "None"}))
    assert len(decision.plan) == 4


def test_a_header_value_that_is_no_level_is_refused_with_its_fix():
    t = table(backends(), route("r", *ALL, retention_header=HEADER))
    with pytest.raises(NoCandidate, match="use None, Limited or Standard"):
        Router().decide(t, request({HEADER: "zero"}))


def test_a_request_stricter_than_every_target_is_refused_and_says_by_what():
    t = table(backends(), route("r", ("standard", "m"), ("limited", "m"), retention_header=HEADER))
    with pytest.raises(NoCandidate, match="retention"):
        Router().decide(t, request({HEADER: "None"}))


def test_degraded_mode_never_goes_to_a_backend_that_retains_more():
    # The zero-retention target's breaker is open; the table's other routes offer healthy
    # backends that retain data. Degradation must not use them.
    t = table(
        backends(),
        route("private", ("zdr", "m"), retention="None", match={"models": ["m"]}),
        route("other", ("standard", "m"), ("limited", "m")),
    )
    router = Router()
    zdr = router.candidates(t, t.routes[0])[0]
    zdr.health.breaker.cool_down(60.0, 100.0)
    with pytest.raises(NoHealthyUpstream, match="may see its data"):
        router.decide(t, request())
    # Without the requirement, degradation takes a healthy other backend.
    open_table = table(
        backends(),
        route("private", ("zdr", "m"), match={"models": ["m"]}),
        route("other", ("standard", "m"), ("limited", "m")),
    )
    open_router = Router(health=router.health)
    assert open_router.decide(open_table, request()).degraded
