"""Routing: route match, filters, pickers, and what the decision records."""

import random
from collections import Counter
from typing import Any

import pytest

from routemesh_sidecar.routetable import RouteTable
from routemesh_sidecar.routing import pipeline
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import NoCandidate, NoRoute, Router, unsupported_strategies
from routemesh_testing.tables import backend, model_info, route, table


def request(model: str = "gpt", headers: dict[str, str] | None = None, seed: int = 0, **body: Any):
    payload = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
    return RoutingRequest("openai", "chat", model, headers or {}, payload, random.Random(seed))


def two_backends() -> dict:
    return {
        "cheap": backend(
            "http://cheap/v1", models={"small": model_info(8000, ("Tools",), 0.1, 0.4)}
        ),
        "strong": backend(
            "http://strong/v1",
            api="anthropic",
            models={"big": model_info(200_000, ("Tools", "Vision"), 3.0, 15.0)},
        ),
    }


def decide(t: RouteTable, req: RoutingRequest):
    return Router().decide(t, req)


def test_first_matching_route_wins_and_a_route_without_match_catches_all():
    t = table(
        two_backends(),
        route("paid", ("strong", "big"), match={"headers": [{"name": "X-Tier", "value": "paid"}]}),
        route("default", ("cheap", "small")),
    )
    assert decide(t, request(headers={"x-tier": "paid"})).route.name == "paid"
    assert decide(t, request(headers={"x-tier": "free"})).route.name == "default"


def test_model_match_and_unknown_model():
    t = table(two_backends(), route("gpt", ("cheap", "small"), match={"models": ["gpt"]}))
    assert decide(t, request("gpt")).route.name == "gpt"
    with pytest.raises(NoRoute, match="no route for model 'claude'"):
        decide(t, request("claude"))


def test_header_regular_expression_matches_the_whole_value():
    rule = {"headers": [{"name": "x-user", "value": "team-[a-z]+", "type": "RegularExpression"}]}
    t = table(
        two_backends(),
        route("team", ("cheap", "small"), match=rule),
        route("rest", ("strong", "big")),
    )
    assert decide(t, request(headers={"x-user": "team-blue"})).route.name == "team"
    assert decide(t, request(headers={"x-user": "team-blue-2"})).route.name == "rest"


@pytest.mark.parametrize(
    ("signals", "content", "tools", "matches"),
    [
        ({"code_present": True}, "fix this:\n```python\nprint(1)\n```", None, True),
        ({"code_present": True}, "what is the capital of France?", None, False),
        ({"keywords": ["refund"]}, "I want a REFUND now", None, True),
        ({"max_tokens": 10}, "x" * 400, None, False),
        ({"min_tokens": 50}, "x" * 400, None, True),
        ({"tools_present": True}, "hi", [{"type": "function", "function": {"name": "f"}}], True),
        (
            {"modalities": ["Image"]},
            [{"type": "image_url", "image_url": {"url": "data:"}}],
            None,
            True,
        ),
    ],
)
def test_signals(signals: dict, content: Any, tools: Any, matches: bool):
    t = table(
        two_backends(),
        route("special", ("strong", "big"), match={"signals": signals}),
        route("rest", ("cheap", "small")),
    )
    extra = {"tools": tools} if tools else {}
    req = request(messages=[{"role": "user", "content": content}], **extra)
    assert (decide(t, req).route.name == "special") is matches


def test_fallback_plan_keeps_the_declared_order():
    t = table(two_backends(), route("r", ("strong", "big"), ("cheap", "small")))
    assert [c.label for c in decide(t, request()).plan] == ["strong/big", "cheap/small"]


def test_weighted_split_follows_the_weights_and_keeps_the_others_as_fallbacks():
    t = table(
        two_backends(),
        route("r", ("cheap", "small", 90), ("strong", "big", 10), strategy="Weighted"),
    )
    rng = random.Random(7)
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        req = request()
        req.rng = rng
        plan = decide(t, req).plan
        firsts[plan[0].label] += 1
        assert len(plan) == 2
    assert 0.86 < firsts["cheap/small"] / 2000 < 0.94


def test_cheapest_capable_orders_by_cost_and_records_scores():
    t = table(
        two_backends(),
        route("r", ("strong", "big"), ("cheap", "small"), strategy="CheapestCapable"),
    )
    decision = decide(t, request())
    assert [c.label for c in decision.plan] == ["cheap/small", "strong/big"]
    assert decision.scores == {"strong/big": 0.0, "cheap/small": 1.0}


def test_filters_remove_what_cannot_serve_and_say_so():
    t = table(two_backends(), route("r", ("cheap", "small"), ("strong", "big")))
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    decision = decide(t, request(messages=[{"role": "user", "content": image}]))
    assert [c.label for c in decision.plan] == ["strong/big"]
    assert decision.removed == {"capability": ["cheap/small"]}

    long_prompt = request(messages=[{"role": "user", "content": "x" * 40_000}])
    decision = decide(t, long_prompt)
    assert decision.removed == {"context-window": ["cheap/small"]}


def test_embeddings_only_go_to_openai_backends_and_nothing_left_is_an_error():
    t = table(two_backends(), route("r", ("strong", "big")))
    req = RoutingRequest("openai", "embeddings", "gpt", {}, {"model": "gpt", "input": "x"})
    with pytest.raises(NoCandidate, match="operation filter"):
        decide(t, req)


def test_strategies_not_built_yet_are_reported(monkeypatch: pytest.MonkeyPatch):
    t = table(two_backends(), route("r", ("cheap", "small"), ("strong", "big"), strategy="Cascade"))
    assert unsupported_strategies(t) == [], "this sidecar runs Cascade"
    # The refusal still works for a strategy the sidecar has no plugins for.
    monkeypatch.delitem(pipeline.STRATEGIES, "Cascade")
    assert unsupported_strategies(t) == [
        "route 'r': strategy Cascade is not supported by this sidecar"
    ]


def test_a_cascade_plans_its_targets_in_declared_order_cheapest_first():
    t = table(two_backends(), route("r", ("cheap", "small"), ("strong", "big"), strategy="Cascade"))
    decision = decide(t, request())
    assert [c.label for c in decision.plan] == ["cheap/small", "strong/big"]
    assert decision.route.quality_gate is not None, "the default gate when the table sets none"


def test_one_router_follows_a_new_table_and_back():
    """Candidates are kept per table: a swapped-in table's backends are used at once."""
    router = Router()
    old = table(two_backends(), route("all", ("cheap", "small")))
    new = table(two_backends(), route("all", ("strong", "big")))
    assert [c.label for c in router.decide(old, request()).plan] == ["cheap/small"]
    assert [c.label for c in router.decide(new, request()).plan] == ["strong/big"]
    # An in-flight request still on the old table gets the old table's candidates.
    assert [c.label for c in router.decide(old, request()).plan] == ["cheap/small"]


def test_a_filter_that_removes_nothing_records_nothing():
    t = table(two_backends(), route("all", ("cheap", "small"), ("strong", "big")))
    decision = decide(t, request())
    assert decision.removed == {}
    with_image = request(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    )
    assert decide(t, with_image).removed == {"capability": ["cheap/small"]}
