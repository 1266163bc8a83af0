"""Shadow routes through the sidecar, with the official client and fake providers.

Live, the route tries the dear backend first; the shadow route would pick the cheapest. The
shadow is evaluated for every request and never executed: the client sees exactly what it sees
without it, and the cheap backend gets nothing, unless the table mirrors.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import SpanProcessor

from routemesh_sidecar.routetable import RouteTable
from routemesh_testing.fakes import FakeOpenAI
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, model_info, route, table

CHEAP = model_info(input_price=1.0, output_price=2.0)
DEAR = model_info(input_price=10.0, output_price=30.0)


def routes(cheap_url: str, dear_url: str, *, shadow: bool, mirror: float = 0.0) -> RouteTable:
    backends = {
        "cheap": backend(cheap_url, models={"m": CHEAP}, key_env="OPENAI_KEY"),
        "dear": backend(dear_url, models={"m": DEAR}, key_env="OPENAI_KEY"),
    }
    live = route("chat", ("dear", "m"), ("cheap", "m"), policy="p")
    fields: dict[str, Any] = {}
    if shadow:
        cheapest = route(
            "chat-cheapest", ("dear", "m"), ("cheap", "m"), strategy="CheapestCapable", policy="p"
        )
        fields["shadow"] = {"routes": [cheapest], "mirror_percent": mirror}
    return table(backends, live, version=2 if shadow else 1, **fields)


@pytest.fixture
def urls(openai_upstream: tuple[FakeOpenAI, str], openai_spare: tuple[FakeOpenAI, str]):
    return openai_upstream[1], openai_spare[1]  # cheap, dear


@pytest.fixture
def sidecar(
    workdir: Path, urls, span_processor: SpanProcessor, variables
) -> Iterator[SidecarThread]:
    with SidecarThread(
        routes(*urls, shadow=True), workdir, span_processor=span_processor, variables=variables
    ) as s:
        yield s


@dataclass
class Response:
    status_code: int
    content: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.content)


def post(sidecar: SidecarThread, **body: Any) -> Response:
    """A chat completion through the official client; the raw response as the app got it."""
    with openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], **body
        )
        response = raw.http_response
        content = response.read()
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Response(response.status_code, content, headers)


def visible(response: Response) -> tuple[int, bytes, dict[str, str]]:
    """What the app sees, but for RouteMesh's own headers and the date."""
    headers = {
        k: v
        for k, v in response.headers.items()
        if not k.startswith("x-routemesh-") and k != "date"
    }
    return response.status_code, response.content, headers


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_shadow_changes_nothing_the_client_sees(
    sidecar: SidecarThread, urls, openai_upstream, openai_spare, stream: bool
):
    cheap = openai_upstream[0]
    shadowed = visible(post(sidecar, stream=stream))
    sidecar.swap(routes(*urls, shadow=False))
    plain = visible(post(sidecar, stream=stream))
    assert shadowed == plain
    assert cheap.count() == 0, "the shadow's choice is never sent to"
    assert openai_spare[0].count() == 2


def test_the_shadow_decision_and_its_predicted_cost_are_on_the_span_and_in_the_metrics(
    sidecar: SidecarThread, otlp: OTLPReceiver
):
    otlp.clear()
    response = post(sidecar)
    live_cost = float(response.headers["x-routemesh-cost-usd"])
    span = max(otlp.wait_for(lambda s: s.name == "routemesh.route"), key=lambda s: s.start_ns)
    attributes = span.attributes
    assert attributes["routemesh.shadow.route"] == "chat-cheapest"
    assert attributes["routemesh.shadow.choice"] == "cheap/m"
    assert attributes["routemesh.shadow.differs"] is True
    usage = response.json()["usage"]
    predicted = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert attributes["routemesh.shadow.cost_usd"] == pytest.approx(predicted)
    assert attributes["routemesh.shadow.cost_change_usd"] == pytest.approx(
        predicted - live_cost, abs=1e-8
    )
    assert (
        sidecar.metric(
            "routemesh_shadow_decisions_total",
            policy="p",
            shadow_route="chat-cheapest",
            outcome="different",
        )
        == 1
    )
    assert sidecar.metric("routemesh_shadow_cost_usd_total", policy="p") == pytest.approx(predicted)
    totals = sidecar.running.shadowing.ledger.snapshot()["p"]
    assert (totals["evaluated"], totals["divergent"]) == (1, 1)


def test_a_mirror_sends_the_request_to_the_shadows_choice_and_discards_its_answer(
    workdir: Path, urls, openai_upstream, openai_spare, span_processor, variables
):
    cheap, dear = openai_upstream[0], openai_spare[0]
    with SidecarThread(
        routes(*urls, shadow=True, mirror=100),
        workdir,
        span_processor=span_processor,
        variables=variables,
    ) as s:
        response = post(s)
        assert response.headers["x-routemesh-backend"] == "dear", (
            "the live answer is the live route's"
        )
        deadline = time.monotonic() + 5
        while cheap.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cheap.count() == 1, "the mirror reached the shadow's choice"
        assert dear.count() == 1
        labels = {"policy": "p", "backend": "cheap", "model": "m"}
        deadline = time.monotonic() + 5
        while s.metric("routemesh_mirror_requests_total", outcome="ok", **labels) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert s.metric("routemesh_mirror_cost_usd_total", **labels) > 0
        assert s.metric("routemesh_cost_usd_total", backend="cheap") == 0, "counted apart"


def test_mirrors_are_dropped_first_when_the_sidecar_is_busy(
    workdir: Path, urls, openai_upstream, span_processor, variables
):
    with SidecarThread(
        routes(*urls, shadow=True, mirror=100),
        workdir,
        span_processor=span_processor,
        variables=variables,
        mirror_busy_requests=0,  # the live request itself makes the sidecar busy
    ) as s:
        assert post(s).status_code == 200
        labels = {"policy": "p", "backend": "cheap", "model": "m"}
        assert s.metric("routemesh_mirror_requests_total", outcome="dropped", **labels) == 1
    assert openai_upstream[0].count() == 0
