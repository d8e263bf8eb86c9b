"""Unpriceable resources are left out of the plan with a reason; the rest plans (defects 6 and 26)."""

from __future__ import annotations

import json
import math
from datetime import date

import pyarrow as pa
import pytest

from cloudopt_pipelines.assets.plan import plan_problem, read_plan_inputs
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.portfolio import (
    candidates_from_recommendations,
    plan_summary,
    plan_table,
    problem_for_day,
    solve_problem,
    unpriceable_resources,
    verify_plan,
)
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import recommend_account
from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS, RESOURCES
from tests.test_portfolio import WEB, rec_rows

DAY = date(2026, 11, 16)
GOOD, BAD = "123456789012", "210987654321"
OPTIMIZER = StandaloneEc2Optimizer()
# No feature rows: neither instance has samples in the window (the unknown type is refused before them).
NO_FEATURES = {
    name: pa.table({"resource_id": pa.array([], pa.string())}) for name in ("utilization_window", "activity_profile")
}


def instance_row(account: str, resource_id: str, instance_type: str) -> dict:
    return {
        "account_id": account,
        "date": DAY,
        "resource_id": resource_id,
        "resource_kind": "ec2_instance",
        "deployment_type": "standalone",
        "region": "us-east-1",
        "zone": "us-east-1a",
        "instance_type": instance_type,
        "state": "running",
        "tags": json.dumps({"env": "dev", "team": "web"}),
        "attributes": "{}",
    }


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def test_an_unknown_instance_type_is_left_out_and_every_account_still_plans(tmp_path, catalog) -> None:
    lake = Lake(tmp_path)
    # One account with a zz9.mega next to a known type, as the recommender writes it: a keep row without costs.
    resources = pa.Table.from_pylist(
        [instance_row(BAD, "i-mega", "zz9.mega"), instance_row(BAD, "i-known", "m5.xlarge")], schema=RESOURCES
    )
    recs = recommend_account(BAD, DAY, resources, NO_FEATURES, catalog).table
    mega = [r for r in recs.to_pylist() if r["resource_id"] == "i-mega"]
    assert [r["monthly_cost_proposed_usd"] for r in mega] == [None]
    good = pa.Table.from_pylist(rec_rows("i-web", WEB, GOOD), schema=RECOMMENDATIONS)
    lake.write("resources", resources, BAD, DAY)
    lake.write(OPTIMIZER.table_name, recs, BAD, DAY, schema=RECOMMENDATIONS)
    lake.write(OPTIMIZER.table_name, good, GOOD, DAY, schema=RECOMMENDATIONS)

    accounts, candidate_sets, unpriced, _ = read_plan_inputs(lake, DAY, (OPTIMIZER,))
    assert accounts == [GOOD, BAD]
    assert [(u.account_id, u.resource_id) for u in unpriced] == [(BAD, "i-mega")]
    assert unpriced[0].reason.startswith(f"{OPTIMIZER.name}: ")  # the optimiser that wrote the row
    assert {c.resource_id for cs in candidate_sets for c in cs} == {"i-web", "i-known"}

    accounts, problem = plan_problem(lake, DAY, (OPTIMIZER,))
    assert set(problem.by_key) == {f"{GOOD}/i-web", f"{BAD}/i-known"}
    reason = problem.unpriced[f"{BAD}/i-mega"]
    assert "no monthly_cost_proposed_usd" in reason and "zz9.mega" in reason and "not planned" in reason
    assert any(n.startswith(f"{BAD}/i-mega excluded from the plan") for n in problem.notes)

    solution = solve_problem(problem)
    table = plan_table(problem, solution)
    assert solution.status == "optimal"
    assert {r["resource_id"] for r in table.to_pylist()} == {"i-web", "i-known"}
    assert verify_plan(table, problem) == []
    assert plan_summary(problem, solution, table)["unpriced_resources"] == 1


def test_the_pure_problem_takes_the_unpriced_resources_it_is_given(catalog) -> None:
    resources = pa.Table.from_pylist([instance_row(BAD, "i-mega", "zz9.mega")], schema=RESOURCES)
    recs = recommend_account(BAD, DAY, resources, NO_FEATURES, catalog).table
    good = pa.Table.from_pylist(rec_rows("i-web", WEB, GOOD), schema=RECOMMENDATIONS)
    candidates = [OPTIMIZER.candidates(good), OPTIMIZER.candidates(recs)]
    assert candidates[1] == []
    problem = problem_for_day(DAY, candidates, resources, unpriced=OPTIMIZER.unpriced(recs))
    assert list(problem.unpriced) == [f"{BAD}/i-mega"] and set(problem.by_key) == {f"{GOOD}/i-web"}
    assert problem_for_day(DAY, candidates, resources).unpriced == {}  # nothing given, nothing named


@pytest.mark.parametrize("cost", [math.inf, 1e308, -1.0, math.nan])
def test_costs_that_are_not_finite_amounts_within_bounds_are_named(cost: float) -> None:
    rows = rec_rows("i-web", WEB) + rec_rows("i-odd", WEB)
    for r in rows:
        if r["resource_id"] == "i-odd" and r["option_name"] == "spot:m7g.large":
            r["monthly_cost_proposed_usd"] = cost
    table = pa.Table.from_pylist(rows, schema=RECOMMENDATIONS)
    [unpriced] = unpriceable_resources(table)
    assert unpriced.resource_id == "i-odd" and "option 'spot:m7g.large'" in unpriced.reason
    assert [c.resource_id for c in candidates_from_recommendations(table)] == ["i-web"]
