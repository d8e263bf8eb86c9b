"""The shared vocabulary: production and protection as every stage reads them (defects 3 and 16)."""

from __future__ import annotations

import numpy as np
import pytest

from cloudopt_pipelines import vocabulary
from cloudopt_pipelines.executor.policy import ExecutorPolicy
from cloudopt_pipelines.optimizers.schedules import is_production as schedules_is_production
from cloudopt_pipelines.optimizers.schedules import recommend_schedule
from cloudopt_pipelines.sources.base import tag_columns
from tests.test_portfolio import WEB, plan_table, problem_for, rec_rows, solve_problem

CONFLICTING = [
    {"env": "dev", "Environment": "prod"},
    {"Environment": "prod", "env": "dev"},
    {"env": "dev", "ENVIRONMENT": "Production"},
    {"environment": "test", "Env": "LIVE"},
]
PRODUCTION = [
    {"env": "prod-eu"},
    {"env": "production"},
    {"env": "prd"},
    {"env": "live"},
    {"Environment": " PROD "},
    {"env": "prod_2"},
    {"env": "production-us-east-1"},
    {},
    {"env": ""},
]
NON_PRODUCTION = [{"env": "dev"}, {"env": "preprod"}, {"Environment": "staging"}, {"env": "products-test"}]


@pytest.mark.parametrize("tags", CONFLICTING + PRODUCTION)
def test_any_production_like_environment_tag_makes_it_production(tags: dict[str, str]) -> None:
    assert vocabulary.is_production(tags)
    assert schedules_is_production(tags)
    assert ExecutorPolicy().environment(tags)[1]


@pytest.mark.parametrize("tags", NON_PRODUCTION)
def test_non_production_values_stay_non_production(tags: dict[str, str]) -> None:
    assert not vocabulary.is_production(tags)
    assert not ExecutorPolicy().environment(tags)[1]


def test_the_deciding_environment_is_the_production_one_everywhere() -> None:
    tags = {"env": "dev", "Environment": "prod"}
    assert vocabulary.environment_of(tags) == ("Environment", "prod")
    assert tag_columns(tags)["env"] == "prod"
    assert ExecutorPolicy().environment(tags) == ("prod", True)
    assert ExecutorPolicy().production_check("resize", tags)[0] is False


def test_protection_ignores_case_and_blanks() -> None:
    assert vocabulary.is_protected({"cloudopt:protect": " TRUE "})
    assert vocabulary.is_protected({"cloudopt:protect": "Yes"})
    assert not vocabulary.is_protected({"cloudopt:protect": "false"})
    assert not vocabulary.is_protected({})


def test_conflicting_tags_get_no_schedule() -> None:
    monday = np.datetime64("2026-11-02T00:00:00")
    ts = monday + np.arange(288 * 14) * np.timedelta64(300, "s")
    hours = (np.arange(288 * 14) // 12) % 24
    weekday = (np.arange(288 * 14) // 288) % 7 < 5
    cpu = np.where(weekday & (hours >= 8) & (hours < 18), 60.0, 1.0)  # office hours only
    assert recommend_schedule(ts, cpu, {"env": "dev"}, 100.0) is not None
    assert recommend_schedule(ts, cpu, {"env": "dev", "Environment": "prod"}, 100.0) is None
    assert recommend_schedule(ts, cpu, {"env": "prod-eu"}, 100.0) is None


@pytest.mark.parametrize("tags", [{"env": "dev", "Environment": "prod"}, {"env": "prod-eu"}])
def test_the_plan_applies_production_rules_to_conflicting_and_prefixed_tags(tags: dict[str, str]) -> None:
    rows = rec_rows("i-web", WEB)
    config = {"environments": {"prod": {"max_performance_risk": 0}, "dev": {"max_performance_risk": 4}}}
    problem = problem_for(rows, {"i-web": {"team": "web", **tags}}, config)
    label = problem.labels["123456789012/i-web"]
    assert label.env == "prod"
    chosen = plan_table(problem, solve_problem(problem)).to_pylist()[0]
    assert chosen["option_name"] == "keep" and chosen["env"] == "prod"
