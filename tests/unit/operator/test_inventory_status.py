"""The inventory (what the handlers collected) and the status built from compile outcomes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from routemesh_operator.api.v1alpha1.common import LabelSelector
from routemesh_operator.compiler.backends import Problem
from routemesh_operator.compiler.compile import PolicyOutcome
from routemesh_operator.compiler.inputs import ReadyAddress
from routemesh_operator.distribution.board import Board, Published
from routemesh_operator.inventory import Inventory
from routemesh_operator.status import (
    backend_conditions,
    policy_conditions,
    render,
    same_status,
    transition_events,
)
from routemesh_testing.tables import backend, route, table

pytestmark = pytest.mark.timeout(10)


def policy_body(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "routemesh.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "p", "namespace": "ns", "generation": generation, "uid": "u1"},
        "spec": {
            "selector": {},
            "routes": [
                {
                    "name": "r",
                    "strategy": {"type": "Fallback"},
                    "targets": [{"backend": "b", "model": "m"}],
                }
            ],
        },
        **({"status": status} if status else {}),
    }


def test_a_status_only_change_does_not_ask_for_a_compile():
    inventory = Inventory()
    assert inventory.upsert_resource(policy_body())
    assert not inventory.upsert_resource(policy_body(conditions=[]))
    stored = inventory.body("ns", "RoutingPolicy", "p")
    assert stored is not None
    assert stored["status"] == {"conditions": []}
    assert inventory.upsert_resource(policy_body(generation=2))
    assert inventory.remove_resource(policy_body())
    assert not inventory.remove_resource(policy_body())


def test_a_body_the_models_refuse_is_kept_out_and_remembered():
    inventory = Inventory()
    body = policy_body()
    body["spec"]["routes"] = []
    assert inventory.upsert_resource(body)
    assert inventory.snapshot("ns").policies == ()
    assert ("RoutingPolicy", "p") in inventory.namespace("ns").unparsable


def test_secrets_are_kept_as_key_names_only():
    inventory = Inventory()
    assert inventory.upsert_secret("ns", "s", {"api-key": "c2stc2VjcmV0"}.keys())
    assert not inventory.upsert_secret("ns", "s", ["api-key"])
    assert inventory.snapshot("ns").secret_keys == frozenset({("s", "api-key")})
    assert "c2stc2VjcmV0" not in repr(inventory.namespace("ns"))
    assert inventory.remove_secret("ns", "s")


def slice_body(ready: list[tuple[str, bool, str | None]], port: int = 8000) -> dict[str, Any]:
    return {
        "metadata": {"name": "svc-x", "labels": {"kubernetes.io/service-name": "svc"}},
        "ports": [{"name": "http", "port": port}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": is_ready}, "zone": zone}
            for ip, is_ready, zone in ready
        ],
    }


def test_service_ports_map_to_the_slice_ports_and_only_ready_addresses_count():
    inventory = Inventory()
    inventory.upsert_service("ns", "svc", {"ports": [{"name": "http", "port": 80}]})
    assert inventory.upsert_slice(
        "ns", "svc-x", slice_body([("10.0.0.2", True, "a"), ("10.0.0.3", False, "b")])
    )
    assert inventory.snapshot("ns").service_addresses == {
        ("svc", 80): (ReadyAddress("10.0.0.2", 8000, "a"),)
    }
    # The same slice again is no change; a pod turning ready is.
    assert not inventory.upsert_slice(
        "ns", "svc-x", slice_body([("10.0.0.2", True, "a"), ("10.0.0.3", False, "b")])
    )
    assert inventory.upsert_slice(
        "ns", "svc-x", slice_body([("10.0.0.2", True, "a"), ("10.0.0.3", True, "b")])
    )
    assert len(inventory.snapshot("ns").service_addresses[("svc", 80)]) == 2


def test_a_slice_without_its_service_label_is_ignored():
    inventory = Inventory()
    body = slice_body([("10.0.0.2", True, None)])
    body["metadata"]["labels"] = {}
    assert not inventory.upsert_slice("ns", "svc-x", body)


def test_policy_conditions_say_why_and_what_to_do():
    refused = PolicyOutcome(not_accepted=[Problem("RouteUnreachable", "move it last")])
    accepted, resolved, programmed = policy_conditions(refused)
    assert (accepted.status, accepted.reason, accepted.message) == (
        "False",
        "RouteUnreachable",
        "move it last",
    )
    assert resolved.status == "True"
    assert (programmed.status, programmed.reason) == ("False", "Invalid")

    unresolved = PolicyOutcome(unresolved=[Problem("BackendNotFound", "x"), Problem("B", "y")])
    _, resolved, programmed = policy_conditions(unresolved)
    assert (resolved.reason, resolved.message) == ("BackendNotFound", "x; y")
    assert programmed.reason == "RefsNotResolved"

    good = table({"b": backend("http://x/v1")}, route("r", ("b", "m")), version=3)
    noted = PolicyOutcome(table=good, notes=["shadow routes are not evaluated"])
    accepted, _, programmed = policy_conditions(noted)
    assert accepted.status == "True"
    assert "shadow routes are not evaluated" in accepted.message
    assert programmed.status == "True"
    assert good.version_label in programmed.message


def test_backend_conditions_separate_references_from_readiness():
    _, resolved, ready = backend_conditions(Problem("SecretNotFound", "create it"), 0)
    assert (resolved.status, resolved.reason) == ("False", "SecretNotFound")
    assert (ready.status, ready.reason) == ("False", "RefsNotResolved")
    _, resolved, ready = backend_conditions(Problem("NoReadyEndpoints", "wait"), 0)
    assert resolved.status == "True"
    assert (ready.status, ready.reason) == ("False", "NoReadyEndpoints")
    _, _, ready = backend_conditions(None, 2)
    assert ready.status == "True"
    assert "2 endpoint(s)" in ready.message


def test_transition_time_moves_only_when_the_status_changes():
    conditions = policy_conditions(PolicyOutcome(unresolved=[Problem("BackendNotFound", "x")]))
    first = render(conditions, 1, None, "2026-11-30T10:00:00Z")
    again = render(conditions, 1, first, "2026-11-30T10:05:00Z")
    assert again == first
    assert same_status(first, again)
    fixed = policy_conditions(
        PolicyOutcome(table=table({"b": backend("http://x/v1")}, route("r", ("b", "m"))))
    )
    later = render(fixed, 2, first, "2026-11-30T10:09:00Z")
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times == {
        "Accepted": "2026-11-30T10:00:00Z",  # True before and after
        "ResolvedRefs": "2026-11-30T10:09:00Z",
        "Programmed": "2026-11-30T10:09:00Z",
    }
    assert later["observedGeneration"] == 2
    assert not same_status(first, later)


def test_events_for_failures_and_recoveries_but_not_for_a_first_good_status():
    bad = policy_conditions(PolicyOutcome(unresolved=[Problem("BackendNotFound", "x")]))
    events = transition_events(None, bad)
    assert [(e.type, e.reason) for e in events] == [
        ("Warning", "BackendNotFound"),
        ("Warning", "RefsNotResolved"),
    ]
    before = render(bad, 1, None, "t")
    assert transition_events(before, bad) == []
    good = policy_conditions(
        PolicyOutcome(table=table({"b": backend("http://x/v1")}, route("r", ("b", "m"))))
    )
    assert [(e.type, e.reason) for e in transition_events(before, good)] == [
        ("Normal", "ResolvedRefs"),
        ("Normal", "Programmed"),
    ]
    assert transition_events(None, good) == []


@pytest.mark.asyncio
async def test_the_board_wakes_watchers_on_change_and_not_on_a_republish():
    board = Board()
    one = table({"b": backend("http://x/v1")}, route("r", ("b", "m")))
    published = Published("ns", "p", LabelSelector(), one)
    assert board.publish(published)
    assert not board.publish(Published("ns", "p", LabelSelector(), one))
    assert board.revision == 1
    waiter = asyncio.create_task(board.wait_for_change(1))
    await asyncio.sleep(0)
    assert not waiter.done()
    assert board.withdraw("ns", "p")
    assert await asyncio.wait_for(waiter, 1) == 2
    assert board.in_namespace("ns") == []
