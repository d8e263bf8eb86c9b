"""The portfolio_plan asset on the demo: a real plan across 2 accounts through a real Dagster instance."""

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cloudopt_pipelines.assets.plan import PLAN_CHECK, build_portfolio_plan_asset, latest_plan_check, plan_problem
from cloudopt_pipelines.assets.recommendations import build_recommendation_assets
from cloudopt_pipelines.optimizers.base import all_optimizers
from cloudopt_pipelines.optimizers.portfolio import verify_plan
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.plan_cli import EXIT_OK, plan_command
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.digest import table_sha256
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS

# the last day: the first has under 30 hours of data, so only "gathering data" rows and no commitment
DAY = DEMO_DAYS[-1]
OPTIMIZERS = all_optimizers()
portfolio_plan = build_portfolio_plan_asset(OPTIMIZERS)
recommendation_assets = build_recommendation_assets(OPTIMIZERS)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture(scope="module")
def plan_home(demo_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private copy of the demo home (lake + Dagster instance), so the shared one stays read-only."""
    home = tmp_path_factory.mktemp("plan-home")
    shutil.copytree(demo_home.lake_dir, home / "lake")
    shutil.copytree(demo_home.dagster_home, home / "dagster")
    yield Settings(home=Path(home), env="demo")


def materialize(settings: Settings, day: date, config: dict | None = None) -> dg.ExecuteInProcessResult:
    run_config = dict(QUIET)
    if config:
        run_config["ops"] = {"plan__portfolio_plan": {"config": config}}
    return dg.materialize(
        [portfolio_plan, *recommendation_assets],
        selection=[portfolio_plan],
        partition_key=day.isoformat(),
        instance=ensure_instance(settings),
        resources={"lake": LakeResource(root=str(settings.lake_dir))},
        run_config=run_config,
        raise_on_error=False,
    )


def check_evaluation(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    evaluations = result.get_asset_check_evaluations()
    assert [e.check_name for e in evaluations] == [PLAN_CHECK]
    return evaluations[0]


def test_the_demo_plan_covers_every_resource_of_both_accounts(plan_home: Settings) -> None:
    register_accounts(ensure_instance(plan_home), ["999999999999"])  # registered, but no data that day
    result = materialize(plan_home, DAY)
    assert result.success
    evaluation = check_evaluation(result)
    assert evaluation.passed, evaluation.metadata
    meta = result.asset_materializations_for_node("plan__portfolio_plan")[0].metadata
    assert meta["accounts"].value == DEMO_ACCOUNTS
    assert meta["missing_accounts"].value == ["999999999999"]
    assert meta["solver_status"].value == "optimal"
    assert meta["total_monthly_savings_usd"].value > 0
    assert isinstance(meta["total_monthly_savings_usd"].value, float)
    assert "| account | resource |" in meta["top_changes"].value

    plan = Lake(plan_home.lake_dir).read("portfolio_plan", day=DAY)
    lake = Lake(plan_home.lake_dir)
    recs = pa.concat_tables(
        [
            lake.read(o.table_name, a, DAY)
            for o in OPTIMIZERS
            for a in DEMO_ACCOUNTS
            if lake.partition_file(o.table_name, a, DAY) is not None
        ]
    )
    assert "recommendations_clusters" in {o.table_name for o in OPTIMIZERS}
    resources = {(a, r) for a, r in zip(recs["account_id"].to_pylist(), recs["resource_id"].to_pylist(), strict=True)}
    resources -= {(u.account_id, u.resource_id) for o in OPTIMIZERS for u in o.unpriced(recs)}  # named, not planned
    keys = list(zip(plan["account_id"].to_pylist(), plan["resource_id"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) and set(keys) == resources  # one row per resource, keeps included
    assert meta["resources"].value == plan.num_rows and meta["changes"].value > 0
    assert len(set(plan["plan_id"].to_pylist())) == 1
    assert pc.sum(plan["monthly_savings_usd"]).as_py() == pytest.approx(meta["total_monthly_savings_usd"].value)
    rows = plan.to_pylist()
    assert all(r["option_name"] == "keep" for r in rows if r["protected"])
    assert all(r["performance_risk"] <= 1 for r in rows if r["env"] == "prod" and r["option_name"] != "keep")
    assert all(r["reason"] for r in rows)
    # same date, input and constraints: same plan id
    _, problem = plan_problem(Lake(plan_home.lake_dir), DAY, OPTIMIZERS)
    assert problem.plan_id == meta["plan_id"].value
    check = latest_plan_check(ensure_instance(plan_home), DAY)  # what the executor reads
    assert check is not None and (check.plan_id, check.passed, check.violation_count) == (
        meta["plan_id"].value,
        True,
        0,
    )
    assert check.plan_sha256 == table_sha256(plan)


def test_the_check_fails_on_a_tampered_plan(plan_home: Settings) -> None:
    lake = Lake(plan_home.lake_dir)
    if lake.partition_file("portfolio_plan", day=DAY) is None:
        assert materialize(plan_home, DAY).success
    _, problem = plan_problem(lake, DAY, OPTIMIZERS)
    plan = lake.read("portfolio_plan", day=DAY)
    assert verify_plan(plan, problem) == []
    rows = plan.to_pylist()

    # a consistent-looking row that moves one resource to a bigger upfront: the plan breaks the cash cap
    tampered = [dict(r) for r in rows]
    victim, option = next(
        (i, o)
        for i, r in enumerate(tampered)
        for o in problem.by_key[f"{r['account_id']}/{r['resource_id']}"].options
        if o.one_time_cost_usd > r["one_time_cost_usd"] + 1000
    )
    tampered[victim].update(
        option_name=option.name,
        action=option.action,
        market=option.market,
        monthly_cost_proposed_usd=option.monthly_cost_usd,
        monthly_savings_usd=tampered[victim]["monthly_cost_current_usd"] - option.monthly_cost_usd,
        one_time_cost_usd=option.one_time_cost_usd,
        performance_risk=option.performance_risk,
    )
    violations = verify_plan(pa.Table.from_pylist(tampered, schema=plan.schema), problem)
    assert any(v.startswith("max_one_time_cost_usd") for v in violations), violations

    # a protected resource changed, a row dropped, savings inflated
    tampered = [dict(r) for r in rows]
    protected = next(i for i, r in enumerate(tampered) if r["protected"])
    other = problem.by_key[f"{tampered[protected]['account_id']}/{tampered[protected]['resource_id']}"]
    resize = next(o for o in other.options if o.action == "resize")
    tampered[protected].update(
        option_name=resize.name, action="resize", monthly_cost_proposed_usd=resize.monthly_cost_usd
    )
    tampered[0]["monthly_savings_usd"] += 1000
    dropped = tampered.pop()
    text = "\n".join(verify_plan(pa.Table.from_pylist(tampered, schema=plan.schema), problem))
    assert "protected_ids" in text
    assert f"{dropped['account_id']}/{dropped['resource_id']}: no plan row" in text
    assert "monthly_savings_usd" in text


def test_infeasible_constraints_fail_the_blocking_check_with_the_explanation(
    plan_home: Settings, tmp_path: Path
) -> None:
    constraints = tmp_path / "tight.yaml"
    constraints.write_text("portfolio:\n  monthly_budget_usd: 100\n")
    result = materialize(plan_home, DEMO_DAYS[0], {"constraints_path": str(constraints)})
    assert not result.success  # a failed blocking check stops the run
    evaluation = check_evaluation(result)
    assert not evaluation.passed
    assert "monthly_budget_usd" in evaluation.metadata["explanation"].value
    plan = Lake(plan_home.lake_dir).read("portfolio_plan", day=DEMO_DAYS[0])
    assert set(plan["option_name"].to_pylist()) == {"keep"}
    assert set(plan["solver_status"].to_pylist()) == {"infeasible"}
    assert all("raise monthly_budget_usd" in r for r in plan["reason"].to_pylist())
    check = latest_plan_check(ensure_instance(plan_home), DEMO_DAYS[0])
    assert check is not None and check.passed is False and check.solver_status == "infeasible"
    assert latest_plan_check(ensure_instance(plan_home), DAY).passed  # another day's check is its own


def test_a_day_without_recommendations_is_a_clear_error(plan_home: Settings) -> None:
    result = materialize(plan_home, date(2026, 11, 20))
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no account has a recommendations partition for 2026-11-20" in failure.step_failure_data.error.message


def test_cli_what_if_on_the_lake(plan_home: Settings) -> None:
    out: list[str] = []
    code = plan_command(
        None, None, day=DAY.isoformat(), lake_dir=plan_home.lake_dir, echo=lambda t="", err=False: out.append(t)
    )
    assert code == EXIT_OK and "check: every constraint holds" in out[0]


def test_an_unpriceable_resource_is_left_out_and_the_day_still_plans(demo_home: Settings, tmp_path: Path) -> None:
    shutil.copytree(demo_home.lake_dir, tmp_path / "lake")
    shutil.copytree(demo_home.dagster_home, tmp_path / "dagster")
    home = Settings(home=tmp_path, env="demo")
    lake = Lake(home.lake_dir)
    recs = lake.read("recommendations_standalone_ec2", DEMO_ACCOUNTS[0], DAY)
    # The recommender's row for an instance type missing from the price catalogue: a keep without costs.
    mega = {**recs.to_pylist()[0], "resource_id": "i-zz9mega", "option_name": "keep", "action": "keep"}
    mega.update(
        monthly_cost_current_usd=None,
        monthly_cost_proposed_usd=None,
        is_best=True,
        rationale=("Not analysed: unknown instance type 'zz9.mega' in region 'us-east-1' (not in the price catalogue)"),
    )
    lake.write(
        "recommendations_standalone_ec2",
        pa.concat_tables([recs, pa.Table.from_pylist([mega], schema=recs.schema)]),
        DEMO_ACCOUNTS[0],
        DAY,
    )
    result = materialize(home, DAY)
    assert result.success and check_evaluation(result).passed
    meta = result.asset_materializations_for_node("plan__portfolio_plan")[0].metadata
    assert meta["accounts"].value == DEMO_ACCOUNTS and meta["changes"].value > 0
    unpriced = meta["unpriced_resources"].value
    assert (
        list(unpriced) == [f"{DEMO_ACCOUNTS[0]}/i-zz9mega"] and "zz9.mega" in unpriced[f"{DEMO_ACCOUNTS[0]}/i-zz9mega"]
    )
    plan = lake.read("portfolio_plan", day=DAY)
    assert "i-zz9mega" not in plan["resource_id"].to_pylist()
    assert set(plan["account_id"].to_pylist()) == set(DEMO_ACCOUNTS)
