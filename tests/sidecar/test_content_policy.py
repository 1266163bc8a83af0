"""Content-policy fallbacks through the sidecar, with the official client and fake providers.

The primary refuses the prompt for its content policy. By default the app sees that refusal as a
400 and nothing else is asked (the request would fail alike elsewhere); a route that names
content-policy fallbacks sends it there instead, and only there, and never to one that the
route's retention level rules out.
"""

from typing import Any

import openai
import pytest

from routemesh_testing.fakes import Fail, FakeOpenAI
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import backend, model_info, route, table

REFUSAL = Fail(400, message="flagged by our safety system", code="content_filter")


@pytest.fixture
def sidecar(
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    start_sidecar: StartSidecar,
) -> SidecarThread:
    backends = {
        "strict": backend(openai_upstream[1], key_env="OPENAI_KEY", retention="None"),
        "other": backend(
            openai_spare[1],
            key_env="OPENAI_KEY",
            models={"m": model_info(), "lenient": model_info()},
            retention="Standard",
        ),
    }
    lenient = [{"backend": "other", "model": "lenient"}]
    routes = table(
        backends,
        route("never", ("strict", "m"), ("other", "m"), match={"models": ["never"]}),
        route(
            "private",
            ("strict", "m"),
            match={"models": ["private"]},
            retention="None",
            content_policy_fallbacks=lenient,
        ),
        route("lenient", ("strict", "m"), ("other", "m"), content_policy_fallbacks=lenient),
    )
    return start_sidecar(routes)


def ask(sidecar: SidecarThread, model: str) -> Any:
    with openai.OpenAI(base_url=sidecar.openai_base_url, api_key="app", max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )


def test_by_default_a_content_policy_refusal_reaches_the_app_and_goes_nowhere_else(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    openai_upstream[0].always(REFUSAL)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sidecar, "never")
    assert "safety system" in refused.value.message
    assert openai_spare[0].count() == 0


def test_a_route_with_content_policy_fallbacks_sends_the_refused_request_there(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    openai_upstream[0].always(REFUSAL)
    raw = ask(sidecar, "any")
    assert raw.headers["x-routemesh-model"] == "lenient"
    assert [r.json["model"] for r in openai_spare[0].requests] == ["lenient"], (
        "the route's next target is not asked, the named fallback is"
    )
    span = max(otlp.wait_for(lambda s: s.name == "routemesh.route"), key=lambda s: s.start_ns)
    assert span.attributes["routemesh.fallback.cause"] == "content_policy"
    assert any(name == "routemesh.content_policy.fallback" for name, _ in span.events)


def test_a_content_policy_fallback_the_retention_level_rules_out_is_never_used(
    sidecar: SidecarThread, openai_upstream, openai_spare
):
    openai_upstream[0].always(REFUSAL)
    with pytest.raises(openai.BadRequestError):
        ask(sidecar, "private")
    assert openai_spare[0].count() == 0
