"""Semantic categories matched on embeddings: the Static and Transformer tiers.

The sidecar has one `SemanticMatcher`, made by the app with the thread pool its models run in.

- When a route table is admitted, `prepare(table)` loads the table's tier (once per process),
  embeds every example of every category of its routes and shadow routes in the pool, and keeps
  an `EmbeddingClassifier` per match. A tier this sidecar cannot run raises `TableRefused`
  with the encoder's message, which the table's source turns into a NACK.
- Per request, the listener awaits `embed(table, request)` before routing: the last user
  message is embedded in the pool, never on the event loop, and the vector kept on the request;
  a text seen recently comes from an LRU cache instead. Tables whose routes have no categories,
  and Lexical tables, cost nothing here.
- Route match (`routing.match`, through `categories.CategoryIndex`) then classifies the vector
  synchronously.

How a category's similarity is measured (`CategoryMatching.method`): its best example's cosine
(BestExample), the cosine to its examples' mean direction (Centroid), or the mean cosine of its
examples among the k nearest of all examples (NearestExamples, 0 when none is among them). The
category's threshold is the minimum similarity; below it the route does not match and the next
route (typically the default) is tried. It never performs I/O beyond the encoders' model files.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routemesh_sidecar.embeddings.encoders import Encoder, EncoderUnavailable, load_encoder
from routemesh_sidecar.routetable import (
    Category,
    CategoryMatching,
    RouteTable,
    Signals,
    TableRefused,
)
from routemesh_sidecar.routing.categories import (
    MAX_CHARS,
    CategoryClassifier,
    CategoryMatch,
    first_matched_else_closest,
)
from routemesh_sidecar.routing.contracts import RoutingRequest

MODEL_TIERS = ("Static", "Transformer")
# Prepared tables kept: the one in use, the one being swapped in, and a few older ones that
# requests still in flight may have started on.
KEPT_TABLES = 8
LEXICAL_CACHE_SIZE = 4096  # prompts whose words' similarities a blending classifier keeps


class EmbeddingBusy(RuntimeError):
    """More prompts wait for the embedding pool than its limit: shed this one, do not queue it."""


class EmbeddingClassifier:
    """The categories of one match, with their examples' unit vectors.

    With a `lexical_weight`, each category's similarity blends in the Lexical tier's (TF-IDF
    over the same examples): words and meaning fail differently (code shares its words with
    code examples, a paraphrase shares none), so the blend can beat both (docs/benchmarks.md).
    """

    def __init__(
        self, categories: Sequence[Category], vectors: Any, matching: CategoryMatching
    ) -> None:
        import numpy as np  # noqa: PLC0415  (the embeddings extra)

        self._categories = tuple(categories)
        self._lexical_weight = matching.lexical_weight
        self._lexical = CategoryClassifier(categories) if matching.lexical_weight else None
        # The words' similarities of repeated prompts, as the vectors are cached: a blend's
        # cache hit would otherwise read the words again (0.1-0.13 ms).
        self._lexical_cache: OrderedDict[str, list[float]] = OrderedDict()
        self._owner = np.array([i for i, c in enumerate(self._categories) for _ in c.examples])
        self._vectors = vectors
        self._method = matching.method
        self._k = matching.k
        centroids = np.stack(
            [vectors[self._owner == i].mean(axis=0) for i in range(len(self._categories))]
        )
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        self._centroids = centroids / np.maximum(norms, 1e-12)

    def similarities(self, vector: Any, text: str = "") -> list[float]:
        """Each category's similarity to the text (its vector, and its words for a blend)."""
        found = self._model_similarities(vector)
        if self._lexical is None:
            return found
        weight = self._lexical_weight
        lexical = self._lexical_similarities(self._lexical, text[:MAX_CHARS])
        return [(1 - weight) * m + weight * w for m, w in zip(found, lexical, strict=True)]

    def _lexical_similarities(self, lexical: CategoryClassifier, text: str) -> list[float]:
        found = self._lexical_cache.get(text)
        if found is None:
            found = self._lexical_cache[text] = lexical.similarities(text)
            if len(self._lexical_cache) > LEXICAL_CACHE_SIZE:
                self._lexical_cache.popitem(last=False)
        else:
            self._lexical_cache.move_to_end(text)
        return found

    def _model_similarities(self, vector: Any) -> list[float]:
        """Each category's similarity to the text's vector, in [0, 1]."""
        import numpy as np  # noqa: PLC0415

        count = len(self._categories)
        if self._method == "Centroid":
            found = self._centroids @ vector
        else:
            cosines = self._vectors @ vector
            found = np.zeros(count, dtype=np.float32)
            if self._method == "BestExample":
                np.maximum.at(found, self._owner, cosines)
            else:
                nearest = np.argsort(-cosines)[: self._k]
                for i in range(count):
                    mine = cosines[nearest][self._owner[nearest] == i]
                    found[i] = mine.mean() if mine.size else 0.0
        return [min(1.0, max(0.0, float(s))) for s in found]

    def classify(self, vector: Any, text: str = "") -> CategoryMatch | None:
        """The first category the text is in, else the closest one.

        `text` is read only by a blend with the Lexical tier: the same text the vector is of.
        """
        return first_matched_else_closest(self._categories, self.similarities(vector, text))


@dataclass
class PreparedTable:
    """One admitted table's encoder and classifiers, keyed by its matches' identity."""

    table: RouteTable  # held, so that the ids below stay its objects'
    encoder: Encoder
    classifiers: dict[int, EmbeddingClassifier]

    def classifier(self, signals: Signals) -> EmbeddingClassifier:
        """The classifier of one of the table's matches."""
        return self.classifiers[id(signals)]


def category_matches(table: RouteTable) -> list[Signals]:
    """The matches of the table's routes and shadow routes that have categories."""
    routes = table.routes + (table.shadow.routes if table.shadow else ())
    return [r.match.signals for r in routes if r.match.signals.categories]


def uses_model(table: RouteTable) -> bool:
    """Whether the table's categories are matched with a model (Static or Transformer)."""
    matching = table.category_matching
    return matching is not None and matching.tier in MODEL_TIERS and bool(category_matches(table))


class SemanticMatcher:
    """The sidecar's embedding tiers: encoders, prepared tables, and the request cache."""

    def __init__(
        self,
        pool: Executor,
        *,
        static_model: Path | None = None,
        transformer_model: Path | None = None,
        cache_size: int = 4096,
        queue_limit: int = 64,
    ) -> None:
        self._pool = pool
        # Prompts embedding or waiting for the pool; beyond the limit a request is shed (a 503
        # with Retry-After) rather than queued without bound behind a slow model.
        self._queue_limit = queue_limit
        self.waiting = 0
        self._static_model = static_model
        self._transformer_model = transformer_model
        self._encoders: dict[str, Encoder] = {}
        self._prepared: OrderedDict[int, PreparedTable] = OrderedDict()
        self._cache: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0

    async def prepare(self, table: RouteTable) -> None:
        """Load the table's tier and embed its examples; TableRefused when it cannot.

        Any failure refuses the table (a NACK with the reason), never an error the source
        would retry forever without answering.
        """
        if not uses_model(table):
            return
        try:
            await self._prepare(table)
        except TableRefused:
            raise
        except Exception as exc:
            raise TableRefused(f"its categories could not be embedded: {exc}") from exc

    async def _prepare(self, table: RouteTable) -> None:
        matching = table.category_matching
        assert matching is not None  # noqa: S101 (uses_model checked it)
        loop = asyncio.get_running_loop()
        try:
            encoder = await loop.run_in_executor(self._pool, self._encoder, matching.tier)
        except EncoderUnavailable as exc:
            raise TableRefused(str(exc)) from exc
        classifiers = {}
        for signals in category_matches(table):
            examples = [e[:MAX_CHARS] for c in signals.categories for e in c.examples]
            vectors = await loop.run_in_executor(self._pool, encoder.encode, examples)
            classifiers[id(signals)] = EmbeddingClassifier(signals.categories, vectors, matching)
        self._prepared[id(table)] = PreparedTable(table, encoder, classifiers)
        while len(self._prepared) > KEPT_TABLES:
            self._prepared.popitem(last=False)

    def prepared(self, table: RouteTable) -> PreparedTable | None:
        """The table's classifiers, when it was prepared (None: it matches lexically)."""
        found = self._prepared.get(id(table))
        return found if found is not None and found.table is table else None

    async def embed(self, table: RouteTable, request: RoutingRequest) -> None:
        """Embed the request's last user message for the table's tier, in the pool or cache.

        A request that started on a table prepared long ago (several swaps since, so its
        classifiers were dropped) prepares it again rather than fail; TableRefused if it cannot.
        """
        if not uses_model(table):
            return
        prepared = self.prepared(table)
        if prepared is None:
            await self.prepare(table)
            prepared = self.prepared(table)
            assert prepared is not None  # noqa: S101 (prepare keeps it, or raised)
        text = request.last_user_text[:MAX_CHARS]
        key = (prepared.encoder.name, hashlib.blake2b(text.encode(), digest_size=16).digest())
        vector = self._cache.get(key)
        if vector is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            request.__dict__["embedding_cached"] = True
        else:
            vector = await self._encode(prepared.encoder, text)
            self._cache[key] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            self.cache_misses += 1
            request.__dict__["embedding_cached"] = False
        request.__dict__["embedding"] = vector

    async def _encode(self, encoder: Encoder, text: str) -> Any:
        if self.waiting >= self._queue_limit:
            raise EmbeddingBusy(
                f"{self.waiting} prompts already wait for the {encoder.name} model "
                f"(the limit is {self._queue_limit})"
            )
        self.waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return (await loop.run_in_executor(self._pool, encoder.encode, [text]))[0]
        finally:
            self.waiting -= 1

    def _encoder(self, tier: str) -> Encoder:
        encoder = self._encoders.get(tier)
        if encoder is None:
            encoder = self._encoders[tier] = load_encoder(
                tier, self._static_model, self._transformer_model
            )
        return encoder
