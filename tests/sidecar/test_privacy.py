"""Privacy routing through the sidecar, with the official client and fake providers.

A zero-retention backend (the primary fake) and a healthy one that retains data (the spare).
A request that requires zero retention never reaches the spare, even when it is the only healthy
upstream: not as a fallback, not in degraded mode once the primary's breaker is open.
"""

from typing import Any

import openai
import pytest

from routemesh_testing.fakes import Fail, FakeOpenAI
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import backend, route, table

HEADER = "x-routemesh-retention"
SETTINGS = {
    "retry": {"attempts": 2, "backoff": {"base": 0.001, "max": 0.002}},
    "circuit_breaker": {"consecutive_failures": 3, "base_open_time": 30},
    "retention_header": HEADER,
}


@pytest.fixture
def sidecar(
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    start_sidecar: StartSidecar,
) -> SidecarThread:
    backends = {
        "zdr": backend(openai_upstream[1], key_env="OPENAI_KEY", retention="None"),
        "retains": backend(openai_spare[1], key_env="OPENAI_KEY", retention="Standard"),
    }
    routes = table(
        backends,
        route("private", ("zdr", "m"), retention="None", match={"models": ["private"]}, **SETTINGS),
        route("chat", ("zdr", "m"), ("retains", "m"), **SETTINGS),
    )
    return start_sidecar(routes)


def ask(sidecar: SidecarThread, model: str, **kwargs: Any) -> Any:
    with openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}], **kwargs
        )


def test_without_a_requirement_the_fallback_that_retains_data_answers(sidecar, openai_upstream):
    openai_upstream[0].always(Fail(500))
    assert ask(sidecar, "any").headers["x-routemesh-backend"] == "retains"


def test_a_request_that_requires_zero_retention_never_falls_back_to_a_backend_that_retains(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    primary, spare = openai_upstream[0], openai_spare[0]
    primary.always(Fail(500))
    with pytest.raises(openai.APIStatusError) as failed:
        ask(sidecar, "any", extra_headers={HEADER: "None"})
    assert failed.value.status_code == 502
    assert primary.count() == 2
    assert spare.count() == 0, "the only healthy upstream retains data"
    span = max(otlp.wait_for(lambda s: s.name == "routemesh.route"), key=lambda s: s.start_ns)
    assert span.attributes["routemesh.filter.retention.removed"] == ["retains/m"]


def test_a_zero_retention_route_fails_clearly_once_its_backend_is_open_and_never_degrades(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    primary, spare = openai_upstream[0], openai_spare[0]
    primary.always(Fail(503))
    for _ in range(2):  # two requests of two attempts each open the breaker (3 in a row)
        with pytest.raises(openai.APIStatusError):
            ask(sidecar, "private")
    with pytest.raises(openai.APIStatusError) as refused:
        ask(sidecar, "private")
    assert refused.value.status_code == 503
    assert refused.value.response.headers["x-routemesh-error-class"] == "no_healthy_upstream"
    assert "may see its data" in refused.value.message
    assert spare.count() == 0, "degraded mode did not send it to the healthy backend"


def test_a_retention_header_that_names_no_level_is_a_400_and_nothing_is_sent(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sidecar, "any", extra_headers={HEADER: "zero"})
    assert "None, Limited or Standard" in refused.value.message
    assert openai_upstream[0].count() == 0
    assert openai_spare[0].count() == 0
