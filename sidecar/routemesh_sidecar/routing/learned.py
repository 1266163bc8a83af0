"""The learned router: how much a request needs the strong model, predicted by a trained model.

RouteLLM-style. A route whose match sets `signals.learnedRouter.strongShare` takes the requests
the router scores as needing the strong model, at a threshold calibrated so that about that
share of typical requests do; the next route (the economy model) takes the rest.

The model is a multinomial logistic regression over MT-Bench's eight categories, trained
offline by `hack/train-router.py` on public prompts (see docs/architecture.md, "The learned router")
and shipped in this package as JSON (`models/learned-router.json`): it loads with the standard
library, with no scikit-learn and no numpy. A request's score is the expected quality gap
between the strong and the weak model, given the category probabilities:
sum over categories of P(category | prompt) x gap(category), divided by the largest gap, in
[0, 1]. The gaps are the published per-category MT-Bench scores of GPT-4 and GPT-3.5-turbo that
the file carries. The probabilities are the softmax of the logits divided by the file's
temperature, fitted so that held-out prompts get the probabilities they should. The threshold of
a strong share is the (1 - share) quantile of the scores of prompts the model was not trained on
(cross-validated), also in the file.

Features are computed here, and only here, for training and for routing alike: the lower-cased
words and word pairs of the first `MAX_CHARS` characters of the last user message, present or
not, plus whether it holds code or math, and its length in words on a log scale; a prompt's
feature vector is scaled to unit length (every prompt has at least its length feature).

Called by route match (through `RoutingRequest.strong_need`) and by the sidecar's table
preparer, which loads the file once, off the event loop, when a table first uses it. Pure but for
reading that file; it must not import numpy or anything outside the standard library.
"""

from __future__ import annotations

import asyncio
import bisect
import importlib.resources
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routemesh_sidecar.routetable import RouteTable, TableRefused
from routemesh_sidecar.routing.signals import contains_code, contains_math

FORMAT = "routemesh.dev/learned-router/v1"
MAX_CHARS = 1024  # about 250 tokens: a question and its context; bounds a huge prompt's cost
_WORDS = re.compile(r"\w+")
# An ASCII text splits into the same words 4x faster with every non-word character a space.
_ASCII_NON_WORD = {i: " " for i in range(128) if not (chr(i).isalnum() or chr(i) == "_")}
_LENGTH_BUCKETS = 12


@dataclass(frozen=True)
class _Parts:
    """A prompt's features before they are named: distinct words, distinct pairs, and flags."""

    words: set[str]
    pairs: set[tuple[str, str]]
    flags: list[str]

    def __len__(self) -> int:
        return len(self.words) + len(self.pairs) + len(self.flags)


def words(head: str) -> list[str]:
    """The lower-cased words (runs of word characters) of the text, in order (public for tests)."""
    folded = head.casefold()
    if folded.isascii():
        return folded.translate(_ASCII_NON_WORD).split()
    return _WORDS.findall(folded)


def _parts(text: str) -> _Parts:
    head = text[:MAX_CHARS]
    words_in_order = words(head)
    flags = [f"len:{min(len(words_in_order).bit_length(), _LENGTH_BUCKETS)}"]
    if contains_code(head):
        flags.append("code")
    if contains_math(head):
        flags.append("math")
    return _Parts(set(words_in_order), set(itertools.pairwise(words_in_order)), flags)


def features(text: str) -> set[str]:
    """The features of a prompt, named: words ("w:"), word pairs ("b:"), code, math and length."""
    parts = _parts(text)
    found = {f"w:{word}" for word in parts.words}
    found.update(f"b:{first} {second}" for first, second in parts.pairs)
    found.update(parts.flags)
    return found


class LearnedRouterUnavailable(Exception):
    """The model file is missing, malformed or of another format: a table using it is refused."""


@dataclass(frozen=True)
class LearnedRouter:
    """A trained router: per-feature weights per category, the gaps, and the calibration."""

    categories: tuple[str, ...]
    bias: tuple[float, ...]
    weights: dict[str, tuple[float, ...]]
    gaps: tuple[float, ...]  # strong minus weak model quality, per category, at least 0
    temperature: float  # the logits are divided by it: calibrated on held-out prompts
    quantiles: tuple[float, ...]  # held-out scores at 0%, 1%, ..., 100%
    # The weights by unnamed feature, so that scoring a prompt builds no feature names.
    _by_word: dict[str, tuple[float, ...]] = field(init=False, repr=False, compare=False)
    _by_pair: dict[tuple[str, str], tuple[float, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_word, by_pair = {}, {}
        for name, row in self.weights.items():
            kind, _, rest = name.partition(":")
            if kind == "w":
                by_word[rest] = row
            elif kind == "b" and " " in rest:
                first, _, second = rest.partition(" ")
                by_pair[first, second] = row
        object.__setattr__(self, "_by_word", by_word)
        object.__setattr__(self, "_by_pair", by_pair)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LearnedRouter:
        """Read a model file's JSON; LearnedRouterUnavailable when it is not one."""
        if document.get("format") != FORMAT:
            raise LearnedRouterUnavailable(
                f"the model file's format is {document.get('format')!r}, not {FORMAT!r}"
            )
        try:
            categories = tuple(str(c) for c in document["categories"])
            width = len(categories)
            router = cls(
                categories=categories,
                bias=_row(document["bias"], width),
                weights={str(f): _row(w, width) for f, w in document["weights"].items()},
                gaps=_row(document["gaps"], width),
                temperature=float(document["temperature"]),
                quantiles=tuple(float(q) for q in document["calibration"]["quantiles"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LearnedRouterUnavailable(f"the model file is malformed: {exc!r}") from exc
        if not (math.isfinite(router.temperature) and router.temperature > 0):
            raise LearnedRouterUnavailable("the model file's temperature is not a positive number")
        if width < 2 or len(router.quantiles) < 2 or max(router.gaps) <= 0:
            raise LearnedRouterUnavailable("the model file has too few categories or no gap")
        if list(router.quantiles) != sorted(router.quantiles):
            raise LearnedRouterUnavailable("the model file's quantiles are not in order")
        return router

    def probabilities(self, text: str) -> list[float]:
        """P(category | prompt), in the order of `categories`."""
        parts = _parts(text)
        by_word, by_pair, weights = self._by_word, self._by_pair, self.weights
        rows = [row for word in parts.words if (row := by_word.get(word)) is not None]
        rows += [row for pair in parts.pairs if (row := by_pair.get(pair)) is not None]
        rows += [row for flag in parts.flags if (row := weights.get(flag)) is not None]
        # Column sums in C (zip transposes): a Python loop per feature and category is 3x slower.
        sums = [sum(column) for column in zip(*rows, strict=True)] or [0.0] * len(self.bias)
        # Features are scaled to unit length, so that a long prompt does not outvote a short one.
        scale = 1 / math.sqrt(len(parts))
        # The temperature comes last: the trainer fitted it to the finished logits.
        logits = [
            (bias + total * scale) / self.temperature
            for bias, total in zip(self.bias, sums, strict=True)
        ]
        top = max(logits)
        exps = [math.exp(logit - top) for logit in logits]
        total = sum(exps)
        return [e / total for e in exps]

    def score(self, text: str) -> float:
        """How much the prompt needs the strong model, in [0, 1]: the expected gap, scaled.

        A message without a word (empty, or only images) scores 0: there is nothing to judge,
        and the cheap model is the default a route without a verdict falls to.
        """
        if _WORDS.search(text[:MAX_CHARS]) is None:
            return 0.0
        probabilities = self.probabilities(text)
        expected = sum(p * gap for p, gap in zip(probabilities, self.gaps, strict=True))
        return expected / max(self.gaps)

    def category(self, text: str) -> str:
        """The most probable category of the prompt."""
        probabilities = self.probabilities(text)
        return self.categories[probabilities.index(max(probabilities))]

    def threshold(self, strong_share: float) -> float:
        """The score at and above which about `strong_share` of held-out prompts fall.

        Interpolated between the stored percentiles; a share of 1 takes every prompt.
        """
        if strong_share >= 1:
            return -math.inf
        quantiles = self.quantiles
        position = (1 - strong_share) * (len(quantiles) - 1)
        low = int(position)
        high = min(low + 1, len(quantiles) - 1)
        fraction = position - low
        return quantiles[low] + (quantiles[high] - quantiles[low]) * fraction

    def share_at(self, threshold: float) -> float:
        """The held-out share of prompts scoring at or above `threshold` (for explain)."""
        below = bisect.bisect_left(self.quantiles, threshold)
        return 1 - below / len(self.quantiles)


def _row(values: Any, width: int) -> tuple[float, ...]:
    row = tuple(float(v) for v in values)
    if len(row) != width or not all(math.isfinite(v) for v in row):
        raise ValueError(f"a row of {len(row)} values, or not finite, for {width} categories")
    return row


def packaged_model() -> Path:
    """Where the shipped model file is."""
    return Path(str(importlib.resources.files(__package__).joinpath("models/learned-router.json")))


def load_learned_router(path: Path | None = None) -> LearnedRouter:
    """The router in `path` (the packaged one by default); LearnedRouterUnavailable if it fails."""
    path = path or packaged_model()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LearnedRouterUnavailable(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise LearnedRouterUnavailable(f"{path} does not hold a JSON object")
    return LearnedRouter.from_document(document)


def uses_learned_router(table: RouteTable) -> bool:
    """Whether any route (or shadow route) of the table matches on the learned router."""
    routes = table.routes + (table.shadow.routes if table.shadow is not None else ())
    return any(route.match.signals.learned_router is not None for route in routes)


class LearnedRouting:
    """The sidecar's learned router: loaded by the first table that uses it, then kept.

    `prepare` is a route-table preparer: a table that uses the router while its file cannot
    load is refused with the reason (a NACK), never routed as if every request were easy.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self.router: LearnedRouter | None = None

    async def prepare(self, table: RouteTable) -> None:
        """Load the router if the table uses it and it is not loaded; TableRefused if it fails."""
        if self.router is not None or not uses_learned_router(table):
            return
        try:
            # Parsing the file takes milliseconds: not on the event loop.
            self.router = await asyncio.to_thread(load_learned_router, self._path)
        except LearnedRouterUnavailable as exc:
            raise TableRefused(f"its learned router could not load: {exc}") from exc
