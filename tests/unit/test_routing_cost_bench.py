"""The cost-against-quality benchmark's arithmetic, on a workload small enough to check by hand.

`bench/routing_cost.py` reports the numbers the docs quote; these tests pin what its curve,
baselines and goal checks compute, so that a wrong sum cannot pass for a saving.
"""

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(30)

SPEC = importlib.util.spec_from_file_location(
    "routing_cost", Path(__file__).resolve().parents[2] / "bench" / "routing_cost.py"
)
assert SPEC is not None
assert SPEC.loader is not None
routing_cost = importlib.util.module_from_spec(SPEC)
sys.modules["routing_cost"] = routing_cost  # its dataclasses look their module up
SPEC.loader.exec_module(routing_cost)


def workload() -> Any:
    """Four prompts: two where the strong model is far better (reasoning), two where it is not."""
    tokens = np.array([10.0, 10.0, 10.0, 10.0])
    return routing_cost.Workload(
        categories=["reasoning", "reasoning", "writing", "writing"],
        input_tokens=tokens,
        output_tokens=0.0,
        strong_cost=np.array([10.0, 10.0, 10.0, 10.0]),
        weak_cost=np.array([1.0, 1.0, 1.0, 1.0]),
        strong_quality=np.array([9.0, 9.0, 9.0, 9.0]),
        weak_quality=np.array([5.0, 5.0, 9.0, 9.0]),
    )


def test_always_strong_is_the_unit_and_always_weak_costs_its_price():
    work = workload()
    assert work.outcome(np.ones(4, dtype=bool)) == (1.0, 1.0)
    cost, quality = work.outcome(np.zeros(4, dtype=bool))
    assert cost == pytest.approx(0.1)
    assert quality == pytest.approx(28 / 36)


def test_the_curve_sends_the_top_scores_first_from_all_weak_to_all_strong():
    work = workload()
    points = routing_cost.curve(work, np.array([0.9, 0.8, 0.1, 0.2]))
    assert [share for share, _, _ in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert points[2][1:] == pytest.approx((0.55, 1.0))  # both reasoning prompts: all the quality
    assert points[-1][1:] == (1.0, 1.0)


def test_a_better_ranking_saves_more_at_the_goal_and_leads_the_worse_one():
    work = workload()
    right = routing_cost.curve(work, np.array([0.9, 0.8, 0.1, 0.2]))
    wrong = routing_cost.curve(work, np.array([0.1, 0.2, 0.9, 0.8]))
    assert routing_cost.best_saving(right)[1] == pytest.approx(0.55)
    assert routing_cost.best_saving(wrong)[1] == pytest.approx(1.0)
    assert routing_cost.lead_over(right, wrong).startswith("above at 3 of 3 cost levels")
    assert "not at" in routing_cost.lead_over(wrong, right)


def test_random_is_the_straight_line_from_always_weak_to_always_strong():
    work = workload()
    weak = work.outcome(np.zeros(4, dtype=bool))
    assert routing_cost.random_at(work, 0.0) == pytest.approx(weak)
    assert routing_cost.random_at(work, 1.0) == pytest.approx((1.0, 1.0))
    half = routing_cost.random_at(work, 0.5)
    assert half == pytest.approx(((weak[0] + 1) / 2, (weak[1] + 1) / 2))


def test_quality_at_a_cost_is_interpolated_between_points():
    points = [(0.0, 0.1, 0.8), (1.0, 1.0, 1.0)]
    assert routing_cost.quality_at_cost(points, 0.55) == pytest.approx(0.9)
