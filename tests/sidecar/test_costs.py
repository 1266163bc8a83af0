"""Cost through the sidecar, with the official client and fake providers.

Selection on the live table's prices, and cost attributed in the metrics to its policy, route,
backend, model and caller tier.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import SpanProcessor

from routemesh_sidecar.routetable import RouteTable
from routemesh_testing.fakes import FakeOpenAI
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, model_info, route, table


def priced(first_price: float, second_price: float, version: int) -> RouteTable:
    backends = {
        "first": backend(
            "http://127.0.0.1:1/v1",
            models={"m": model_info(input_price=first_price)},
            key_env="OPENAI_KEY",
        ),
        "second": backend(
            "http://127.0.0.1:1/v1",
            models={"m": model_info(input_price=second_price)},
            key_env="OPENAI_KEY",
        ),
    }
    return table(
        backends,
        route(
            "cheapest",
            ("first", "m"),
            ("second", "m"),
            strategy="CheapestCapable",
            budget={"latency_per_tier": [{"tier": "free", "first_token": 30}]},
            policy="shop",
        ),
        version=version,
        tier_header="x-tier",
    )


def with_urls(t: RouteTable, first: str, second: str) -> RouteTable:
    data = t.model_dump()
    data["backends"]["first"]["endpoints"] = [{"url": first}]
    data["backends"]["second"]["endpoints"] = [{"url": second}]
    return RouteTable.model_validate(data)


@pytest.fixture
def sidecar(
    workdir: Path,
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    span_processor: SpanProcessor,
    variables: dict[str, str],
) -> Iterator[tuple[SidecarThread, str, str]]:
    urls = openai_upstream[1], openai_spare[1]
    with SidecarThread(
        with_urls(priced(1.0, 5.0, 1), *urls),
        workdir,
        span_processor=span_processor,
        variables=variables,
    ) as s:
        yield s, *urls


def ask(sidecar: SidecarThread, **headers: str) -> Any:
    with openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
        )


def test_cheapest_capable_follows_a_price_change_in_the_live_table(sidecar):
    s, first, second = sidecar
    assert ask(s).headers["x-routemesh-backend"] == "first"
    s.swap(with_urls(priced(9.0, 5.0, 2), first, second))  # first's price went up
    assert ask(s).headers["x-routemesh-backend"] == "second"


def test_cost_is_attributed_to_policy_route_backend_and_only_the_policys_own_tiers(sidecar):
    s, _, _ = sidecar
    costs = {
        tier: float(ask(s, **({"x-tier": tier} if tier else {})).headers["x-routemesh-cost-usd"])
        for tier in ("free", "vip-from-a-typo", "")
    }
    labels = {"policy": "shop", "route": "cheapest", "backend": "first", "model": "m"}
    assert s.metric("routemesh_cost_usd_total", tier="free", **labels) == pytest.approx(
        costs["free"]
    )
    assert s.metric("routemesh_cost_usd_total", tier="other", **labels) == pytest.approx(
        costs["vip-from-a-typo"]
    ), "a tier the policy does not name makes no series of its own"
    assert s.metric("routemesh_cost_usd_total", tier="", **labels) == pytest.approx(costs[""])
    assert all(cost > 0 for cost in costs.values())
