"""The demo's workload and its summary: apps that ask different kinds of questions.

`make demo` (routemesh_testing.demo) runs one `App` per application Pod. Each app sends its kind
of request (short questions, code, long documents) through its own injected sidecar with the
official OpenAI client, as the app would, and keeps an `Outcome` per request: what the client saw,
where the sidecar sent it, what it cost, and what the same tokens would have cost on the
strongest model. `Summary` turns the outcomes and the sidecars' metrics into the lines the demo
prints. Demo support only: product code never imports it, and it never touches the cluster.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai

SHORT_QUESTIONS = (
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "Give me a synonym for 'quick'.",
    "What does HTTP stand for?",
    "Translate 'good morning' into Spanish.",
)
CODE_QUESTIONS = (
    "Why does this fail on an empty list?\n```python\ndef mean(xs):\n"
    "    return sum(xs) / len(xs)\n```",
    "Make this faster:\n```python\ndef has_duplicates(items):\n    for i in range(len(items)):\n"
    "        for j in range(i + 1, len(items)):\n            if items[i] == items[j]:\n"
    "                return True\n    return False\n```",
    "What is wrong here?\n```go\nfunc first(xs []int) int {\n    return xs[0]\n}\n```",
)
_REPORT_PARAGRAPH = (
    "In the third quarter the platform team moved forty services to the new cluster. Latency at "
    "the edge fell by a fifth, and the on-call load dropped after the noisy alerts were removed. "
    "Two incidents came from expired certificates, and one from a misconfigured autoscaler that "
    "scaled the payments service to zero during a deploy. "
)
LONG_DOCUMENT = (
    "Summarise this quarterly report in three bullet points.\n\n" + _REPORT_PARAGRAPH * 30
)
PROMPTS = {"question": SHORT_QUESTIONS, "code": CODE_QUESTIONS, "document": (LONG_DOCUMENT,)}


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens."""

    input_per_million: float
    output_per_million: float

    def of(self, input_tokens: int, output_tokens: int) -> float:
        """What these tokens cost at this price."""
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / 1e6


@dataclass(frozen=True)
class Outcome:
    """One request as the app saw it, and where the sidecar sent it."""

    app: str
    phase: str
    status: int  # the HTTP status the client saw (0: no answer at all)
    route: str
    backend: str
    attempts: int
    cost_usd: float
    strongest_cost_usd: float
    seconds: float


@dataclass(frozen=True)
class App:
    """An application Pod: its name, the kind of requests it sends, and its sidecar's base URL."""

    name: str
    kind: str
    base_url: str

    def send(self, phase: str, count: int, strongest: Price) -> list[Outcome]:
        """`count` requests, one after another, as this app sends them."""
        prompts = PROMPTS[self.kind]
        with openai.OpenAI(
            base_url=self.base_url, api_key="ignored", max_retries=0, timeout=30
        ) as client:
            return [
                self._one(client, phase, prompts[index % len(prompts)], strongest)
                for index in range(count)
            ]

    def _one(self, client: openai.OpenAI, phase: str, prompt: str, strongest: Price) -> Outcome:
        started = time.perf_counter()
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="default", messages=[{"role": "user", "content": prompt}]
            )
        except openai.APIStatusError as error:
            return self._failed(phase, error.status_code, started)
        except openai.APIConnectionError:
            return self._failed(phase, 0, started)
        usage = raw.parse().usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        return Outcome(
            app=self.name,
            phase=phase,
            status=raw.status_code,
            route=raw.headers["x-routemesh-route"],
            backend=raw.headers["x-routemesh-backend"],
            attempts=int(raw.headers["x-routemesh-attempts"]),
            cost_usd=float(raw.headers["x-routemesh-cost-usd"]),
            strongest_cost_usd=strongest.of(*tokens),
            seconds=time.perf_counter() - started,
        )

    def _failed(self, phase: str, status: int, started: float) -> Outcome:
        return Outcome(self.name, phase, status, "", "", 0, 0.0, 0.0, time.perf_counter() - started)


def send_together(apps: Sequence[App], phase: str, count: int, strongest: Price) -> list[Outcome]:
    """Every app sends `count` requests at the same time as the others."""
    with ThreadPoolExecutor(max_workers=len(apps), thread_name_prefix="demo-app") as pool:
        batches = pool.map(lambda app: app.send(phase, count, strongest), apps)
        return [outcome for batch in batches for outcome in batch]


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Summary:
    """What the demo's traffic did, in numbers."""

    outcomes: tuple[Outcome, ...]
    first_backend: dict[str, str]  # each route's first target: anything else is a fallback
    breaker_openings: int

    @classmethod
    def of(
        cls, outcomes: Iterable[Outcome], first_backend: dict[str, str], breaker_openings: int
    ) -> Summary:
        """A summary of these outcomes."""
        return cls(tuple(outcomes), dict(first_backend), breaker_openings)

    @property
    def errors(self) -> list[Outcome]:
        """Requests the app saw fail."""
        return [o for o in self.outcomes if o.status != 200]

    @property
    def fallbacks(self) -> list[Outcome]:
        """Requests answered by a backend other than their route's first."""
        served = (o for o in self.outcomes if o.status == 200)
        return [o for o in served if o.backend != self.first_backend.get(o.route)]

    def lines(self) -> list[str]:
        """The summary as the demo prints it."""
        seconds = [o.seconds * 1000 for o in self.outcomes]
        cost = sum(o.cost_usd for o in self.outcomes)
        strongest = sum(o.strongest_cost_usd for o in self.outcomes)
        saved = 1 - cost / strongest if strongest else 0.0
        return [
            f"requests: {len(self.outcomes)}, client errors: {len(self.errors)}",
            f"requests per backend: {_counts(o.backend for o in self.outcomes if o.backend)}",
            f"requests per route: {_counts(o.route for o in self.outcomes if o.route)}",
            f"fallbacks: {len(self.fallbacks)} "
            f"(by phase: {_counts(o.phase for o in self.fallbacks)})",
            f"circuit breaker openings (all sidecars): {self.breaker_openings}",
            f"latency at the app: p50 {percentile(seconds, 0.5):.1f} ms, "
            f"p99 {percentile(seconds, 0.99):.1f} ms",
            f"cost: ${cost:.6f} against ${strongest:.6f} for always the strongest model "
            f"({saved:.0%} saved)",
        ]


def _counts(values: Iterable[Any]) -> str:
    return ", ".join(f"{key}={count}" for key, count in sorted(Counter(values).items()))
