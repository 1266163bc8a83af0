"""Time of one semantic-category classification, and of a routing decision that makes one.

Semantic categories (`match.signals.categories`) are matched lexically by the sidecar
(`routing.categories`): one TF-IDF cosine similarity per example, over words and character
trigrams. Measured in one process with the cost-saving example's category (three examples,
threshold 0.6): `CategoryClassifier.classify` on its own, for a short prompt, a typical one and
a long one (of which the first `MAX_CHARS` are read); then `Router.decide` over the example's
three routes (code, reasoning by category, everything else) for a reasoning prompt (matched by
the category) and an unrelated one (classified, then routed to the catch-all), against the same
table without the category route (no classification at all). Building the examples' vectors
happens once per route table and is reported too. Medians of repeated batches, in microseconds.

Run alone with `PYTHONPATH=testing .venv/bin/python bench/category_match.py`; its `run()` gives
rows in the format of `bench/run.py`.
"""

from __future__ import annotations

import functools
import random
import statistics
import time
from collections.abc import Callable

from routemesh_sidecar.routetable import Category, RouteTable
from routemesh_sidecar.routing.categories import MAX_CHARS, CategoryClassifier
from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.pipeline import Router
from routemesh_testing.tables import backend, model_info, route, table

BATCH = 2000
BATCHES = 15
REASONING = Category(
    name="reasoning",
    threshold=0.6,
    examples=(
        "Work through this step by step and explain your reasoning.",
        "Prove that the sum of two even numbers is even.",
        "Compare these three plans and tell me which is best and why.",
    ),
)
SHORT = "What time is it in Tokyo?"
TYPICAL = (
    "Work through this problem step by step and explain your reasoning: a train leaves at 3pm "
    "going 60 mph."
)
LONG = "Our quarterly sales figures by region and product line follow, one per line. " * 60


def median_microseconds(call: Callable[[], object], batch: int = BATCH) -> float:
    """The median time of one call over repeated batches."""
    times = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(batch):
            call()
        times.append((time.perf_counter() - started) / batch)
    return statistics.median(times) * 1e6


def cost_saving_table(with_category: bool) -> RouteTable:
    """The cost-saving example's routes (code, reasoning, everything else), or without reasoning."""
    backends = {
        "openai": backend("http://openai/v1", models={"mini": model_info(), "big": model_info()}),
        "anthropic": backend(
            "http://anthropic/v1", api="anthropic", models={"sonnet": model_info()}
        ),
    }
    routes = [route("code", ("anthropic", "sonnet"), match={"signals": {"code_present": True}})]
    if with_category:
        routes.append(
            route(
                "reasoning",
                ("openai", "big"),
                match={"signals": {"categories": [REASONING.model_dump()]}},
            )
        )
    routes.append(route("default", ("openai", "mini")))
    return table(backends, *routes)


def decide_microseconds(router: Router, routes: RouteTable, prompt: str) -> float:
    """One decision for a fresh request (signals and classification are per request)."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
    size = len(str(body))
    rng = random.Random(0)

    def decide() -> object:
        request = RoutingRequest("openai", "chat", "gpt-4o", {}, body, rng, 0.0, size)
        return router.decide(routes, request)

    return median_microseconds(decide)


def run() -> list[str]:
    """Rows: the classifier alone, building it, and decisions with and without categories."""
    classifier = CategoryClassifier([REASONING])
    rows = [
        "| measure | prompt | µs |",
        "|---|---|---|",
    ]
    for label, prompt in (
        (f"short ({len(SHORT)} chars)", SHORT),
        (f"typical ({len(TYPICAL)} chars)", TYPICAL),
        (f"long ({len(LONG)} chars, {MAX_CHARS} read)", LONG),
    ):
        micros = median_microseconds(functools.partial(classifier.classify, prompt))
        rows.append(f"| classify | {label} | {micros:.1f} |")
    build = median_microseconds(lambda: CategoryClassifier([REASONING]), batch=200)
    rows.append(f"| build the example vectors (once per table) | - | {build:.1f} |")
    router = Router()
    with_category, without = cost_saving_table(True), cost_saving_table(False)
    for label, prompt in (("reasoning, matched", TYPICAL), ("unrelated", SHORT)):
        micros = decide_microseconds(router, with_category, prompt)
        rows.append(f"| `Router.decide`, cost-saving routes | {label} | {micros:.1f} |")
    for label, prompt in (("reasoning", TYPICAL), ("unrelated", SHORT)):
        micros = decide_microseconds(router, without, prompt)
        rows.append(f"| `Router.decide`, without the category route | {label} | {micros:.1f} |")
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
