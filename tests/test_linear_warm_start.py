"""A warm start from yesterday's plan: the same guarantees as a cold solve (gap, independent check)."""

import numpy as np
import pytest

from cloudopt_pipelines.bench.lp import generate_constraints, generate_instances, perturbed
from cloudopt_pipelines.optimizers.linear import LinearOptimizer, check_plan

GAP = 1e-3


def _solve(instances, constraints, warm_start=None):
    return LinearOptimizer(
        instances, constraints, mip_gap=GAP, shadow_prices=False, explain=False, warm_start=warm_start
    ).solve()


@pytest.fixture(scope="module")
def fleet():
    instances = generate_instances(1500, 8, seed=3)
    return instances, generate_constraints(instances, seed=3)


def test_yesterdays_plan_on_an_unchanged_fleet_is_accepted_at_once(fleet):
    instances, constraints = fleet
    yesterday = _solve(instances, constraints)
    again = _solve(instances, constraints, warm_start=yesterday.choices)
    assert again.status == "optimal" and again.method == "warm_start"
    assert again.mip_gap <= GAP and not check_plan(instances, constraints, again.choices)
    assert again.total_monthly_cost_usd == pytest.approx(yesterday.total_monthly_cost_usd, rel=2 * GAP)


def test_a_changed_fleet_from_yesterdays_plan_meets_the_gap_and_the_check(fleet):
    instances, constraints = fleet
    yesterday = _solve(instances, constraints)
    today = perturbed(instances, np.random.default_rng(7))
    cold, warm = _solve(today, constraints), _solve(today, constraints, warm_start=yesterday.choices)
    for sol in (cold, warm):
        assert sol.status == "optimal" and sol.mip_gap <= GAP
        assert not check_plan(today, constraints, sol.choices)
    assert warm.total_monthly_cost_usd == pytest.approx(cold.total_monthly_cost_usd, rel=2 * GAP)


def test_a_start_naming_nothing_offered_is_a_cold_solve(fleet):
    instances, constraints = fleet
    stale = {"i-gone": "keep", instances[0]["id"]: "no-such-option"}
    sol = _solve(instances, constraints, warm_start=stale)
    assert sol.status == "optimal" and sol.method != "warm_start"
    assert not check_plan(instances, constraints, sol.choices)
