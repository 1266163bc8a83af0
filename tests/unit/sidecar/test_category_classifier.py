"""Semantic categories, matched lexically: features, similarity, route match and the decision."""

import random
from typing import Any

import pytest

from routemesh_sidecar.routetable import Category, RouteTable, Signals
from routemesh_sidecar.routing import categories as categories_module
from routemesh_sidecar.routing.categories import CategoryClassifier, CategoryIndex, features
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.match import signals_match
from routemesh_sidecar.routing.pipeline import Router
from routemesh_sidecar.routing.signals import last_user_text
from routemesh_testing.tables import backend, model_info, route, table

# The cost-saving example's category, as the compiler puts it on the wire.
REASONING = Category(
    name="reasoning",
    threshold=0.6,
    examples=(
        "Work through this step by step and explain your reasoning.",
        "Prove that the sum of two even numbers is even.",
        "Compare these three plans and tell me which is best and why.",
    ),
)
REASONING_PROMPTS = [
    "Work through this step by step and explain your reasoning: why is the sky blue?",
    "Explain your reasoning step by step.",
    "Prove that the product of two odd numbers is odd.",
    "Compare these three laptops and tell me which one is best for programming and why.",
]
UNRELATED_PROMPTS = [
    "Write a limerick about a dog.",
    "What time is it in Tokyo?",
    "Give me a recipe for pancakes.",
    "Draft an email to my landlord about the broken heater.",
    "hi",
]


def test_features_are_words_and_trigrams_case_folded():
    assert features("Hi, HI!") == {"w:hi", " hi", "hi ", "i h"}
    assert {f for f in features("STRASSE Straße") if f.startswith("w:")} == {"w:strasse"}
    assert "w:привет" in features("Привет, мир")  # words of any script
    assert features("") == set()
    assert features("?!") == set()


def test_an_example_is_fully_similar_to_itself_and_nothing_to_an_unrelated_text():
    classifier = CategoryClassifier([REASONING])
    for example in REASONING.examples:
        assert classifier.similarities(example) == [pytest.approx(1.0)]
    assert classifier.similarities("") == [0.0]
    assert classifier.similarities("zzz qqq") == [0.0]


@pytest.mark.parametrize("prompt", REASONING_PROMPTS)
def test_reasoning_like_prompts_reach_the_examples_threshold(prompt: str):
    found = CategoryClassifier([REASONING]).classify(prompt)
    assert found is not None
    assert found.matched, (prompt, found.similarity)


@pytest.mark.parametrize("prompt", UNRELATED_PROMPTS)
def test_unrelated_prompts_stay_far_below_it(prompt: str):
    found = CategoryClassifier([REASONING]).classify(prompt)
    assert found is not None
    assert found.similarity < 0.3, (prompt, found.similarity)
    assert not found.matched


def test_similarity_is_deterministic_and_does_not_depend_on_case_or_punctuation():
    classifier = CategoryClassifier([REASONING])
    prompt = REASONING_PROMPTS[0]
    assert classifier.similarities(prompt) == CategoryClassifier([REASONING]).similarities(prompt)
    assert classifier.similarities(prompt.upper().replace(":", " ;; ")) == pytest.approx(
        classifier.similarities(prompt)
    )


def test_a_longer_message_that_says_much_else_scores_lower():
    classifier = CategoryClassifier([REASONING])
    [short] = classifier.similarities("Explain your reasoning step by step.")
    padded = "Explain your reasoning step by step. " + "Our quarterly sales figures follow. " * 5
    [long] = classifier.similarities(padded)
    assert long < short


def test_the_first_matching_category_wins_else_the_closest_is_reported():
    cooking = Category(name="cooking", threshold=0.5, examples=("Give me a recipe for soup.",))
    classifier = CategoryClassifier([REASONING, cooking])
    found = classifier.classify("Give me a recipe for pancakes.")
    assert found is not None
    assert (found.name, found.matched) == ("cooking", True)
    closest = classifier.classify("What time is it in Tokyo?")
    assert closest is not None
    assert not closest.matched
    similarities = classifier.similarities("What time is it in Tokyo?")
    assert closest.similarity == max(similarities)


def test_a_threshold_of_zero_takes_everything_and_one_only_an_example():
    anything = Category(name="any", threshold=0.0, examples=("x",))
    assert CategoryClassifier([anything]).classify("hello")
    exact = REASONING.model_copy(update={"threshold": 1.0})
    classifier = CategoryClassifier([exact])
    assert classifier.classify(REASONING.examples[1]).matched  # type: ignore[union-attr]
    assert not classifier.classify(REASONING_PROMPTS[0]).matched  # type: ignore[union-attr]


# --- what is classified -------------------------------------------------------------------------


def test_the_last_user_message_is_classified_in_either_api():
    openai_body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second"}, {"type": "image_url"}],
            },
        ]
    }
    assert last_user_text(openai_body) == "second"
    anthropic_body = {
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "what is the weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
        ],
    }
    assert last_user_text(anthropic_body) == "what is the weather?", "tool results are passed over"
    assert last_user_text({"prompt": "complete this"}) == "complete this"
    assert last_user_text({"messages": [{"role": "assistant", "content": "x"}]}) == ""


# --- route match and the decision ---------------------------------------------------------------


def request(text: str, **body: Any) -> RoutingRequest:
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **body}
    return RoutingRequest("openai", "chat", "gpt-4o", {}, payload, random.Random(0))


def cost_saving_table() -> RouteTable:
    """The cost-saving example's routes: code, reasoning by category, then everything else."""
    backends = {
        "openai": backend(
            "http://openai/v1", models={"mini": model_info(), "gpt-4o": model_info()}
        ),
        "anthropic": backend(
            "http://anthropic/v1", api="anthropic", models={"sonnet": model_info()}
        ),
    }
    return table(
        backends,
        route("code", ("anthropic", "sonnet"), match={"signals": {"code_present": True}}),
        route(
            "reasoning",
            ("openai", "gpt-4o"),
            match={"signals": {"categories": [REASONING.model_dump()]}},
        ),
        route("default", ("openai", "mini")),
    )


def test_a_reasoning_prompt_takes_the_category_route_and_the_decision_says_why():
    decision = Router().decide(cost_saving_table(), request(REASONING_PROMPTS[0]))
    assert decision.route.name == "reasoning"
    assert decision.category is not None
    assert decision.category.name == "reasoning"
    assert decision.category.similarity >= 0.6
    assert decision.categories == [decision.category]


def test_an_unrelated_prompt_falls_through_with_its_closest_category_recorded():
    decision = Router().decide(cost_saving_table(), request(UNRELATED_PROMPTS[0]))
    assert decision.route.name == "default"
    assert decision.category is None, "the default route has no categories"
    [closest] = decision.categories
    assert closest.name == "reasoning"
    assert not closest.matched


def test_a_prompt_with_code_is_never_classified():
    prompt = "Work through this step by step:\n```python\nprint(1)\n```"
    decision = Router().decide(cost_saving_table(), request(prompt))
    assert decision.route.name == "code"
    assert decision.categories == []


def test_categories_are_checked_only_when_the_rest_of_the_match_holds():
    rule = Signals(tools_present=True, categories=(REASONING,))
    req = request(REASONING_PROMPTS[0])
    assert not signals_match(rule, req, CategoryIndex())
    assert "classified" not in req.__dict__, "no classification was made"
    assert signals_match(Signals(categories=(REASONING,)), req, CategoryIndex())


def test_the_examples_vectors_are_built_once_per_table(monkeypatch: pytest.MonkeyPatch):
    built: list[int] = []

    class Counting(CategoryClassifier):
        def __init__(self, categories: Any) -> None:
            built.append(1)
            super().__init__(categories)

    monkeypatch.setattr(categories_module, "CategoryClassifier", Counting)
    router = Router()
    first = cost_saving_table()
    for prompt in REASONING_PROMPTS + UNRELATED_PROMPTS:
        router.decide(first, request(prompt))
    assert len(built) == 1
    router.decide(cost_saving_table(), request(REASONING_PROMPTS[0]))
    assert len(built) == 2, "a new table builds its own"
