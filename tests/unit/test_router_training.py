"""The learned router's trainer: it fits what the sidecar computes, and its folds hold out."""

import numpy as np
import pytest

from routemesh_sidecar.routing.learned import LearnedRouter
from routemesh_testing.prompts import CATEGORIES
from routemesh_testing.router_training import (
    FOLDS,
    TEMPERATURES,
    Prompt,
    TrainingSettings,
    auc,
    best_temperature,
    example_prompts,
    fit,
    folds,
    log_loss,
    need_scores,
    weights_document,
)

pytestmark = pytest.mark.timeout(60)

TEXTS = [
    "Write a Python function that reverses a linked list",
    "Compose a poem about autumn leaves",
    "If all cats are mammals and some mammals fly, do some cats fly?",
    "",
    "Explique-moi la photosynthèse",
]


def test_the_sidecar_computes_what_the_trainer_fitted():
    model = fit(example_prompts(), TrainingSettings(iterations=200, min_count=1))
    router = LearnedRouter.from_document(
        {**weights_document(model), "calibration": {"quantiles": [0.0, 0.5, 1.0]}}
    )
    expected = model.probabilities(TEXTS)
    for text, row in zip(TEXTS, expected, strict=True):
        assert router.probabilities(text) == pytest.approx(list(row), abs=1e-3)
    scores = need_scores(expected)
    assert [router.score(t) for t in TEXTS[:3]] == pytest.approx(list(scores[:3]), abs=1e-3)


def test_the_sidecar_applies_the_trainers_temperature():
    model = fit(example_prompts(), TrainingSettings(iterations=200, min_count=1))
    model.temperature = 0.5
    router = LearnedRouter.from_document(
        {**weights_document(model), "calibration": {"quantiles": [0.0, 0.5, 1.0]}}
    )
    sharper = model.probabilities(TEXTS)
    for text, row in zip(TEXTS, sharper, strict=True):
        assert router.probabilities(text) == pytest.approx(list(row), abs=1e-3)
    model.temperature = 1.0
    assert sharper.max(axis=1).mean() > model.probabilities(TEXTS).max(axis=1).mean()


def test_the_temperature_is_the_one_with_the_least_held_out_log_loss():
    prompts = [Prompt("a", "writing", "mt-bench"), Prompt("b", "coding", "mt-bench")]
    right = np.zeros((2, len(CATEGORIES)))
    right[0, CATEGORIES.index("writing")] = right[1, CATEGORIES.index("coding")] = 1.0
    assert best_temperature(right, prompts) == min(TEMPERATURES)  # right: be sure
    wrong = right[::-1].copy()
    assert best_temperature(wrong, prompts) == max(TEMPERATURES)  # wrong: be unsure
    assert log_loss(right, prompts, 0.5) < log_loss(right, prompts, 1.0)


def test_fitting_is_deterministic():
    settings = TrainingSettings(iterations=50)
    first, second = fit(example_prompts(), settings), fit(example_prompts(), settings)
    assert first.vocabulary == second.vocabulary
    assert np.array_equal(first.weights, second.weights)


def test_the_fitted_model_learns_its_training_prompts():
    model = fit(example_prompts(), TrainingSettings(iterations=300))
    predicted = model.probabilities([p.text for p in example_prompts()]).argmax(axis=1)
    truth = [CATEGORIES.index(p.category) for p in example_prompts()]
    assert (predicted == truth).mean() > 0.9


def test_every_fold_holds_one_prompt_of_each_category_of_a_set():
    prompts = [Prompt(f"{c} {i}", c, "mt-bench") for c in CATEGORIES for i in range(FOLDS)]
    assigned = folds(prompts)
    for fold in range(FOLDS):
        held = [p.category for p, f in zip(prompts, assigned, strict=True) if f == fold]
        assert sorted(held) == sorted(CATEGORIES)


@pytest.mark.parametrize(
    ("scores", "positive", "expected"),
    [
        ([0.9, 0.8, 0.1, 0.2], [True, True, False, False], 1.0),
        ([0.1, 0.2, 0.9, 0.8], [True, True, False, False], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [True, False, True, False], 0.5),
    ],
)
def test_auc(scores, positive, expected):
    assert auc(np.array(scores), np.array(positive)) == expected
