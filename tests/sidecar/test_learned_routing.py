"""The learned router through the official OpenAI client, in front of fake providers.

As in examples/learned-router.yaml: the app always asks for "gpt-4o"; the requests the shipped
learned router scores above the threshold of a 30% strong share go to the strong model, the rest
to the cheap one, and the route span carries the score.
"""

import openai
import pytest

from routemesh_sidecar.routing.learned import load_learned_router
from routemesh_testing.fakes import FakeOpenAI
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import cheap_or_strong

pytestmark = pytest.mark.timeout(60)

HARD = "Write a Python function that parses this log file and fix the bug:\ndef parse(line):\n"
EASY = "Write a short, warm thank-you note to my neighbour for watering my plants."


@pytest.fixture
def sidecar(
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    start_sidecar: StartSidecar,
) -> SidecarThread:
    routes = cheap_or_strong(
        openai_upstream[1],
        openai_spare[1],
        "hard",
        {"signals": {"learned_router": {"strong_share": 0.3}}},
    )
    return start_sidecar(routes)


def ask(sidecar: SidecarThread, prompt: str):
    with openai.OpenAI(
        base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20
    ) as client:
        return client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}]
        )


def test_a_request_that_needs_the_strong_model_goes_to_it(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    raw = ask(sidecar, HARD)
    assert raw.parse().choices[0].message.content == "Hello from fake-openai-spare"
    assert raw.headers["x-routemesh-route"] == "hard"
    assert openai_upstream[0].count() == 0
    span = otlp.route_span("hard")
    router = load_learned_router()
    assert span.attributes["routemesh.learned_router.score"] == round(router.score(HARD), 4)
    assert span.attributes["routemesh.learned_router.score"] >= router.threshold(0.3)


def test_an_easy_request_goes_to_the_cheap_model_with_its_score(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    raw = ask(sidecar, EASY)
    assert raw.parse().choices[0].message.content == "Hello from fake-openai"
    assert raw.headers["x-routemesh-route"] == "default"
    assert openai_spare[0].count() == 0
    span = otlp.route_span("default")
    assert span.attributes["routemesh.learned_router.score"] < load_learned_router().threshold(0.3)
