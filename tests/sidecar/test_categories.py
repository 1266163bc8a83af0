"""Semantic categories through the official OpenAI client, in front of fake providers.

As in the cost-saving example: the app always asks for "gpt-4o"; a prompt that reads like
multi-step reasoning goes to the strong model, anything else to the cheap one. The category is
the example's own (three utterances, threshold 0.6), matched lexically by the sidecar.
"""

import openai
import pytest

from routemesh_testing.fakes import FakeOpenAI
from routemesh_testing.otlp import OTLPReceiver
from routemesh_testing.sidecar import SidecarThread, StartSidecar
from routemesh_testing.tables import cheap_or_strong

pytestmark = pytest.mark.timeout(60)

REASONING = {
    "name": "reasoning",
    "threshold": 0.6,
    "examples": [
        "Work through this step by step and explain your reasoning.",
        "Prove that the sum of two even numbers is even.",
        "Compare these three plans and tell me which is best and why.",
    ],
}


@pytest.fixture
def sidecar(
    openai_upstream: tuple[FakeOpenAI, str],
    openai_spare: tuple[FakeOpenAI, str],
    start_sidecar: StartSidecar,
) -> SidecarThread:
    routes = cheap_or_strong(
        openai_upstream[1], openai_spare[1], "reasoning", {"signals": {"categories": [REASONING]}}
    )
    return start_sidecar(routes)


def ask(sidecar: SidecarThread, prompt: str):
    with openai.OpenAI(
        base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20
    ) as client:
        return client.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello."},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": prompt},
            ],
        )


def test_a_reasoning_like_prompt_takes_the_category_route(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    raw = ask(sidecar, "Work through this step by step and explain your reasoning: is 91 prime?")
    assert raw.parse().choices[0].message.content == "Hello from fake-openai-spare"
    assert raw.headers["x-routemesh-route"] == "reasoning"
    assert openai_spare[0].requests[0].json["model"] == "gpt-4o"
    assert openai_upstream[0].count() == 0
    span = otlp.route_span("reasoning")
    assert span.attributes["routemesh.category"] == "reasoning"
    assert span.attributes["routemesh.category.similarity"] >= 0.6
    [recorded] = span.attributes["routemesh.categories"]
    assert recorded.startswith("reasoning=")


def test_an_unrelated_prompt_does_not_match_and_goes_to_the_cheap_model(
    sidecar: SidecarThread, openai_upstream, openai_spare, otlp: OTLPReceiver
):
    raw = ask(sidecar, "Write a limerick about a dog who loves the beach.")
    assert raw.parse().choices[0].message.content == "Hello from fake-openai"
    assert raw.headers["x-routemesh-route"] == "default"
    assert openai_spare[0].count() == 0
    span = otlp.route_span("default")
    assert "routemesh.category" not in span.attributes
    [recorded] = span.attributes["routemesh.categories"]
    name, similarity = recorded.split("=")
    assert name == "reasoning"
    assert float(similarity) < 0.3, "far from the threshold, for tuning it"


def test_only_the_last_user_message_is_classified(sidecar: SidecarThread):
    # An earlier turn that reads like reasoning does not make a small talk turn reasoning.
    with openai.OpenAI(
        base_url=sidecar.openai_base_url, api_key="app", max_retries=0, timeout=20
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[
                {"role": "user", "content": "Explain your reasoning step by step."},
                {"role": "assistant", "content": "Sure."},
                {"role": "user", "content": "Thanks, what time is it in Tokyo?"},
            ],
        )
    assert raw.headers["x-routemesh-route"] == "default"
