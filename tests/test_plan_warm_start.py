"""The portfolio plan of a day starts from the previous day's plan, through a real Dagster instance."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cloudopt_pipelines.assets.plan import PLAN_KEY, build_portfolio_plan_asset, plan_problem
from cloudopt_pipelines.assets.recommendations import build_recommendation_assets
from cloudopt_pipelines.optimizers.base import all_optimizers
from cloudopt_pipelines.optimizers.portfolio import solve_problem, verify_plan, warm_start_from_plan
from cloudopt_pipelines.orchestration import ensure_instance
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_DAYS

FIRST, SECOND = DEMO_DAYS
OPTIMIZERS = all_optimizers()
portfolio_plan = build_portfolio_plan_asset(OPTIMIZERS)
recommendation_assets = build_recommendation_assets(OPTIMIZERS)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
GAP = 1e-4  # the asset's default mip_gap


@pytest.fixture()
def home(demo_home: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A private copy of the demo home without any plan partition."""
    shutil.copytree(demo_home.lake_dir, tmp_path / "lake")
    shutil.copytree(demo_home.dagster_home, tmp_path / "dagster")
    shutil.rmtree(tmp_path / "lake" / "portfolio_plan", ignore_errors=True)
    yield Settings(home=tmp_path, env="demo")


def materialize(settings: Settings, day, **config) -> dict:
    run_config = dict(QUIET)
    if config:
        run_config["ops"] = {"plan__portfolio_plan": {"config": config}}
    result = dg.materialize(
        [portfolio_plan, *recommendation_assets],
        selection=[portfolio_plan],
        partition_key=day.isoformat(),
        instance=ensure_instance(settings),
        resources={"lake": LakeResource(root=str(settings.lake_dir))},
        run_config=run_config,
    )
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    return {k: v.value for k, v in result.asset_materializations_for_node("plan__portfolio_plan")[0].metadata.items()}


def total_cost(plan: pa.Table) -> float:
    return pc.sum(plan["monthly_cost_proposed_usd"]).as_py()


def test_the_plan_declares_the_previous_day_as_its_input() -> None:
    defs = dg.Definitions(
        assets=[portfolio_plan, *recommendation_assets], resources={"lake": LakeResource(root="unused")}
    )
    graph = defs.resolve_asset_graph()
    assert PLAN_KEY in graph.get(PLAN_KEY).parent_keys
    mapping = graph.get_partition_mapping(PLAN_KEY, PLAN_KEY)
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    assert (mapping.start_offset, mapping.end_offset) == (-1, -1)
    assert mapping.allow_nonexistent_upstream_partitions


def test_the_second_day_starts_from_the_first_days_plan_with_the_same_quality(home: Settings) -> None:
    lake = Lake(home.lake_dir)
    first = materialize(home, FIRST)
    assert first["warm_start"] == {"from": None, "offered": 0, "resources": 0}  # nothing planned the day before

    second = materialize(home, SECOND)
    yesterday = warm_start_from_plan(lake.read("portfolio_plan", day=FIRST))
    _, problem = plan_problem(lake, SECOND, OPTIMIZERS)
    offered = sum(1 for c in problem.candidates if c.option(yesterday.get(c.key, "")) is not None)
    assert offered > 0
    assert second["warm_start"]["from"] == FIRST.isoformat() and second["warm_start"]["offered"] == offered
    assert 0 < second["warm_start"]["resources"] <= offered  # what the solver started from
    warm_plan = lake.read("portfolio_plan", day=SECOND)
    assert verify_plan(warm_plan, problem) == []

    cold = solve_problem(problem, mip_gap=GAP)
    assert cold.status == "optimal" and second["solver_status"] == "optimal"
    assert total_cost(warm_plan) == pytest.approx(cold.total_monthly_cost_usd, rel=2 * GAP, abs=1e-6)


def test_a_start_from_todays_own_plan_returns_a_plan_as_good(home: Settings) -> None:
    """Yesterday chose what is still best today (the same costs): the solve starts from all of it."""
    lake = Lake(home.lake_dir)
    cold = materialize(home, SECOND, warm_start=False)
    assert cold["warm_start"] == {"from": None, "offered": 0, "resources": 0}
    today = lake.read("portfolio_plan", day=SECOND)
    dates = pa.array([FIRST] * today.num_rows, pa.date32())
    lake.write("portfolio_plan", today.set_column(today.schema.get_field_index("date"), "date", dates), day=FIRST)

    again = materialize(home, SECOND)
    assert again["warm_start"]["from"] == FIRST.isoformat()
    assert again["warm_start"]["offered"] == today.num_rows and again["warm_start"]["resources"] > 0
    replanned = lake.read("portfolio_plan", day=SECOND)
    _, problem = plan_problem(lake, SECOND, OPTIMIZERS)
    assert verify_plan(replanned, problem) == []
    assert total_cost(replanned) == pytest.approx(total_cost(today), rel=2 * GAP, abs=1e-6)
