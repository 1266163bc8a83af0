"""Token counts: the cheap estimate on every request, an exact tokenizer where the number matters.

`signals` estimates a prompt's tokens from its characters (a quarter of them, plus four per
message) on every request that reads signals: it costs nothing, and routing mostly needs to know
short from long. Where the number decides something, `RoutingRequest.prompt_tokens` counts
exactly with OpenAI's BPE vocabularies (the optional `bpe-openai` package, the sidecar's
`tokenizer` extra): a prompt whose estimate is near a candidate's context window, and a request
whose route has a cost or token budget. Without the package the estimate stands, and the route
span's `routemesh.tokens.method` says which was used.

The vocabulary follows the requested model: `cl100k_base` for GPT-4 and GPT-3.5, `o200k_base`
for everything else. For models outside OpenAI's (Claude, Llama) no vocabulary here is theirs,
so the count is an approximation, though a much closer one than the characters (see
docs/benchmarks.md, "Token counts"). `o200k_base` is built when the sidecar starts;
`cl100k_base` (34 MB resident, about 30 ms to build) only once a route table names a model that
uses it (`Tokenizers.prepare`, a preparer of every table, in a thread) or, failing that, when a
request first asks for one. Pure but for loading the vocabularies.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from routemesh_sidecar.routetable import RouteTable

log = logging.getLogger(__name__)

# Tokens OpenAI's chat format adds per message (role and separators) and to prime the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
_CL100K_PREFIXES = ("gpt-4-", "gpt-4 ", "gpt-3.5")


class Tokenizer(Protocol):
    """Counts the tokens of a text in one vocabulary."""

    @property
    def name(self) -> str:
        """The vocabulary's name, as the route span reports it."""

    def count(self, text: str) -> int:
        """The number of tokens of `text`."""


@dataclass(frozen=True)
class _Vocabulary:
    """One of OpenAI's BPE vocabularies, loaded from the installed package."""

    name: str
    encoding: Any

    def count(self, text: str) -> int:
        # encode_ordinary: text that spells a special token counts as text, as providers do.
        return len(self.encoding.encode_ordinary(text))


class _LazyVocabulary:
    """A vocabulary built the first time it is wanted, once, whichever thread wants it first."""

    def __init__(self, name: str, build: Callable[[], Any]) -> None:
        self.name = name
        self._build = build
        self._encoding: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether it has been built."""
        return self._encoding is not None

    def load(self) -> None:
        """Build it, unless it is built already (another thread's build is waited for)."""
        with self._lock:
            if self._encoding is None:
                self._encoding = self._build()

    def count(self, text: str) -> int:
        if self._encoding is None:
            # A request for a model no route table named: built here, on the event loop, once.
            self.load()
        return len(self._encoding.encode_ordinary(text))


@dataclass(frozen=True)
class Tokenizers:
    """The vocabularies the sidecar counts with, chosen by model name."""

    o200k: Tokenizer
    cl100k: Tokenizer

    def for_model(self, model: str) -> Tokenizer:
        """The vocabulary of a requested model (o200k_base unless it is GPT-4 or GPT-3.5)."""
        lowered = model.lower()
        if lowered == "gpt-4" or lowered.startswith(_CL100K_PREFIXES):
            return self.cl100k
        return self.o200k

    def unbuilt(self, models: Iterable[str]) -> list[_LazyVocabulary]:
        """The vocabularies `models` use that are not built yet."""
        wanted = {id(tokenizer): tokenizer for tokenizer in map(self.for_model, models)}
        return [v for v in wanted.values() if isinstance(v, _LazyVocabulary) and not v.loaded]

    async def prepare(self, table: RouteTable) -> None:
        """A route table's preparer: its models' vocabularies, built in a thread before it runs."""
        for vocabulary in self.unbuilt(table.model_names()):
            await asyncio.to_thread(vocabulary.load)


def load_tokenizers() -> Tokenizers | None:
    """OpenAI's vocabularies from `bpe-openai`; None when it is not installed.

    Slow the first time (the vocabularies are built): call it off the event loop, once.
    """
    # bpe-openai 0.1 reads its vocabularies with a deprecated importlib.resources call, on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import bpe_openai  # noqa: PLC0415  (optional: the sidecar works without it)
        except ImportError:
            log.info("bpe-openai is not installed: token counts are estimates")
            return None
        return Tokenizers(
            _Vocabulary("o200k_base", bpe_openai.get_encoding("o200k_base")),
            # Only the import warns: the later build needs no filter (nor its thread-unsafe state).
            _LazyVocabulary("cl100k_base", partial(bpe_openai.get_encoding, "cl100k_base")),
        )


def chat_tokens(tokenizer: Tokenizer, texts: list[str], messages: int) -> int:
    """A prompt's tokens in OpenAI's chat format: its texts, and the per-message overhead."""
    overhead = TOKENS_PER_MESSAGE * messages + (TOKENS_PER_REPLY if messages else 0)
    return sum(tokenizer.count(text) for text in texts) + overhead
