"""Distribution without a cluster: selectors, sync counts, token caching, and the watch protocol.

The watch-protocol tests run the real distribution server (aiohttp, on a free local port) with
a fake token reviewer at the unit seam, and the sidecar's real discovery source against it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from routemesh_operator.api.v1alpha1.common import LabelSelector
from routemesh_operator.distribution.auth import Identity, TokenReviewer, Unauthenticated
from routemesh_operator.distribution.board import Board, Published
from routemesh_operator.distribution.server import DistributionServer, selector_matches
from routemesh_operator.distribution.sync import ShadowTotals, SyncTracker
from routemesh_operator.status import shadow_status
from routemesh_sidecar.discovery.watch import (
    WatchRouteTableSource,
    WatchTarget,
    read_downward_labels,
)
from routemesh_sidecar.routetable import ActiveRouteTable, RouteTable
from routemesh_testing.tables import backend, model_info, route, table

pytestmark = pytest.mark.timeout(20)


def selector(**fields: Any) -> LabelSelector:
    return LabelSelector.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"app": "a"}}, {"app": "a", "x": "y"}, True),
        ({"matchLabels": {"app": "a"}}, {"app": "b"}, False),
        (
            {"matchExpressions": [{"key": "t", "operator": "In", "values": ["1", "2"]}]},
            {"t": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["1"]}]},
            {"t": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {"t": ""}, True),
        ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {"t": ""}, False),
    ],
)
def test_selector_semantics_are_kubernetes_ones(
    fields: dict[str, Any], labels: dict[str, str], matches: bool
):
    assert selector_matches(selector(**fields), labels) is matches


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sync_counts_follow_acks_nacks_and_forget_silent_sidecars():
    clock = FakeClock()
    tracker = SyncTracker(forget_after=60, clock=clock)
    assert tracker.report("ns", "a", "p", acked="1-x")
    assert tracker.report("ns", "b", "p", nacked="1-x", error="bad strategy")
    assert tracker.report("ns", "c", "p")
    assert not tracker.report("ns", "c", "p")  # a plain re-watch changes no count
    counts = tracker.counts("ns", "p", "1-x")
    assert (counts.desired, counts.synced, counts.rejected) == (3, 1, 1)
    assert counts.last_error == "bad strategy"
    # A newer version: nobody has it yet, and the old NACK no longer counts.
    newer = tracker.counts("ns", "p", "2-y")
    assert (newer.desired, newer.synced, newer.rejected) == (3, 0, 0)
    # A sidecar that ACKs after a NACK is no longer rejected.
    tracker.report("ns", "b", "p", acked="1-x")
    assert tracker.counts("ns", "p", "1-x").rejected == 0
    clock.now = 30
    tracker.report("ns", "a", "p")
    clock.now = 61
    assert tracker.expire() == {"ns"}
    assert tracker.counts("ns", "p", "1-x").desired == 1


class CountingApi:
    """The one call TokenReviewer makes, answered from a table (the unit seam)."""

    def __init__(self, users: dict[str, dict[str, Any]]) -> None:
        self.users = users
        self.calls = 0

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        user = self.users.get(body["spec"]["token"])
        return {"status": {"authenticated": user is not None, "user": user or {}}}


@pytest.mark.asyncio
async def test_token_reviews_are_cached_by_hash_and_expire():
    clock = FakeClock()
    api = CountingApi(
        {
            "good": {
                "username": "system:serviceaccount:apps:web",
                "extra": {"authentication.kubernetes.io/pod-name": ["web-1"]},
            },
            "person": {"username": "alice"},
        }
    )
    reviewer = TokenReviewer(api, ("routemesh",), cache_seconds=60, clock=clock)  # type: ignore[arg-type]
    assert await reviewer.authenticate("good") == Identity("apps", "web", "web-1")
    assert await reviewer.authenticate("good") == Identity("apps", "web", "web-1")
    assert api.calls == 1
    clock.now = 61
    await reviewer.authenticate("good")
    assert api.calls == 2
    for bad in ("person", "unknown", ""):
        with pytest.raises(Unauthenticated):
            await reviewer.authenticate(bad)


class FixedReviewer:
    """Tokens are `namespace:account`; anything else is refused."""

    async def authenticate(self, token: str) -> Identity:
        namespace, sep, account = token.partition(":")
        if not sep:
            raise Unauthenticated("bad token")
        return Identity(namespace, account)


def make_table(model: str, version: int) -> RouteTable:
    return table(
        {"b": backend("http://x/v1", models={model: model_info()})},
        route("r", ("b", model)),
        version=version,
    )


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[str, Board, SyncTracker, list[str]]]:
    board, tracker = Board(), SyncTracker()
    marked: list[str] = []
    server = DistributionServer(board, tracker, FixedReviewer(), marked.append, default_wait=5)  # type: ignore[arg-type]
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", board, tracker, marked
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_the_sidecar_source_follows_the_board_and_acks(
    served: tuple[str, Board, SyncTracker, list[str]], tmp_path: Path
):
    url, board, tracker, marked = served
    token = tmp_path / "token"
    token.write_text("apps:web\n")
    board.publish(Published("apps", "p", selector(matchLabels={"app": "web"}), make_table("m1", 1)))
    active = ActiveRouteTable()
    source = WatchRouteTableSource(
        WatchTarget(url, "apps", "web-1", {"app": "web"}, token_file=token),
        active,
        last_good=tmp_path / "last" / "table.json",
        wait=5,
    )
    try:
        await source.load_once()
        assert active.current is not None
        assert active.current.routes[0].targets[0].model == "m1"
        assert (tmp_path / "last" / "table.json").exists()
        waiting = asyncio.create_task(source.poll_once(wait=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # long-polling: nothing changed yet
        board.publish(
            Published("apps", "p", selector(matchLabels={"app": "web"}), make_table("m2", 2))
        )
        assert await asyncio.wait_for(waiting, 5)
        assert active.current.routes[0].targets[0].model == "m2"
        # The next request carries the ACK of version 2.
        assert not await source.poll_once(wait=0)
        assert tracker.counts("apps", "p", active.current.version_label).synced == 1
        assert marked.count("apps") >= 2
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_an_invalid_table_is_refused_and_nacked(
    served: tuple[str, Board, SyncTracker, list[str]], tmp_path: Path
):
    url, board, tracker, _ = served
    good = make_table("m1", 1)
    board.publish(Published("apps", "p", selector(), good))
    active = ActiveRouteTable()
    source = WatchRouteTableSource(WatchTarget(url, "apps", "web-1"), active, wait=1)
    # This sidecar has no token file: the server refuses it.
    with pytest.raises(Exception, match="401"):
        await source.poll_once(wait=0)
    token = tmp_path / "token"
    token.write_text("apps:web")
    source.target = WatchTarget(url, "apps", "web-1", token_file=token)
    await source.poll_once(wait=0)
    assert active.current == good
    # A table this sidecar cannot parse (as from a newer operator) is kept out and NACKed.
    broken = make_table("m1", 2)
    object.__setattr__(broken, "backends", {})  # its route now names a missing backend
    board.publish(Published("apps", "p", selector(), broken))
    await source.poll_once(wait=1)
    assert active.current is not None
    assert active.current.version == 1
    assert active.last_error is not None
    await source.poll_once(wait=0.2)  # carries the NACK
    counts = tracker.counts("apps", "p", broken.version_label)
    assert counts.rejected == 1
    assert counts.last_error is not None
    await source.close()


@pytest.mark.asyncio
async def test_another_namespace_is_forbidden(
    served: tuple[str, Board, SyncTracker, list[str]], tmp_path: Path
):
    url, board, _, _ = served
    board.publish(Published("apps", "p", selector(), make_table("m1", 1)))
    token = tmp_path / "token"
    token.write_text("other:web")
    source = WatchRouteTableSource(
        WatchTarget(url, "apps", "x", token_file=token), ActiveRouteTable()
    )
    with pytest.raises(Exception, match="403"):
        await source.poll_once(wait=0)
    await source.close()


@pytest.mark.asyncio
async def test_an_unreachable_operator_falls_back_to_the_last_good_then_the_configmap(
    tmp_path: Path,
):
    configmap = tmp_path / "configmap.json"
    configmap.write_text(make_table("from-configmap", 3).model_dump_json())
    last_good = tmp_path / "last.json"
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) >= 3:
            raise asyncio.CancelledError

    active = ActiveRouteTable()
    source = WatchRouteTableSource(
        WatchTarget("http://127.0.0.1:9", "apps", "x"),
        active,
        fallbacks=[configmap],
        last_good=last_good,
        rng=random.Random(1),
        sleep=record,
        backoff_base=1,
        backoff_max=4,
    )
    await source.load_once()
    assert active.current is not None
    assert active.current.routes[0].targets[0].model == "from-configmap"
    with pytest.raises(asyncio.CancelledError):
        await source.run()
    # Full jitter under a doubling ceiling: 1, 2, 4.
    assert [s <= c for s, c in zip(sleeps, [1, 2, 4], strict=True)] == [True] * 3
    # Once the sidecar has run a table, a restart prefers it to the ConfigMap copy.
    last_good.write_text(make_table("last-good", 4).model_dump_json())
    restarted = ActiveRouteTable()
    again = WatchRouteTableSource(
        WatchTarget("http://127.0.0.1:9", "apps", "x"),
        restarted,
        fallbacks=[configmap],
        last_good=last_good,
    )
    await again.load_once()
    assert restarted.current is not None
    assert restarted.current.routes[0].targets[0].model == "last-good"
    await again.close()


def test_downward_api_labels_parse(tmp_path: Path):
    path = tmp_path / "labels"
    path.write_text('app="web"\nrouting.example/tier="paid \\"gold\\""\nbare=x\n')
    assert read_downward_labels(path) == {
        "app": "web",
        "routing.example/tier": 'paid "gold"',
        "bare": "x",
    }


@pytest.mark.asyncio
async def test_shutting_down_ends_held_watches_at_once(tmp_path: Path):
    board = Board()
    board.publish(Published("apps", "p", selector(), make_table("m1", 1)))
    server = DistributionServer(board, SyncTracker(), FixedReviewer(), lambda _: None)  # type: ignore[arg-type]
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    token = tmp_path / "token"
    token.write_text("apps:web")
    active = ActiveRouteTable()
    source = WatchRouteTableSource(
        WatchTarget(f"http://127.0.0.1:{port}", "apps", "x", token_file=token), active
    )
    await source.poll_once(wait=0)
    held = asyncio.create_task(source.poll_once(wait=60))
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runner.cleanup()
    assert loop.time() - started < 5  # not the 60 s the watch asked for
    assert await asyncio.wait_for(held, 5) is False  # a 304: nothing new
    await source.close()


def test_shadow_totals_sum_over_the_sidecars_that_run_the_policy_now():
    tracker = SyncTracker(clock=lambda: 100.0)
    tracker.report("ns", "a", "chat")
    tracker.report("ns", "b", "chat")
    tracker.report("ns", "c", "other")
    one = ShadowTotals(evaluated=10, divergent=4, live_cost_usd=1.0, shadow_cost_usd=0.5)
    assert tracker.report_shadow("ns", "a", {"chat": one})
    assert not tracker.report_shadow("ns", "a", {"chat": one}), "unchanged: no status write"
    assert tracker.report_shadow("ns", "b", {"chat": one})
    assert tracker.report_shadow("ns", "c", {"chat": one})  # runs another policy now
    assert not tracker.report_shadow("ns", "unknown-pod", {"chat": one}), "only watchers count"
    assert tracker.shadow_totals("ns", "chat") == ShadowTotals(20, 8, 2.0, 1.0)
    assert tracker.shadow_totals("ns", "other") is None
    tracker.report("ns", "a", "chat", acked="1-abc")  # a later watch keeps the totals
    assert tracker.shadow_totals("ns", "chat") == ShadowTotals(20, 8, 2.0, 1.0)


@pytest.mark.parametrize(
    ("totals", "expected"),
    [
        (
            ShadowTotals(8, 2, 1.0, 0.4),
            {
                "evaluated": 8,
                "divergent": 2,
                "divergentPercent": "25.0",
                "liveCostUsd": "1.000000",
                "shadowCostUsd": "0.400000",
                "costChangePercent": "-60.0",
            },
        ),
        (
            ShadowTotals(3, 0, 0.0, 0.0),  # failed requests: no cost to compare
            {
                "evaluated": 3,
                "divergent": 0,
                "divergentPercent": "0.0",
                "liveCostUsd": "0.000000",
                "shadowCostUsd": "0.000000",
            },
        ),
    ],
)
def test_shadow_status_is_decimal_strings_and_leaves_out_a_share_of_nothing(totals, expected):
    assert shadow_status(totals) == expected


def test_the_sidecar_count_of_a_namespace_is_its_watching_sidecars():
    tracker = SyncTracker(clock=lambda: 100.0)
    for pod in ("a", "b"):
        tracker.report("ns", pod, "chat")
    tracker.report("other", "c", "chat")
    assert tracker.sidecars_in("ns") == 2
    assert tracker.sidecars_in("empty") == 0
