"""The route span's shared decision block: reused while the decision repeats, never stale.

`Listener._decision_block` hands the route span one mapping per (table, route, API, model,
candidates, plan), which the OTLP encoder encodes once and finds again by identity. These tests
pin that a repeated decision gets the same object, that any change in what the block says gets
a new one with the new values, and that a full cache starts over instead of growing.
"""

from types import SimpleNamespace
from typing import Any

import pytest

from routemesh_sidecar.listener import proxy

pytestmark = pytest.mark.timeout(10)


def decision(*plan: str, route: str = "default", candidates: tuple[str, ...] = ()) -> Any:
    labels = candidates or plan
    return SimpleNamespace(
        route=SimpleNamespace(policy="shop/default", name=route, strategy="Fallback"),
        candidates=[SimpleNamespace(label=label) for label in labels],
        plan=[SimpleNamespace(label=label) for label in plan],
    )


def table(version: str = "shop/v3") -> Any:
    return SimpleNamespace(version_label=version)


def call(model: str = "gpt-4o", api: str = "openai") -> Any:
    return SimpleNamespace(api=api, body={"model": model})


@pytest.fixture
def listener() -> proxy.Listener:
    """A listener without parts: the block reads none."""
    return proxy.Listener(parts=None)  # type: ignore[arg-type]


def test_a_repeated_decision_gets_the_same_block(listener: proxy.Listener):
    first = listener._decision_block(table(), decision("a/m", "b/m"), call())
    again = listener._decision_block(table(), decision("a/m", "b/m"), call())
    assert again is first
    assert dict(first) == {
        "routemesh.table.version": "shop/v3",
        "routemesh.policy": "shop/default",
        "routemesh.route": "default",
        "routemesh.strategy": "Fallback",
        "routemesh.downstream.api": "openai",
        "routemesh.candidates": ["a/m", "b/m"],
        "routemesh.plan": ["a/m", "b/m"],
        "gen_ai.request.model": "gpt-4o",
    }


@pytest.mark.parametrize(
    ("changed", "attribute", "value"),
    [
        ({"plan": ("b/m",)}, "routemesh.plan", ["b/m"]),  # a breaker opened: a's out of the plan
        ({"candidates": ("a/m", "b/m", "c/m")}, "routemesh.candidates", ["a/m", "b/m", "c/m"]),
        ({"route": "coding"}, "routemesh.route", "coding"),
        ({"version": "shop/v4"}, "routemesh.table.version", "shop/v4"),
        ({"model": "gpt-4o-mini"}, "gen_ai.request.model", "gpt-4o-mini"),
        ({"api": "anthropic"}, "routemesh.downstream.api", "anthropic"),
    ],
)
def test_any_change_in_what_the_block_says_gives_a_new_block(
    listener: proxy.Listener, changed: dict[str, Any], attribute: str, value: Any
):
    before = listener._decision_block(table(), decision("a/m", "b/m"), call())
    plan = changed.get("plan", ("a/m", "b/m"))
    after = listener._decision_block(
        table(changed.get("version", "shop/v3")),
        decision(
            *plan,
            route=changed.get("route", "default"),
            candidates=changed.get("candidates", ("a/m", "b/m")),
        ),
        call(changed.get("model", "gpt-4o"), changed.get("api", "openai")),
    )
    assert after is not before
    assert after[attribute] == value


def test_a_full_cache_starts_over(listener: proxy.Listener, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(proxy, "_DECISION_BLOCKS", 2)
    for model in ("m1", "m2", "m3"):
        listener._decision_block(table(), decision("a/m"), call(model))
    assert len(listener._decision_blocks) == 1
    block = listener._decision_block(table(), decision("a/m"), call("m3"))
    assert block["gen_ai.request.model"] == "m3"


def test_a_block_cannot_be_changed_by_whoever_holds_it(listener: proxy.Listener):
    block: Any = listener._decision_block(table(), decision("a/m"), call())
    with pytest.raises(TypeError):
        block["routemesh.route"] = "other"
