"""The code and math markers against the regexes they replaced, on random and on real text.

`contains_code` reads line by line with string methods and `contains_math` skips the regex for
ASCII text without a digit or backslash, both for speed; each must answer exactly as the plain
regex did (for code, on texts up to 40,000 characters: past that, only a fence and the lines of
the first and last 20,000 are read, as the last test pins). The regexes here are the
specification, copied from the version before the change. Random texts are drawn, seeded, from
an alphabet of the characters and keywords that matter.
"""

# ruff: noqa: RUF001  (other scripts' digits and Unicode spaces are the point)
from __future__ import annotations

import random
import re

import pytest

from routemesh_sidecar.routing.signals import contains_code, contains_math

pytestmark = pytest.mark.timeout(60)

CODE_SPEC = re.compile(
    r"```|^\s*(def |class |import |from \S+ import |function |const |let |var |#include|"
    r"public |private |func |fn |package |SELECT |INSERT |<\?php|<script)"
    r"|[;{}]\s*$",
    re.MULTILINE,
)
MATH_SPEC = re.compile(
    r"\\(frac|sum|int|sqrt)|[∑∫√≤≥≠±∞]|\b\d+\s*[+*^\u00d7\u00f7]\s*\d+\b"
    r"|\b\d+\s*[-/]\s*\d+\s*=|\b\d+\s*=\s*\d+\b"
)
CODE_PIECES = [
    "def ", "class ", "import ", "from x import ", "from  x import ", "function ", "const ",
    "let ", "var ", "#include", "public ", "private ", "func ", "fn ", "package ", "SELECT ",
    "INSERT ", "<?php", "<script", "```", "``", ";", "{", "}", "\n", "\r", "\t", " ", "  ",
    "\x0c", "\x85", "\u2028", "\u3000", "a", "x", "from", "import", "def", "select ",
]  # fmt: skip
MATH_PIECES = [
    "1", "23", "4", " ", "\t", "\n", "=", "+", "-", "/", "*", "^", "×", "÷", "\\", "\\frac",
    "\\sum", "sqrt", "∑", "≤", "a", "_", "٣", "४", "x2", ".", ",",
]  # fmt: skip


def draws(pieces: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(pieces, k=rng.randrange(0, 12))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(4))
def test_code_is_found_exactly_where_the_regex_found_it(seed: int):
    texts = [*draws(CODE_PIECES, 20_000, seed), "", "x" * 200_000, "a;\n" * 50_000]
    wrong = [t for t in texts if contains_code(t) is not (CODE_SPEC.search(t) is not None)]
    assert wrong == []


@pytest.mark.parametrize("seed", range(4))
def test_math_is_found_exactly_where_the_regex_found_it(seed: int):
    texts = draws(MATH_PIECES, 20_000, seed)
    wrong = [t for t in texts if contains_math(t) is not (MATH_SPEC.search(t) is not None)]
    assert wrong == []


@pytest.mark.parametrize(
    ("text", "math"),
    [
        ("", False),
        ("Explain the proof step by step. " * 6_250, False),  # 200,000 characters, no digit
        ("Date,Open,Close\n2022-01-01,150.02,153.80\n" * 40, False),  # dates are not sums
        ("what is 12 - 7 =", True),
        ("٣ + ٤", True),  # Arabic-Indic digits: not ASCII, so the regex decides
        ("x² ≤ 4", True),
    ],
)
def test_math_on_prose_tables_and_other_scripts(text: str, math: bool):
    assert contains_math(text) is math


PROSE_LINE = "The committee met again on Tuesday and discussed the annual report at length.\n"
_LINES = PROSE_LINE * 200
CUT_AT_A_SEMICOLON = (
    _LINES + "y" * (20_000 - len(_LINES) - 1) + "; and the sentence goes on\n" + PROSE_LINE * 3000
)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (PROSE_LINE * 3000 + "def f(x):\n    return x\n", True),  # pasted under a document
        ("import os\n" + PROSE_LINE * 3000, True),
        (PROSE_LINE * 1500 + "def f(x):\n" + PROSE_LINE * 1500, False),  # past both windows
        (PROSE_LINE * 1500 + "```\nx\n```" + PROSE_LINE * 1500, True),  # a fence, anywhere
        (CUT_AT_A_SEMICOLON, False),  # the line the first window cuts, just after a ";"
        ("x" * 250_000 + ";", True),  # one line with no break: read as it is
    ],
    ids=["tail", "head", "middle", "fence", "cut-line", "one-line"],
)
def test_a_huge_prompt_is_read_for_code_in_its_first_and_last_20000_characters(
    text: str, found: bool
):
    assert len(text) > 40_000
    assert contains_code(text) is found
