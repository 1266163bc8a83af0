"""The request signals rules read: conversation depth, reasoning markers and language.

Table-driven, each with an empty prompt, a prompt of 200,000 characters and non-English text;
then the same signals through a route match, compiled from a RoutingPolicy.
"""

# ruff: noqa: RUF001  (text in other scripts, full-width punctuation included, is the point)
from __future__ import annotations

from typing import Any

import pytest

from routemesh_operator.api.v1alpha1.routingpolicy import RoutingPolicySpec
from routemesh_operator.compiler.routes import compile_route
from routemesh_sidecar.routetable import Signals
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.match import signals_match
from routemesh_sidecar.routing.signals import detect_language, read_signals, reads_like_reasoning

pytestmark = pytest.mark.timeout(30)

LONG = "The meeting notes follow. " * 8_000  # 200,000 characters


def chat(*messages: tuple[str, str]) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages]}


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("", None),
        ("ok", None),
        ("What is the capital of France, and how big is it?", "en"),
        ("Quelle est la capitale de la France et pourquoi ?", "fr"),
        ("Wie spät ist es und was machst du heute?", "de"),
        ("¿Cómo estás? Qué tal el día con la familia", "es"),
        ("Qual é a capital do Brasil? Você sabe como chegar?", "pt"),
        ("Dov'è la stazione e come ci arrivo con il treno per non", "it"),
        ("Hoe laat is het en wat ga je vandaag doen met de kat?", "nl"),
        ("Как дела у тебя сегодня?", "ru"),
        ("北京今天天气怎么样？", "zh"),
        ("東京の天気はどうですか？", "ja"),
        ("오늘 날씨가 어때요?", "ko"),
        ("ما هي عاصمة فرنسا؟", "ar"),
        ("मौसम कैसा है?", "hi"),
        ("מהי בירת צרפת ואיך מגיעים אליה?", "he"),
        ("Ποια είναι η πρωτεύουσα της Γαλλίας;", "el"),
        ("เมืองหลวงของฝรั่งเศสคืออะไร", "th"),
        # A script outranks a few Latin words in it (a product name, code).
        ("Πώς ρυθμίζω το Kubernetes ingress στο cluster μου;", "el"),
        ("def mean(xs): return sum(xs) / len(xs)", None),
        (LONG, "en"),
        ("x" * 200_000, None),
    ],
    ids=lambda value: repr(value)[:24],
)
def test_the_language_is_the_scripts_or_the_common_words_and_none_when_unsure(
    text: str, language: str | None
):
    assert detect_language(text) == language


@pytest.mark.parametrize(
    ("text", "reasoning"),
    [
        ("", False),
        ("hello there", False),
        ("Compare these two cars.", False),  # one marker is everyday speech
        ("Prove that the sum of two even numbers is even, step by step.", True),
        ("Compare the trade-offs of these designs and justify the choice.", True),
        ("What is 12 * 7?", True),
        ("What is 12 - 7 = ?", True),
        ("Book a table for 2024-12-04", False),  # dates, phones, ranges, sizes are not math
        ("Call me at 555-1234", False),
        ("I need 3-4 apples", False),
        ("Size 1/2 inch", False),
        ("Simplify \\frac{3}{9}", True),
        ("Démontrez que √2 est irrationnel.", True),  # math notation reads in any language
        ("Erkläre mir das Wetter.", False),
        (LONG, False),
        (LONG + " Now prove it step by step.", False),  # past the 20,000 characters read
        ("Prove it step by step. " + LONG, True),
    ],
    ids=lambda value: repr(value)[:24],
)
def test_reasoning_takes_two_markers_or_math_notation(text: str, reasoning: bool):
    assert reads_like_reasoning(text) is reasoning


@pytest.mark.parametrize(
    ("body", "turns"),
    [
        (chat(), 0),
        (chat(("user", "")), 1),
        (chat(("system", "be brief"), ("user", "hi")), 1),
        (
            chat(
                ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")
            ),
            3,
        ),
        ({"model": "m", "prompt": "complete this"}, 1),
        ({"model": "m", "prompt": ""}, 1),
        ({"model": "m"}, 0),
    ],
)
def test_the_conversation_depth_counts_user_messages(body: dict[str, Any], turns: int):
    assert read_signals("openai", body).user_turns == turns


def request(body: dict[str, Any]) -> RoutingRequest:
    return RoutingRequest("openai", "chat", "m", {}, body)


@pytest.mark.parametrize(
    ("rule", "body", "matches"),
    [
        (Signals(min_turns=3), chat(("user", "a"), ("assistant", "b"), ("user", "c")), False),
        (Signals(min_turns=2), chat(("user", "a"), ("assistant", "b"), ("user", "c")), True),
        (Signals(max_turns=1), chat(("user", "a"), ("assistant", "b"), ("user", "c")), False),
        (Signals(reasoning=True), chat(("user", "Prove it, step by step.")), True),
        (Signals(reasoning=False), chat(("user", "Prove it, step by step.")), False),
        (Signals(reasoning=True), chat(("user", "")), False),
        (
            Signals(languages=frozenset({"fr", "de"})),
            chat(("user", "Wie spät ist es und was?")),
            True,
        ),
        (Signals(languages=frozenset({"en"})), chat(("user", "Wie spät ist es und was?")), False),
        (Signals(languages=frozenset({"en"})), chat(("user", "")), False),
        (Signals(languages=frozenset({"en"})), chat(("user", LONG)), True),
    ],
)
def test_a_route_takes_the_request_only_within_its_signals(
    rule: Signals, body: dict[str, Any], matches: bool
):
    assert signals_match(rule, request(body)) is matches


def test_a_signal_no_rule_reads_is_never_computed():
    routing = request(chat(("user", "Prove it step by step, in English please.")))
    assert signals_match(Signals(min_turns=1), routing)
    assert "reasoning" not in vars(routing)
    assert "language" not in vars(routing)
    assert not signals_match(Signals(min_turns=2, reasoning=True), routing)
    assert "reasoning" not in vars(routing), "a failed bound spares the checks after it"


def test_reasoning_and_language_read_what_the_user_wrote_not_the_system_prompt():
    body = chat(
        ("system", "You are a careful assistant. Think step by step and prove each claim."),
        ("user", "Quelle est la capitale de la France et pourquoi ?"),
    )
    routing = request(body)
    assert routing.language == "fr"
    assert routing.reasoning is False
    anthropic = RoutingRequest(
        "anthropic",
        "chat",
        "m",
        {},
        {
            "model": "m",
            "system": "Answer in English, and think step by step, then prove it.",
            "messages": [{"role": "user", "content": "Wie spät ist es und was machst du?"}],
        },
    )
    assert anthropic.language == "de"
    assert anthropic.reasoning is False


def test_the_policy_fields_compile_onto_the_wire():
    spec = RoutingPolicySpec.model_validate(
        {
            "selector": {},
            "routes": [
                {
                    "name": "deep-math-fr",
                    "match": {
                        "signals": {
                            "turns": {"min": 3},
                            "reasoning": True,
                            "languages": ["fr", "en"],
                        }
                    },
                    "strategy": {"type": "Fallback"},
                    "targets": [{"backend": "b", "model": "m"}],
                }
            ],
        }
    )
    wire = compile_route("p", spec.routes[0], spec.defaults).match
    assert wire.signals == Signals(min_turns=3, reasoning=True, languages=frozenset({"en", "fr"}))
