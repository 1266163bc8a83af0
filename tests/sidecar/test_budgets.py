"""Budgets through the sidecar, with the official clients in front and fake providers behind.

A cheap primary and a dear spare (priced so that one request with max_tokens=100 costs $3.05
there); the route's budget decides whether the spare may take what the primary failed. Checks
what the client sees (the error names the budget, and is one the SDKs do not retry), what the
providers received, the route span and the metrics.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import SpanProcessor

from routemesh_testing.fakes import Fail, FakeOpenAI, Hang
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread
from routemesh_testing.tables import backend, model_info, route, table

FAST_RETRY = {
    "retry": {"attempts": 2, "backoff": {"base": 0.001, "max": 0.002}},
    "timeouts": {"connect": 0.3, "first_token": 3.0, "total": 10.0},
}
BUDGETS = {
    "cost": {"max_cost_usd": 1.0},
    "tokens": {"max_tokens": 50},
    "tier": {"latency_per_tier": [{"tier": "free", "first_token": 0.6}]},
}


@pytest.fixture
def sidecar(
    workdir: Path,
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    span_processor: SpanProcessor,
    variables: dict[str, str],
) -> Iterator[SidecarThread]:
    backends = {
        "cheap": backend(
            openai_upstream[1],
            models={"m": model_info(input_price=1.0, output_price=2.0)},
            key_env="OPENAI_KEY",
        ),
        "dear": backend(
            openai_spare[1],
            models={"big": model_info(input_price=10_000.0, output_price=30_000.0)},
            key_env="OPENAI_KEY",
        ),
    }
    routes = [
        route(
            name,
            ("cheap", "m"),
            ("dear", "big"),
            match={"models": [name]},
            budget=budget,
            **FAST_RETRY,
        )
        for name, budget in BUDGETS.items()
    ]
    with SidecarThread(
        table(backends, *routes), workdir, span_processor=span_processor, variables=variables
    ) as s:
        yield s


def ask(sidecar: SidecarThread, model: str, max_retries: int = 2, **kwargs: Any) -> Any:
    """A chat completion with max_tokens=100; the client retries what it retries by default."""
    with openai.OpenAI(
        base_url=sidecar.openai_base_url, api_key="app", max_retries=max_retries, timeout=20
    ) as client:
        return client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            **{"max_tokens": 100, **kwargs},
        )


def test_a_cost_budget_stops_a_fallback_that_would_break_it_and_the_error_names_it(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    primary, spare = openai_upstream[0], openai_spare[0]
    primary.always(Fail(500))
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sidecar, "cost")
    error = refused.value
    assert error.status_code == 400
    assert error.code == "budget_exceeded"
    assert error.param == "maxCostPerRequest"
    assert "dear/big" in error.message
    assert "server_error" in error.message, "it also says why the primary did not answer"
    assert primary.count() == 2, "the client did not retry a 400 (max_retries=2)"
    assert spare.count() == 0, "the fallback that would break the budget was never sent"
    span = max(otlp.wait_for(lambda s: s.name == "routemesh.route"), key=lambda s: s.start_ns)
    assert span.attributes["error.type"] == "budget_exceeded"
    assert span.attributes["routemesh.budget.max_cost_usd"] == 1.0
    # A budget is where the number matters: the prompt was counted with a vocabulary.
    assert span.attributes["routemesh.tokens.method"] == "o200k_base"
    assert span.attributes["routemesh.tokens.prompt"] == 7  # "hi": 1 token, and 6 of the format
    assert any(
        "dear/big: maxCostPerRequest" in s for s in span.attributes["routemesh.budget.skipped"]
    )
    assert any(name == "routemesh.budget.skipped" for name, _ in span.events)
    assert (
        sidecar.metric("routemesh_budget_skips_total", route="cost", budget="maxCostPerRequest")
        == 1
    )


def test_the_anthropic_client_gets_the_budget_error_in_its_own_shape(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    openai_upstream[0].always(Fail(500))
    with (
        anthropic.Anthropic(
            base_url=sidecar.base_url, api_key="app", max_retries=2, timeout=20
        ) as client,
        pytest.raises(anthropic.BadRequestError) as refused,
    ):
        client.messages.create(
            model="cost", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    assert "maxCostPerRequest" in str(refused.value)
    assert openai_spare[0].count() == 0


def test_a_budget_that_no_target_fits_sends_nothing(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sidecar, "tokens")  # 5 prompt tokens + up to 100 output > 50
    assert refused.value.param == "maxTokensPerRequest"
    assert openai_upstream[0].count() == 0
    assert openai_spare[0].count() == 0


def test_within_the_budget_the_fallback_answers(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    openai_upstream[0].always(Fail(500))
    raw = ask(sidecar, "cost", max_tokens=10)  # the spare: 5 x $0.01 + 10 x $0.03 = $0.35
    assert raw.headers["x-routemesh-backend"] == "dear"
    assert openai_spare[0].count() == 1


def test_a_tiers_first_token_deadline_ends_a_slow_fallback_chain_in_time(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    openai_upstream[0].always(Hang())
    openai_spare[0].always(Hang())
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as failed:
        ask(sidecar, "tier", max_retries=0, extra_headers={"x-routemesh-tier": "free"})
    elapsed = time.monotonic() - started
    assert failed.value.status_code == 504
    # The route alone would wait 3 s for each of its four attempts; the tier allows 0.6 s for
    # all of them.
    assert elapsed < 0.6 + 1.0, f"took {elapsed:.2f}s"
    assert openai_upstream[0].count() == 1, "no retry fits in what the tier has left"
    assert openai_spare[0].count() == 0, "no time was left for the fallback"


def test_token_and_cost_counters_add_up_what_the_upstream_reported(
    sidecar: SidecarThread, openai_upstream
):
    primary = openai_upstream[0]
    raw = ask(sidecar, "cost")
    usage = raw.parse().usage
    assert usage is not None
    labels = {"backend": "cheap", "model": "m"}
    assert sidecar.metric("routemesh_tokens_total", kind="input", **labels) == usage.prompt_tokens
    assert (
        sidecar.metric("routemesh_tokens_total", kind="output", **labels) == usage.completion_tokens
    )
    expected_cost = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
    assert sidecar.metric("routemesh_cost_usd_total", **labels) == pytest.approx(expected_cost)
    assert float(raw.headers["x-routemesh-cost-usd"]) == pytest.approx(expected_cost, abs=1e-8)
    assert primary.count() == 1
