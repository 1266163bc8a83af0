"""The route table: parsing, refusal of bad tables, content hashing, and atomic swaps."""

from pathlib import Path

import pytest

from routemesh_sidecar.discovery.file import FileRouteTableSource
from routemesh_sidecar.routetable import (
    ActiveRouteTable,
    RouteTableError,
    load_route_table_file,
    parse_route_table,
)
from routemesh_sidecar.routing.pipeline import unsupported_strategies
from routemesh_testing.tables import backend, route, table

GOOD = """
version: 3
backends:
  a:
    api: openai
    endpoints: [{url: "http://127.0.0.1:1/v1"}]
    models:
      m: {context_window: 1000, pricing: {input_per_million: 1, output_per_million: 2}}
routes:
  - name: r
    targets: [{backend: a, model: m}]
"""


def test_a_table_parses_with_every_default_resolved():
    parsed = parse_route_table(GOOD)
    assert parsed.version == 3
    assert parsed.routes[0].retry.attempts == 2
    assert parsed.routes[0].timeouts.total == 300.0
    assert parsed.telemetry.capture_content is False
    assert parsed.model_names() == ["m"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("backend: a, model: m", "backend: b, model: m"), "unknown backend 'b'"),
        (("backend: a, model: m", "backend: a, model: x"), "does not serve model 'x'"),
        (("version: 3", "version: -1"), "version"),
        (("routes:", "routez:"), "routez"),
        (("http://127.0.0.1:1/v1", "ftp://x"), "url"),
    ],
)
def test_an_invalid_table_is_refused_with_a_message(change: tuple[str, str], message: str):
    with pytest.raises(RouteTableError, match=message):
        parse_route_table(GOOD.replace(*change))


def test_not_yaml_is_refused():
    with pytest.raises(RouteTableError, match="not YAML"):
        parse_route_table("routes: [")


def test_duplicate_route_names_are_refused():
    bad = GOOD + "  - name: r\n    targets: [{backend: a, model: m}]\n"
    with pytest.raises(RouteTableError, match="route names must be unique"):
        parse_route_table(bad)


def test_content_hash_ignores_the_version_but_not_the_content():
    one = table({"a": backend("http://x/v1")}, route("r", ("a", "m")), version=1)
    two = table({"a": backend("http://x/v1")}, route("r", ("a", "m")), version=2)
    other = table({"a": backend("http://y/v1")}, route("r", ("a", "m")), version=2)
    assert one.content_hash == two.content_hash
    assert one.content_hash != other.content_hash
    assert two.version_label == f"2-{two.content_hash}"


def test_content_hash_does_not_depend_on_the_order_sets_were_built_in():
    # Enough strings that two sets built in opposite orders iterate differently.
    models = [f"model-{i}" for i in range(200)]
    forward = table({"a": backend("http://x/v1")}, route("r", ("a", "m"), match={"models": models}))
    backward = table(
        {"a": backend("http://x/v1")}, route("r", ("a", "m"), match={"models": models[::-1]})
    )
    assert forward.content_hash == backward.content_hash
    dumped = forward.model_dump(mode="json")["routes"][0]["match"]["models"]
    assert dumped == sorted(models)


def test_active_table_swaps_changed_content_and_keeps_the_last_good_one():
    active = ActiveRouteTable()
    seen: list[int] = []
    active.on_swap(lambda t: seen.append(t.version))
    first = table({"a": backend("http://x/v1")}, route("r", ("a", "m")), version=1)
    assert active.offer(first)
    same_content = table({"a": backend("http://x/v1")}, route("r", ("a", "m")), version=2)
    assert not active.offer(same_content), "same content: no swap"
    active.refuse("broken")
    assert active.current is first
    assert active.last_error == "broken"
    second = table({"a": backend("http://y/v1")}, route("r", ("a", "m")), version=3)
    assert active.offer(second)
    assert active.current is second
    assert active.last_error is None
    assert seen == [1, 3]


@pytest.mark.asyncio
async def test_file_source_reloads_changes_and_keeps_the_good_table_on_a_bad_edit(tmp_path: Path):
    path = tmp_path / "table.yaml"
    path.write_text(GOOD)
    active = ActiveRouteTable()
    source = FileRouteTableSource(path, active, interval=0.01)
    await source.load_once()
    assert active.current is not None
    assert active.current.version == 3
    assert not await source.poll_once(), "unchanged file: nothing to do"

    path.write_text(GOOD.replace("version: 3", "version: 4").replace("127.0.0.1:1", "127.0.0.1:2"))
    assert await source.poll_once()
    assert active.current.version == 4

    path.write_text("routes: [")
    assert await source.poll_once()
    assert active.current.version == 4, "a broken file never replaces the good table"
    assert active.last_error is not None
    assert "refused" in active.last_error


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RouteTableError, match="cannot read"):
        load_route_table_file(tmp_path / "absent.yaml")


def test_the_readme_example_table_loads():
    """examples/sidecar/route-table.json is what the README tells people to run."""
    example = Path(__file__).parents[3] / "examples" / "sidecar" / "route-table.json"
    loaded = load_route_table_file(example)
    assert [r.name for r in loaded.routes] == [
        "mini-with-failover",
        "best-value",
        "everything-else",
    ]
    assert loaded.routes[0].circuit_breaker.failure_rate is not None
    assert loaded.routes[1].strategy == "ScoreBased"
    assert loaded.routes[2].retry.attempts == 3
    assert "gpt-4o-mini" in loaded.model_names()
    assert unsupported_strategies(loaded) == [], "the sidecar runs every strategy it shows"
