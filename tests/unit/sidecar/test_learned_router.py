"""The learned router: the shipped model file, its scores and thresholds, and when it won't load."""

import asyncio
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from routemesh_sidecar.routetable import LearnedRouterMatch, Signals, TableRefused
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.learned import (
    FORMAT,
    MAX_CHARS,
    LearnedRouter,
    LearnedRouterUnavailable,
    LearnedRouting,
    features,
    load_learned_router,
    packaged_model,
    words,
)
from routemesh_sidecar.routing.match import signals_match
from routemesh_testing.tables import backend, route, table

pytestmark = pytest.mark.timeout(30)

HARD = "Write a Python function that parses this log file and fix the bug:\ndef parse(line):\n"
EASY = "Write a short, warm thank-you note to my neighbour for watering my plants."


@pytest.fixture(scope="module")
def router() -> LearnedRouter:
    return load_learned_router()


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(packaged_model().read_text())
    return loaded


def test_the_shipped_file_is_a_router_of_mt_benchs_categories(router: LearnedRouter):
    assert router.categories == (
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
    )
    assert len(router.quantiles) == 101
    assert list(router.quantiles) == sorted(router.quantiles)
    assert max(router.gaps) > 0
    assert min(router.gaps) >= 0
    cv = document()["cross_validation"]
    assert cv["folds"] == 10
    assert 0 < cv["accuracy"]["mt-bench"] <= 1


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        pytest.param("", 0.0, 0.0, id="empty: nothing to judge, the cheap model"),
        pytest.param("   \n\t ", 0.0, 0.0, id="only whitespace"),
        pytest.param("x" * 200_000, 0.0, 1.0, id="200,000 characters"),
        pytest.param("Quelle est la capitale de la France ?", 0.0, 1.0, id="French"),
        pytest.param("東京で一番おいしいラーメン屋はどこですか", 0.0, 1.0, id="Japanese"),
        pytest.param(HARD, 0.0, 1.0, id="code"),
    ],
)
def test_every_prompt_scores_within_0_and_1(router: LearnedRouter, text: str, low, high):
    score = router.score(text)
    assert low <= score <= high
    assert math.isfinite(score)
    probabilities = router.probabilities(text)
    assert math.isclose(sum(probabilities), 1.0)


def test_a_huge_prompt_is_read_only_as_far_as_its_first_characters(router: LearnedRouter):
    head = HARD + "word " * (MAX_CHARS // 5)
    assert router.score(head + "z" * 200_000) == router.score(head[:MAX_CHARS])
    assert features(head + "different tail") == features(head[:MAX_CHARS])


def test_code_needs_the_strong_model_more_than_a_thank_you_note(router: LearnedRouter):
    assert router.category(HARD) == "coding"
    assert router.category(EASY) == "writing"
    assert router.score(HARD) > router.threshold(0.3) > router.score(EASY)


@pytest.mark.parametrize("share", [0.05, 0.25, 0.5, 0.75, 0.95])
def test_a_strong_share_is_calibrated_on_the_held_out_scores(router: LearnedRouter, share):
    threshold = router.threshold(share)
    assert router.share_at(threshold) == pytest.approx(share, abs=0.02)
    assert router.threshold(share + 0.04) <= threshold, "a bigger share, a lower threshold"


def test_a_share_of_one_takes_every_request(router: LearnedRouter):
    assert router.threshold(1.0) == -math.inf
    assert router.score("") >= router.threshold(1.0)


def test_features_are_words_pairs_code_math_and_length():
    found = features("Solve 2 + 3 = x\n```python\nprint(x)\n```")
    assert {"w:solve", "b:solve 2", "code", "math"} <= found
    assert any(f.startswith("len:") for f in found)
    assert features("") == {"len:0"}


def named_feature_probabilities(router: LearnedRouter, text: str) -> list[float]:
    """The model's definition, from the named features the trainer sees: the slow way."""
    found = features(text)
    logits = list(router.bias)
    for feature in found:
        for index, weight in enumerate(router.weights.get(feature, ())):
            logits[index] += weight / math.sqrt(len(found))
    logits = [logit / router.temperature for logit in logits]
    exps = [math.exp(logit - max(logits)) for logit in logits]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize(
    "text",
    [
        "",
        HARD,
        EASY,
        "Prove that 2 + 2 = 4, step by step.",
        "Écris une lettre à ma grand-mère: ça va très bien, merci !",
        "用Python写一个快速排序函数",
        "tabs\tand\x0cform feeds, under_scores, it's 3.14; x_1 -- ok?!",
        "The meeting notes follow. " * 8_000,
    ],
)
def test_scoring_reads_the_same_features_the_trainer_names(router: LearnedRouter, text: str):
    expected = named_feature_probabilities(router, text)
    assert router.probabilities(text) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_ascii_words_split_as_the_word_regex_splits_them(seed: int):
    rng = random.Random(seed)
    alphabet = [chr(i) for i in range(128)] + ["word", "Ab_9", "  "]
    texts = ["".join(rng.choices(alphabet, k=rng.randrange(0, 40))) for _ in range(5_000)]
    wrong = [t for t in texts if words(t) != re.findall(r"\w+", t.casefold())]
    assert wrong == []


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        pytest.param(None, "cannot read", id="missing"),
        pytest.param("{not json", "cannot read", id="not JSON"),
        pytest.param("[1, 2]", "does not hold a JSON object", id="not an object"),
        pytest.param(json.dumps({"format": "other/v9"}), "format is 'other/v9'", id="format"),
        pytest.param(json.dumps({"format": FORMAT}), "malformed", id="no weights"),
    ],
)
def test_a_model_file_that_cannot_load_says_why(tmp_path: Path, contents, message):
    path = tmp_path / "router.json"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(LearnedRouterUnavailable, match=message):
        load_learned_router(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"bias": [0.0]}, "malformed", id="a row of the wrong width"),
        pytest.param({"gaps": [0.0] * 8}, "no gap", id="no gap"),
        pytest.param({"bias": [float("nan")] * 8}, "malformed", id="not finite"),
        pytest.param({"calibration": {"quantiles": [0.5, 0.1]}}, "not in order", id="quantiles"),
        pytest.param({"temperature": 0}, "temperature", id="a temperature of 0"),
        pytest.param({"temperature": -1.0}, "temperature", id="a negative temperature"),
        pytest.param({"temperature": "hot"}, "malformed", id="a temperature not a number"),
    ],
)
def test_a_model_file_with_bad_numbers_is_refused(tmp_path: Path, change, message):
    path = tmp_path / "router.json"
    path.write_text(json.dumps({**document(), **change}))
    with pytest.raises(LearnedRouterUnavailable, match=message):
        load_learned_router(path)


def learned_table(share: float = 0.3):
    return table(
        {"b": backend("http://127.0.0.1:9/v1")},
        route(
            "hard",
            ("b", "m"),
            match={"signals": {"learned_router": {"strong_share": share}}},
        ),
        route("default", ("b", "m")),
    )


def test_a_table_that_uses_it_is_refused_when_the_file_cannot_load(tmp_path: Path):
    routing = LearnedRouting(tmp_path / "absent.json")
    with pytest.raises(TableRefused, match="its learned router could not load: cannot read"):
        asyncio.run(routing.prepare(learned_table()))
    assert routing.router is None


def test_a_table_that_does_not_use_it_loads_nothing(tmp_path: Path):
    routing = LearnedRouting(tmp_path / "absent.json")
    plain = table({"b": backend("http://127.0.0.1:9/v1")}, route("default", ("b", "m")))
    asyncio.run(routing.prepare(plain))
    assert routing.router is None


def test_the_first_table_that_uses_it_loads_it_once():
    routing = LearnedRouting()
    asyncio.run(routing.prepare(learned_table()))
    loaded = routing.router
    assert loaded is not None
    asyncio.run(routing.prepare(learned_table(0.5)))
    assert routing.router is loaded


def request(text: str, router: LearnedRouter | None) -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return RoutingRequest("openai", "chat", "m", {}, body, learned_router=router)


@pytest.mark.parametrize(
    ("text", "share", "matches"),
    [
        (HARD, 0.3, True),
        (EASY, 0.3, False),
        (EASY, 1.0, True),
        ("", 0.3, False),
    ],
)
def test_a_route_takes_the_requests_scoring_at_its_shares_threshold(
    router: LearnedRouter, text: str, share: float, matches: bool
):
    rule = Signals(learned_router=LearnedRouterMatch(strong_share=share))
    routing = request(text, router)
    assert signals_match(rule, routing) is matches
    assert routing.__dict__["strong_need"] == router.score(text), "kept for the trace"


def test_the_score_is_computed_only_when_a_route_reads_it(router: LearnedRouter):
    routing = request(HARD, router)
    assert signals_match(Signals(code_present=True), routing)
    assert "strong_need" not in routing.__dict__


def test_a_request_without_the_router_cannot_be_matched_on_it():
    rule = Signals(learned_router=LearnedRouterMatch(strong_share=0.3))
    with pytest.raises(RuntimeError, match="learned router, and it was not loaded"):
        signals_match(rule, request(HARD, None))
