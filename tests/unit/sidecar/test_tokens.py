"""Token counts, table-driven: the estimate on every request, the exact count where it matters.

With OpenAI's vocabularies (bpe-openai, installed with the dev tools) and without them (the
estimate stands), for an empty prompt, 200,000 characters, and Japanese text, where characters / 4
undercounts by about 3.5.
"""

import asyncio
import random
from typing import Any

import pytest

from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import NoCandidate, Router
from routemesh_sidecar.routing.tokens import Tokenizers, chat_tokens, load_tokenizers
from routemesh_testing.tables import backend, model_info, route, table

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    loaded = load_tokenizers()
    assert loaded is not None, "bpe-openai is part of the dev tools"
    return loaded


def request(text: str, tokenizers: Tokenizers | None, model: str = "gpt-4o", **body: Any):
    payload = {"model": model, "messages": [{"role": "user", "content": text}], **body}
    return RoutingRequest(
        "openai", "chat", model, {}, payload, random.Random(0), 0.0, None, tokenizers
    )


JAPANESE = "東京の天気は今日も晴れで、とても気持ちがいいです。"


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("", 6, 6),  # the chat format's overhead alone: 3 for the message, 3 for the reply
        ("Hello, world!", 8, 12),
        ("x" * 200_000, 20_000, 60_000),
        (JAPANESE * 100, 1_500, 3_000),
    ],
    ids=["empty", "short", "200k-chars", "japanese"],
)
def test_the_exact_count_is_the_vocabularys(tokenizers, text, low, high):
    counted = request(text, tokenizers).prompt_tokens(exact=True)
    assert low <= counted <= high
    assert counted == tokenizers.o200k.count(text) + 6


def test_the_estimate_undercounts_japanese_by_more_than_two_and_a_half(tokenizers):
    r = request(JAPANESE * 100, tokenizers)
    assert r.prompt_tokens(exact=True) > 2.5 * r.prompt_tokens(exact=False)


@pytest.mark.parametrize(
    ("model", "vocabulary"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4.1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
    ],
)
def test_the_vocabulary_follows_the_requested_model(tokenizers, model, vocabulary):
    assert tokenizers.for_model(model).name == vocabulary


GPT4_TABLE = table(
    {"openai": backend("http://127.0.0.1:9/v1", models={"gpt-4": model_info()})},
    route("chat", ("openai", "gpt-4")),
)
GPT4O_TABLE = table(
    {"openai": backend("http://127.0.0.1:9/v1", models={"gpt-4o": model_info()})},
    route("chat", ("openai", "gpt-4o"), match={"models": ["claude-sonnet-4-5"]}),
)


def fresh() -> Tokenizers:
    loaded = load_tokenizers()
    assert loaded is not None
    return loaded


def cl100k_count(text: str) -> int:
    import bpe_openai

    return len(bpe_openai.get_encoding("cl100k_base").encode_ordinary(text))


def test_cl100k_is_built_only_for_a_table_that_names_a_model_using_it():
    tokenizers = fresh()
    assert tokenizers.unbuilt(GPT4O_TABLE.model_names()) == [], "o200k is built at start"
    asyncio.run(tokenizers.prepare(GPT4O_TABLE))
    assert tokenizers.unbuilt(["gpt-3.5-turbo"]) == [tokenizers.cl100k], "still unbuilt"
    asyncio.run(tokenizers.prepare(GPT4_TABLE))
    assert tokenizers.unbuilt(GPT4_TABLE.model_names()) == []
    text = "Counting tokens exactly, with the vocabulary GPT-4 uses."
    assert tokenizers.for_model("gpt-4").count(text) == cl100k_count(text)


def test_a_request_for_a_model_no_table_named_builds_its_vocabulary_then():
    tokenizers = fresh()
    r = request("Hello there, how are you today?", tokenizers, model="gpt-4")
    assert r.prompt_tokens(exact=True) == cl100k_count("Hello there, how are you today?") + 3 + 3
    assert r.token_method == "cl100k_base"
    assert tokenizers.unbuilt(["gpt-4"]) == []


def test_without_a_tokenizer_the_estimate_stands_and_says_so():
    r = request("Hello, world!", None)
    assert r.token_method is None, "nothing counted yet"
    assert r.prompt_tokens(exact=True) == r.signals.prompt_tokens
    assert r.token_method == "estimate"


def test_with_a_tokenizer_the_method_names_the_vocabulary_once_it_counted(tokenizers):
    r = request("Hello, world!", tokenizers)
    _ = r.signals
    assert r.token_method == "estimate"
    r.prompt_tokens(exact=True)
    assert r.token_method == "o200k_base"


def windows_table(small: int):
    return table(
        {
            "small": backend("http://small/v1", models={"m": model_info(small)}),
            "large": backend("http://large/v1", models={"m": model_info(1_000_000)}),
        },
        route("r", ("small", "m"), ("large", "m")),
    )


def test_near_a_window_the_exact_count_decides_and_japanese_goes_to_the_larger_model(tokenizers):
    text = JAPANESE * 100  # about 650 estimated tokens, about 2,300 exact
    t = windows_table(1_500)
    exact = Router().decide(t, request(text, tokenizers, model="m"))
    assert [c.target.backend for c in exact.plan] == ["large"]
    assert exact.removed["context-window"] == ["small/m"]
    estimated = Router().decide(t, request(text, None, model="m"))
    assert [c.target.backend for c in estimated.plan] == ["small", "large"], (
        "without the tokenizer the estimate says it fits: the upstream's context_length answer "
        "then falls back"
    )


def test_far_from_every_window_nothing_is_counted_exactly(tokenizers):
    r = request("Hello", tokenizers, model="m")
    Router().decide(windows_table(100_000), r)
    assert "exact_prompt_tokens" not in r.__dict__


def test_a_prompt_of_200k_characters_is_counted_and_routed(tokenizers):
    r = request("word " * 40_000, tokenizers, model="m")
    decision = Router().decide(windows_table(32_000), r)
    assert [c.target.backend for c in decision.plan] == ["large"]
    assert r.token_method == "o200k_base"


def test_no_model_can_take_it_says_by_what():
    with pytest.raises(NoCandidate, match="context-window"):
        Router().decide(
            table(
                {"small": backend("http://s/v1", models={"m": model_info(10)})},
                route("r", ("small", "m")),
            ),
            request("word " * 1000, None, model="m"),
        )


def test_chat_tokens_adds_the_chat_formats_overhead(tokenizers):
    assert chat_tokens(tokenizers.o200k, [], 0) == 0
    assert chat_tokens(tokenizers.o200k, ["hi"], 2) == tokenizers.o200k.count("hi") + 9
