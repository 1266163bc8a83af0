"""The embedding tiers of semantic categories: encoders, classifiers, preparing a table, routing.

The encoders are the real models (MiniLM on onnxruntime, both the packaged one and the int8
compute one `make models` quantizes, and the token table distilled from it); only the "extra not
installed" case replaces the module lookup, the seam `load_encoder` reads.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routemesh_sidecar.embeddings.encoders import EncoderUnavailable, load_encoder
from routemesh_sidecar.routetable import (
    ActiveRouteTable,
    Category,
    CategoryMatching,
    RouteTable,
    TableRefused,
)
from routemesh_sidecar.routing import semantic
from routemesh_sidecar.routing.categories import CategoryClassifier
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import Router
from routemesh_sidecar.routing.semantic import (
    EmbeddingBusy,
    EmbeddingClassifier,
    SemanticMatcher,
)
from routemesh_testing import tables
from routemesh_testing.models import static_model, transformer_model

pytestmark = pytest.mark.timeout(60)

# The Transformer tier as the image runs it (int8 compute) and as a plain install does (the
# packaged model, computed in float32).
TIERS = ["Static", "Transformer", "Transformer, packaged"]
PARAPHRASES = [
    ("How do I reverse a list in Python?", "What is the way to invert a Python list?"),
    ("What is the capital of France?", "Which city is France's capital?"),
]
UNRELATED = ("How do I reverse a list in Python?", "Give me a recipe for banana bread.")
NON_ENGLISH = {
    "hebrew": "מהי בירת צרפת?",
    "greek": "Ποια είναι η πρωτεύουσα της Γαλλίας;",
    "thai": "เมืองหลวงของฝรั่งเศสคืออะไร",
    "chinese": "法国的首都是哪里",
}


@pytest.fixture(scope="module", params=TIERS)
def encoder(request: pytest.FixtureRequest) -> Any:
    if request.param == "Transformer, packaged":
        return load_encoder("Transformer", None, None)
    return load_encoder(request.param, static_model(), transformer_model())


def test_int8_compute_embeds_as_the_packaged_model_does():
    """The quantized model is the packaged one, computed in int8: the same vectors, nearly."""
    quantized = load_encoder("Transformer", None, transformer_model())
    packaged = load_encoder("Transformer", None, None)
    texts = [a for pair in PARAPHRASES for a in pair] + [*NON_ENGLISH.values(), "x" * 3000]
    agreement = np.sum(quantized.encode(texts) * packaged.encode(texts), axis=1)
    assert agreement.min() > 0.98, agreement
    # and it keeps the packaged model's judgement: paraphrases closer than unrelated texts
    for model in (quantized, packaged):
        assert cosine(model, *PARAPHRASES[0]) > cosine(model, *UNRELATED) + 0.2


def test_a_configured_transformer_model_that_is_missing_is_unavailable_and_says_what_to_set(
    tmp_path: Path,
):
    with pytest.raises(EncoderUnavailable, match="ROUTEMESH_SIDECAR_TRANSFORMER_MODEL"):
        load_encoder("Transformer", None, tmp_path / "absent.onnx")


def test_a_damaged_transformer_model_is_unavailable_with_the_reason(tmp_path: Path):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not an onnx model")
    with pytest.raises(EncoderUnavailable, match="tier Transformer failed to load"):
        load_encoder("Transformer", None, damaged)


def cosine(encoder: Any, a: str, b: str) -> float:
    first, second = encoder.encode([a, b])
    return float(first @ second)


def test_paraphrases_are_closer_than_unrelated_texts(encoder: Any):
    unrelated = cosine(encoder, *UNRELATED)
    for pair in PARAPHRASES:
        assert cosine(encoder, *pair) > unrelated + 0.2, (encoder.name, pair, unrelated)


@pytest.mark.parametrize(
    "text",
    ["", " ", "x" * 200_000, "word " * 40_000, *NON_ENGLISH.values()],
    ids=["empty", "blank", "200k-chars", "40k-words", *NON_ENGLISH],
)
def test_any_text_gives_one_finite_vector_of_unit_length_or_zero(encoder: Any, text: str):
    (vector,) = encoder.encode([text])
    assert vector.dtype == np.float32
    assert np.isfinite(vector).all()
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3 or not vector.any()


def test_a_huge_prompt_reads_only_its_first_tokens(encoder: Any):
    # The same first 256 tokens, whatever follows: the tail is never read.
    head = "Explain the proof that there are infinitely many primes. " * 30
    short, long = encoder.encode([head, head + "banana bread recipe " * 10_000])
    assert float(short @ long) > 0.99


def test_the_encoding_is_deterministic(encoder: Any):
    first = encoder.encode(["Write a haiku about autumn"])
    again = encoder.encode(["Write a haiku about autumn", "other"])[:1]
    assert np.allclose(first, again, atol=1e-5)


def test_a_missing_static_model_file_is_unavailable_and_says_what_to_set(tmp_path: Path):
    with pytest.raises(EncoderUnavailable, match="ROUTEMESH_SIDECAR_STATIC_MODEL"):
        load_encoder("Static", tmp_path / "absent.npz")
    with pytest.raises(EncoderUnavailable, match="ROUTEMESH_SIDECAR_STATIC_MODEL"):
        load_encoder("Static", None)


def test_a_damaged_model_file_is_unavailable_with_the_reason(tmp_path: Path):
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"not a numpy archive")
    with pytest.raises(EncoderUnavailable, match="tier Static failed to load"):
        load_encoder("Static", damaged)


def test_without_the_extra_the_tier_is_unavailable_and_names_the_image(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(EncoderUnavailable) as missing:
        load_encoder("Transformer", None)
    assert "lacks onnxruntime" in str(missing.value)
    assert "EXTRAS=sidecar,embeddings" in str(missing.value)
    assert "tier to Lexical" in str(missing.value)


# ---------------------------------------------------------------- classifiers, on fixed vectors


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


CATEGORIES = [
    Category(name="code", examples=("a", "b", "c"), threshold=0.5),
    Category(name="math", examples=("d", "e"), threshold=0.5),
]
# code's examples: one close to x, two far off; math's: two moderately close to y.
VECTORS = np.stack(
    [unit(1, 0, 0), unit(0, 0, 1), unit(0, 0.2, 1), unit(0.2, 1, 0.1), unit(-0.2, 1, 0.1)]
)


@pytest.mark.parametrize(
    ("method", "k", "query", "expected"),
    [
        # The best example decides: one code example is exactly x.
        ("BestExample", 3, unit(1, 0.1, 0), "code"),
        # The centroid of code's examples leans to z, away from x: math's centroid is closer
        # to a query between x and y.
        ("Centroid", 3, unit(0.6, 1, 0), "math"),
        # The 2 nearest examples of y are both math's.
        ("NearestExamples", 2, unit(0, 1, 0), "math"),
    ],
)
def test_each_method_measures_a_categorys_similarity_as_documented(
    method: str, k: int, query: np.ndarray, expected: str
):
    classifier = EmbeddingClassifier(
        CATEGORIES, VECTORS, CategoryMatching(tier="Static", method=method, k=k)
    )
    found = classifier.classify(query)
    assert found is not None
    assert (found.name, found.matched) == (expected, True)


def test_nearest_examples_gives_zero_to_a_category_with_none_among_them():
    classifier = EmbeddingClassifier(
        CATEGORIES, VECTORS, CategoryMatching(tier="Static", method="NearestExamples", k=1)
    )
    assert classifier.similarities(unit(1, 0, 0)) == [pytest.approx(1.0), 0.0]


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("text", ["a", "d e", "", "nothing alike", "é" * 5000])
def test_a_lexical_weight_blends_the_lexical_similarity_into_the_models(weight: float, text: str):
    query = unit(0.1, 1, 0)  # the vector leans to math's examples
    matching = CategoryMatching(tier="Transformer", method="BestExample", lexical_weight=weight)
    blended = EmbeddingClassifier(CATEGORIES, VECTORS, matching).similarities(query, text)
    model = EmbeddingClassifier(
        CATEGORIES, VECTORS, CategoryMatching(tier="Transformer", method="BestExample")
    ).similarities(query, text)
    lexical = CategoryClassifier(CATEGORIES).similarities(text)
    expected = [(1 - weight) * m + weight * w for m, w in zip(model, lexical, strict=True)]
    assert blended == pytest.approx(expected)
    assert all(0.0 <= value <= 1.0 for value in blended)


def test_a_blend_reads_a_repeated_prompts_words_once_and_keeps_a_bounded_cache(monkeypatch):
    classifier = EmbeddingClassifier(
        CATEGORIES, VECTORS, CategoryMatching(tier="Static", lexical_weight=0.5)
    )
    lexical = classifier._lexical
    assert lexical is not None
    read: list[str] = []
    real = lexical.similarities

    def counted(text: str) -> list[float]:
        read.append(text)
        return real(text)

    monkeypatch.setattr(lexical, "similarities", counted)
    first = classifier.similarities(unit(1, 0, 0), "a b")
    assert classifier.similarities(unit(1, 0, 0), "a b") == first
    assert read == ["a b"]
    monkeypatch.setattr(semantic, "LEXICAL_CACHE_SIZE", 3)
    for index in range(10):
        classifier.similarities(unit(1, 0, 0), f"text {index}")
    assert len(classifier._lexical_cache) == 3


def test_the_words_can_outvote_the_vector_in_a_blend():
    """The text is code's own example, word for word; the vector leans to math."""
    query = unit(0.1, 1, 0)
    plain = EmbeddingClassifier(CATEGORIES, VECTORS, CategoryMatching(tier="Static"))
    blend = EmbeddingClassifier(
        CATEGORIES, VECTORS, CategoryMatching(tier="Static", lexical_weight=0.6)
    )
    assert plain.classify(query, "a") is not None
    assert plain.classify(query, "a").name == "math"  # type: ignore[union-attr]
    assert blend.classify(query, "a").name == "code"  # type: ignore[union-attr]


def test_a_lexical_weight_on_the_lexical_tier_is_refused_and_zero_is_left_out_of_the_table():
    with pytest.raises(ValueError, match="blends into a model tier"):
        CategoryMatching(tier="Lexical", lexical_weight=0.5)
    assert "lexical_weight" not in CategoryMatching(tier="Static").model_dump()
    assert (
        CategoryMatching(tier="Static", lexical_weight=0.25).model_dump()["lexical_weight"] == 0.25
    )


def test_below_every_threshold_the_closest_category_is_reported_unmatched():
    strict = [Category(name=c.name, examples=c.examples, threshold=0.99) for c in CATEGORIES]
    classifier = EmbeddingClassifier(strict, VECTORS, CategoryMatching(tier="Static"))
    found = classifier.classify(unit(1, 1, 1))
    assert found is not None
    assert not found.matched


# ---------------------------------------------------------------- tables, end to end


# Cosines run lower with the transformer (related requests about 0.2 to 0.5) than with the static
# table (about 0.4 to 0.7, unrelated texts about 0.2): thresholds are set per tier.
THRESHOLDS = {"Lexical": 0.3, "Static": 0.4, "Transformer": 0.17}


def table(tier: str, method: str = "Centroid", lexical_weight: float = 0.0) -> RouteTable:
    threshold = THRESHOLDS[tier]
    categories: list[dict[str, Any]] = [
        {
            "name": "code",
            "examples": [
                "Write a Python function that sorts a list",
                "Fix the bug in this JavaScript loop",
                "How do I read a file line by line in Go?",
            ],
            "threshold": threshold,
        },
        {
            "name": "cooking",
            "examples": [
                "Give me a recipe for lasagna",
                "How long should I boil an egg?",
                "What spices go well with lentil soup?",
            ],
            "threshold": threshold,
        },
    ]
    routes = [
        tables.route(category["name"], ("b", "m"), match={"signals": {"categories": [category]}})
        for category in categories
    ]
    return tables.table(
        {"b": tables.backend("http://127.0.0.1:9/v1")},
        *routes,
        tables.route("default", ("b", "m")),
        category_matching={"tier": tier, "method": method, "lexical_weight": lexical_weight},
    )


def routing_request(text: str) -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return RoutingRequest("openai", "chat", "m", {}, body, random.Random(0), 0.0)


@pytest.mark.parametrize("tier", [*TIERS, "Transformer, blended"])
@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("Can you write a Rust function that parses JSON?", "code"),
        ("What should I cook for dinner with chicken and rice?", "cooking"),
        ("Summarize the causes of the French Revolution", "default"),
    ],
)
def test_a_prepared_table_routes_by_meaning(tier: str, text: str, route: str):
    """Each tier, and the Transformer blended half and half with the Lexical tier."""
    packaged = tier == "Transformer, packaged"
    blended = tier == "Transformer, blended"

    async def main() -> str:
        with ThreadPoolExecutor(2) as pool:
            semantic = SemanticMatcher(
                pool,
                static_model=static_model(),
                transformer_model=None if packaged else transformer_model(),
            )
            active = ActiveRouteTable()
            active.add_preparer(semantic.prepare)
            if packaged or blended:
                prepared = table("Transformer", lexical_weight=0.5 if blended else 0.0)
            else:
                prepared = table(tier)
            assert await active.admit(prepared)
            request = routing_request(text)
            await semantic.embed(prepared, request)
            decision = Router(semantic=semantic).decide(prepared, request)
            return decision.route.name

    assert asyncio.run(main()) == route


def test_a_repeated_prompt_is_answered_from_the_cache():
    async def main() -> tuple[int, int, bool]:
        with ThreadPoolExecutor(1) as pool:
            semantic = SemanticMatcher(
                pool, static_model=static_model(), transformer_model=transformer_model()
            )
            prepared = table("Static")
            await semantic.prepare(prepared)
            for _ in range(3):
                request = routing_request("Fix the bug in my Python script")
                await semantic.embed(prepared, request)
            return semantic.cache_hits, semantic.cache_misses, request.__dict__["embedding_cached"]

    assert asyncio.run(main()) == (2, 1, True)


def test_a_tier_the_sidecar_cannot_run_is_refused_and_the_old_table_stays(tmp_path: Path):
    async def main() -> tuple[RouteTable | None, str | None]:
        with ThreadPoolExecutor(1) as pool:
            semantic = SemanticMatcher(pool, static_model=tmp_path / "absent.npz")
            active = ActiveRouteTable()
            active.add_preparer(semantic.prepare)
            lexical = table("Lexical")
            assert await active.admit(lexical)
            with pytest.raises(TableRefused, match="tier Static needs its distilled model"):
                await active.admit(table("Static"))
            return active.current, active.last_error

    current, error = asyncio.run(main())
    assert current is not None
    assert current.category_matching is not None
    assert current.category_matching.tier == "Lexical"
    assert error is not None
    assert "refused" in error


def test_an_unprepared_embedding_table_is_never_matched_by_words():
    with pytest.raises(RuntimeError, match="was not prepared"):
        Router().decide(table("Transformer"), routing_request("Write a Python function"))


class Failing:
    name = "Static"

    def encode(self, texts: Any) -> Any:
        raise ValueError("the model file is truncated")


def test_any_failure_while_preparing_refuses_the_table_rather_than_escaping():
    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            semantic = SemanticMatcher(
                pool, static_model=static_model(), transformer_model=transformer_model()
            )
            semantic._encoders["Static"] = Failing()
            with pytest.raises(TableRefused, match="could not be embedded: the model file is"):
                await semantic.prepare(table("Static"))

    asyncio.run(main())


def test_a_request_on_a_table_whose_classifiers_were_dropped_prepares_it_again():
    async def main() -> str:
        with ThreadPoolExecutor(1) as pool:
            semantic = SemanticMatcher(
                pool, static_model=static_model(), transformer_model=transformer_model()
            )
            old = table("Static")
            await semantic.prepare(old)
            for _ in range(10):  # later tables push the old one's classifiers out
                await semantic.prepare(table("Static"))
            assert semantic.prepared(old) is None
            request = routing_request("Give me a recipe for pancakes")
            await semantic.embed(old, request)
            return Router(semantic=semantic).decide(old, request).route.name

    assert asyncio.run(main()) == "cooking"


class Gated:
    """An encoder that holds prompts marked "slow" until the test opens the gate."""

    name = "Static"

    def __init__(self) -> None:
        self.gate = threading.Event()

    def encode(self, texts: Any) -> Any:
        if any("slow" in text for text in texts):
            assert self.gate.wait(10)
        return np.tile(unit(1, 0, 0), (len(texts), 1))


def test_beyond_the_queue_limit_a_prompt_is_shed_not_queued_without_bound():
    async def main() -> tuple[int, int]:
        with ThreadPoolExecutor(1) as pool:
            semantic = SemanticMatcher(
                pool,
                static_model=static_model(),
                transformer_model=transformer_model(),
                queue_limit=2,
            )
            gated = Gated()
            semantic._encoders["Static"] = gated
            prepared = table("Static")
            await semantic.prepare(prepared)
            waiting = [
                asyncio.create_task(semantic.embed(prepared, routing_request(f"slow {i}")))
                for i in range(2)
            ]
            while semantic.waiting < 2:  # noqa: ASYNC110 (its own counter; no clock involved)
                await asyncio.sleep(0)
            full = semantic.waiting
            with pytest.raises(EmbeddingBusy, match="2 prompts already wait"):
                await semantic.embed(prepared, routing_request("slow 3"))
            cached = routing_request("slow 0")  # not cached yet either: shed too
            with pytest.raises(EmbeddingBusy):
                await semantic.embed(prepared, cached)
            gated.gate.set()
            await asyncio.gather(*waiting)
            await semantic.embed(prepared, routing_request("slow 0"))  # a hit: never shed
            return full, semantic.waiting

    assert asyncio.run(main()) == (2, 0)
