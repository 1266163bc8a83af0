"""Signals: the features of a request that route matches and filters read.

Computed once per request, lazily, from the request body in either API's shape. The token estimate
is deliberately cheap (no tokenizer): it runs on every request that reads signals, and routing
mostly needs to know whether a prompt is short or long; where the exact number matters,
`routing.tokens` counts it. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from routemesh_sidecar.routetable import Api

# Code in a prompt: a fenced block, or a line that looks like a statement of a common language
# (it opens with one of these after its indentation, or ends in ; { or }).
_CODE_LINE_STARTS = (
    "def ", "class ", "import ", "function ", "const ", "let ", "var ", "#include", "public ",
    "private ", "func ", "fn ", "package ", "SELECT ", "INSERT ", "<?php", "<script",
)  # fmt: skip
_CODE_LINE_ENDS = (";", "{", "}")
_FROM_IMPORT = re.compile(r"from \S+ import ")
CHARS_PER_TOKEN = 4  # the estimate: a quarter of the characters
_TOKENS_PER_MESSAGE = 4
# Markers of reasoning, math or analysis: asks to go step by step, prove, derive, calculate or
# compare. Two of them (or one piece of math notation) make a prompt read like reasoning: one
# "compare" or "why" alone is everyday speech.
_REASONING_WORDS = re.compile(
    r"\b(step[- ]by[- ]step|prove|proof|derive|derivation|calculate|compute|solve|theorem|"
    r"lemma|equation|integral|derivative|probability|analy[sz]e|analysis|compare|trade-?offs?|"
    r"reasoning|explain why|why does|why is|estimate|optimi[sz]e|justify)\b",
    re.IGNORECASE,
)
# Math: LaTeX, math symbols, or arithmetic on numbers. A bare dash or slash between numbers is
# a date, a phone number, a range or a fraction of an inch far more often than a sum, so those
# count only in an equation (`12 - 7 =`).
# The lookahead first: one character test per position before the alternatives (3-4x faster on
# text without math, where the search runs to the end). A number is read once, possessively, and
# then what follows it: giving digits or spaces back could never match (the next character would
# be a digit or a space), and retrying costs a table of numbers 2x its time.
_MATH = re.compile(
    r"(?=[\\∑∫√≤≥≠±∞\d])(?:\\(frac|sum|int|sqrt)|[∑∫√≤≥≠±∞]"
    r"|\b\d++\s*+(?:[+*^\u00d7\u00f7]\s*+\d+\b|[-/]\s*+\d++\s*+=|=\s*+\d+\b))"
)
# In ASCII, every piece of math notation above starts with a digit or a backslash.
_MATH_STARTS = "0123456789\\"
# How much of a long prompt the content markers read: enough to judge, bounded in time.
_MARKER_CHARS = 20_000
_LANGUAGE_CHARS = 4_000
# Scripts that name their language (kana before the CJK ideographs, which Japanese uses too).
_SCRIPTS = (
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
)
# Latin-script languages, told apart by their commonest short words.
_COMMON_WORDS = {
    "en": frozenset(
        [
            "the",
            "and",
            "is",
            "of",
            "to",
            "in",
            "what",
            "how",
            "you",
            "that",
            "it",
            "for",
            "with",
            "this",
            "are",
            "can",
            "do",
        ]
    ),
    "fr": frozenset(
        [
            "le",
            "la",
            "les",
            "est",
            "et",
            "des",
            "une",
            "un",
            "que",
            "pour",
            "dans",
            "quel",
            "quelle",
            "pas",
            "vous",
            "je",
        ]
    ),
    "de": frozenset(
        [
            "der",
            "die",
            "das",
            "und",
            "ist",
            "nicht",
            "ein",
            "eine",
            "ich",
            "sie",
            "wie",
            "was",
            "mit",
            "zu",
            "für",
        ]
    ),
    "es": frozenset(
        [
            "el",
            "los",
            "las",
            "es",
            "y",
            "que",
            "un",
            "una",
            "por",
            "para",
            "cómo",
            "qué",
            "con",
            "del",
            "está",
        ]
    ),
    "it": frozenset(
        [
            "il",
            "lo",
            "gli",
            "è",
            "di",
            "che",
            "un",
            "una",
            "per",
            "non",
            "come",
            "sono",
            "con",
            "della",
            "questo",
        ]
    ),
    "pt": frozenset(
        [
            "o",
            "os",
            "as",
            "é",
            "de",
            "que",
            "um",
            "uma",
            "para",
            "não",
            "como",
            "com",
            "você",
            "do",
            "está",
        ]
    ),
    "nl": frozenset(
        [
            "de",
            "het",
            "een",
            "en",
            "is",
            "van",
            "niet",
            "dat",
            "ik",
            "je",
            "wat",
            "hoe",
            "met",
            "voor",
            "zijn",
        ]
    ),
}
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class RequestSignals:
    """What routing knows about a request's content."""

    prompt_tokens: int  # the estimate: see `routing.tokens` for the exact count
    max_output_tokens: int | None
    text: str
    modalities: frozenset[str]
    tools_present: bool
    message_count: int = 0
    user_turns: int = 0  # user messages: the conversation's depth

    @cached_property
    def code_present(self) -> bool:
        """Whether the prompt contains code; searched only when a route asks."""
        return contains_code(self.text)


def contains_code(text: str) -> bool:
    """A code fence, or a line that opens like a statement or ends in ; { or } (see above).

    Line by line with string methods rather than one multi-line regex, which tries every
    position of the text: 1.5 µs for 1,000 characters of prose, against 16. A fence is found
    anywhere (one substring search); the lines are read in the first and the last
    `_MARKER_CHARS` characters only, which bounds a huge prompt's cost (a 200,000-character
    prompt took 300 µs of the event loop) and still finds the code pasted under a long document.
    """
    if "```" in text:
        return True
    if len(text) > 2 * _MARKER_CHARS:
        head, tail = text[:_MARKER_CHARS], text[-_MARKER_CHARS:]
        # The lines the windows cut are not read: a cut line could end in ";" where the whole
        # one does not. A window without a line break is one long line, read as it is.
        head = head.rpartition("\n")[0] if "\n" in head else head
        tail = tail.partition("\n")[2] if "\n" in tail else tail
        return _code_line(head) or _code_line(tail)
    return _code_line(text)


def _code_line(text: str) -> bool:
    for line in text.split("\n"):
        indented = line.lstrip()
        if indented.startswith(_CODE_LINE_STARTS) or line.rstrip().endswith(_CODE_LINE_ENDS):
            return True
        if indented.startswith("from ") and _FROM_IMPORT.match(indented):
            return True
    return False


def contains_math(text: str) -> bool:
    """Math notation: a LaTeX command, a math symbol, or digits joined by an operator or "=".

    An ASCII text with no digit or backslash is answered without the regex (which
    tries every position): the common case of prose. Other scripts have digits of their own,
    so a text that is not ASCII always goes to the regex.
    """
    # One substring search per character (memchr-fast), not a set built from the text: 0.3 µs
    # against 5.5 for 1,000 characters.
    if text.isascii() and not any(start in text for start in _MATH_STARTS):
        return False
    return _MATH.search(text) is not None


def reads_like_reasoning(text: str) -> bool:
    """Two reasoning markers, or math notation, in the text's first 20,000 characters."""
    head = text[:_MARKER_CHARS]
    if contains_math(head):
        return True
    markers = {m.group(0).lower() for m in _REASONING_WORDS.finditer(head)}
    return len(markers) >= 2


def detect_language(text: str) -> str | None:
    """The language of the text's first 4,000 characters, by script or by common words.

    A script that names a language wins when a fifth of the letters are in it; otherwise the
    Latin-script language with the most common words, when it has at least two and more than
    any other. None when nothing decides (an empty prompt, a few words, code).
    """
    head = text[:_LANGUAGE_CHARS]
    letters = sum(1 for c in head if c.isalpha())
    if letters == 0:
        return None
    for language, script in _SCRIPTS:
        if len(script.findall(head)) * 5 >= letters:
            return language
    words = [w.lower() for w in _WORD.findall(head)]
    scores = sorted(
        ((sum(w in common for w in words), lang) for lang, common in _COMMON_WORDS.items()),
        reverse=True,
    )
    (best, language), (second, _) = scores[0], scores[1]
    return language if best >= 2 and best > second else None


def read_signals(api: Api, body: dict[str, Any]) -> RequestSignals:
    """The signals of an OpenAI- or Anthropic-shaped request body."""
    texts: list[str] = []
    modalities: set[str] = set()
    messages = body.get("messages")
    message_count = user_turns = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                message_count += 1
                user_turns += message.get("role") == "user"
                _collect(message.get("content"), texts, modalities)
    for key in ("system", "prompt", "input"):
        _collect(body.get(key), texts, modalities)
    text = "\n".join(texts)
    tokens = -(-len(text) // CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * message_count
    max_output = body.get("max_completion_tokens") or body.get("max_tokens")
    return RequestSignals(
        prompt_tokens=tokens,
        max_output_tokens=max_output if isinstance(max_output, int) else None,
        text=text,
        modalities=frozenset(modalities or {"Text"}),
        tools_present=bool(body.get("tools")),
        message_count=message_count,
        # A completion or embedding request is one turn: its prompt or input.
        user_turns=user_turns
        if isinstance(messages, list)
        else int(any(key in body for key in ("prompt", "input"))),
    )


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of either API's body (else a prompt or input string).

    A user message that only carries tool results is not what the user asked, so it is passed
    over for the one before it.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                texts = _user_texts(message.get("content"))
                if texts:
                    return "\n".join(texts)
        return ""
    for key in ("prompt", "input"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return ""


def _user_texts(content: Any) -> list[str]:
    """The text parts a user wrote (tool results left out)."""
    if isinstance(content, str):
        return [content] if content else []
    texts: list[str] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


def _collect(content: Any, texts: list[str], modalities: set[str]) -> None:
    """Gather text and note modalities from a content value of either API."""
    if isinstance(content, str):
        texts.append(content)
        modalities.add("Text")
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                modalities.add("Text")
            elif isinstance(part, dict):
                _collect_part(part, texts, modalities)


def _collect_part(part: dict[str, Any], texts: list[str], modalities: set[str]) -> None:
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        texts.append(part["text"])
        modalities.add("Text")
    elif kind in ("image_url", "image"):
        modalities.add("Image")
    elif kind in ("input_audio", "audio"):
        modalities.add("Audio")
    elif kind == "tool_result":
        _collect(part.get("content"), texts, modalities)
