"""Semantic categories, matched lexically: TF-IDF cosine similarity over words and trigrams.

Route match (`routing.match`) asks a `CategoryClassifier` whether a request's last user message is
in one of a route's categories: similar enough (at least the category's threshold) to one of its
examples. There is no embedding model in the sidecar (none ships with it, and a request must not
wait on one), so similarity here is lexical and deterministic:

- features: the text is case-folded and split into words; its features are the words and the
  character trigrams of the words joined by single spaces and padded with one (so "reason" and
  "reasoning" share most of theirs, and a trigram across two words carries a little word order);
- weights: a feature present weighs its inverse document frequency, smoothed as scikit-learn
  does, with the documents being the examples of the route's categories (binary term frequency:
  in texts this short, whether a feature occurs says more than how often); a feature no example
  has weighs the most, so a long message that says much else scores lower;
- similarity: the cosine of the two weight vectors; a category's score is its best example's.

What that means for users: a prompt that shares wording with an example scores high (about 0.6
for a close paraphrase of a short example), one that means the same in other words scores much
lower than an embedding model would give it, and an unrelated one stays under about 0.2. More
examples, in the words your users use, help more than a lower threshold. See
docs/architecture.md.

The examples' vectors are built once per route table (the pipeline keeps a `CategoryIndex` per
table); a request costs one pass over its message, with the set work done in C. Only the first
`MAX_CHARS` characters of a message are read, which bounds the cost of a huge prompt. Pure: no
I/O, no state beyond what the examples decide.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from routemesh_sidecar.routetable import Category, Signals

if TYPE_CHECKING:
    from routemesh_sidecar.routing.contracts import RoutingRequest

MAX_CHARS = 1024  # about 250 tokens: what a category sees of a message, and of an example
_WORDS = re.compile(r"\w+")
_ROUNDING = 1e-9


def features(text: str) -> set[str]:
    """The text's features: its words (prefixed "w:") and its character trigrams."""
    words = _WORDS.findall(text[:MAX_CHARS].casefold())
    padded = f" {' '.join(words)} "
    found = {padded[i : i + 3] for i in range(len(padded) - 2)}
    found.update(map("w:".__add__, words))
    return found


@dataclass(frozen=True, slots=True)
class CategoryMatch:
    """The closest category of a route for one request: its name, similarity and threshold."""

    name: str
    similarity: float
    threshold: float

    @property
    def matched(self) -> bool:
        """Whether the request is in the category.

        Within rounding: an example's similarity to itself is 1 give or take the last bits, and
        a threshold of 1 must still take it.
        """
        return self.similarity >= self.threshold - _ROUNDING


class CategoryClassifier:
    """The categories of one route's match, with their examples' vectors worked out.

    Each example is kept as a map from its features to the product of the feature's weight in
    the example's unit vector and its weight in any text that has it, so that a text's dot
    product with an example is one sum over the features they share.
    """

    def __init__(self, categories: Sequence[Category]) -> None:
        self._categories = tuple(categories)
        documents = [features(e) for c in self._categories for e in c.examples]
        self._owner = [i for i, c in enumerate(self._categories) for _ in c.examples]
        frequency: Counter[str] = Counter()
        for document in documents:
            frequency.update(document)
        count = len(documents)
        # Smoothed IDF, squared: a feature's weight in a text times its weight in an example.
        self._square = {f: (math.log((1 + count) / (1 + n)) + 1) ** 2 for f, n in frequency.items()}
        self._unseen_square = (math.log(1 + count) + 1) ** 2  # a feature no example has
        self._examples: list[dict[str, float]] = []
        for document in documents:
            norm = math.sqrt(sum(self._square[f] for f in document)) or 1.0
            self._examples.append({f: self._square[f] / norm for f in document})

    def similarities(self, text: str) -> list[float]:
        """Each category's similarity to the text: its best example's cosine, in [0, 1]."""
        found = features(text)
        shared = found & self._square.keys()
        square = sum(map(self._square.__getitem__, shared))
        square += self._unseen_square * (len(found) - len(shared))
        best = [0.0] * len(self._categories)
        if square <= 0.0:
            return best
        norm = math.sqrt(square)
        for owner, example in zip(self._owner, self._examples, strict=True):
            similarity = sum(map(example.__getitem__, shared & example.keys())) / norm
            best[owner] = max(best[owner], min(1.0, similarity))
        return best

    def classify(self, text: str) -> CategoryMatch | None:
        """The first category the text is in, else the closest one; None without categories."""
        return first_matched_else_closest(self._categories, self.similarities(text))


def first_matched_else_closest(
    categories: Sequence[Category], similarities: Sequence[float]
) -> CategoryMatch | None:
    """The first category whose threshold the similarity meets, else the most similar one.

    Every matcher tier (lexical or embedded) decides the same way, so that a policy's categories
    mean the same thing whichever tier scores them: order breaks ties between matched categories.
    """
    closest: CategoryMatch | None = None
    for category, similarity in zip(categories, similarities, strict=True):
        found = CategoryMatch(category.name, similarity, category.threshold)
        if found.matched:
            return found
        if closest is None or similarity > closest.similarity:
            closest = found
    return closest


class CategoryIndex:
    """The classifiers of one route table's matches, each built when first needed.

    The pipeline keeps one per table; a table is immutable and holds its matches alive, so they
    are keyed by identity, which costs nothing to look up per request. A table whose tier embeds
    (`routing.semantic`) comes with its prepared classifiers, which read the request's vector;
    one that was never prepared refuses to classify rather than fall back to words silently.
    """

    def __init__(self, prepared: Any = None, *, lexical: bool = True) -> None:
        self._classifiers: dict[int, CategoryClassifier] = {}
        self._prepared = prepared  # a semantic.PreparedTable (not imported here: a cycle)
        self._lexical = lexical

    def classify(self, signals: Signals, request: RoutingRequest) -> CategoryMatch | None:
        """The request's category among the match's, by the table's tier."""
        if self._prepared is not None:
            vector = request.__dict__.get("embedding")
            if vector is None:  # a caller that did not embed first (a dry run): embed here
                vector = self._prepared.encoder.encode([request.last_user_text[:MAX_CHARS]])[0]
                request.__dict__["embedding"] = vector
            classifier = self._prepared.classifier(signals)
            found: CategoryMatch | None = classifier.classify(vector, request.last_user_text)
            return found
        if not self._lexical:
            raise RuntimeError("the route table's category tier embeds, and it was not prepared")
        return self.classifier(signals).classify(request.last_user_text)

    def classifier(self, signals: Signals) -> CategoryClassifier:
        """The classifier of a match's categories."""
        classifier = self._classifiers.get(id(signals))
        if classifier is None:
            classifier = self._classifiers[id(signals)] = CategoryClassifier(signals.categories)
        return classifier
