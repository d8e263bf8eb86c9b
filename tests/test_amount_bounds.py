"""Prices and costs are finite amounts within documented bounds; a bad one is named (defect 26)."""

from __future__ import annotations

import copy
import math
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.linear import LinearOptimizer
from cloudopt_pipelines.optimizers.sizing import Catalog, SizingError
from cloudopt_pipelines.plan_cli import EXIT_BAD_INPUT, plan_command
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import MAX_COST_USD, PRICE_CATALOG, RECOMMENDATIONS, AmountError, conform
from tests.test_portfolio import INSTANCES, WEB, Echo, rec_rows, write

DAY = date(2026, 11, 16)
HUGE = [1e308, math.inf, -math.inf, math.nan, -1.0, 2 * MAX_COST_USD]


@pytest.mark.parametrize("cost", [1e308, 2 * MAX_COST_USD])
def test_the_plan_command_refuses_a_huge_cost_naming_the_option(tmp_path: Path, cost: float) -> None:
    instances = copy.deepcopy(INSTANCES)
    instances[0]["options"][1]["monthly_cost_usd"] = cost
    echo = Echo()
    assert plan_command(write(tmp_path, "instances.json", instances), echo=echo) == EXIT_BAD_INPUT
    assert "resource 'i-0' option 'resize'" in echo.err[0] and "at most 1e+09" in echo.err[0]


def test_the_optimiser_refuses_an_upfront_of_1e308() -> None:
    instances = copy.deepcopy(INSTANCES)
    instances[1]["options"][0]["one_time_cost_usd"] = 1e308
    with pytest.raises(ValueError, match=r"resource 'i-1' option 'keep': 'one_time_cost_usd' must be a finite"):
        LinearOptimizer(instances, {}).solve()


@pytest.mark.parametrize("cost", HUGE)
def test_a_recommendations_row_with_a_cost_out_of_bounds_is_refused_by_row(tmp_path: Path, cost: float) -> None:
    rows = rec_rows("i-web", WEB)
    rows[2]["monthly_cost_proposed_usd"] = cost
    with pytest.raises(AmountError, match=r"resource_id=i-web, option_name=ri_3y_all_upfront:m7g\.large"):
        Lake(tmp_path).write("recommendations", pa.Table.from_pylist(rows, schema=RECOMMENDATIONS), "123456789012", DAY)


@pytest.mark.parametrize("price", HUGE[:5])
def test_a_price_out_of_bounds_is_refused_by_row(price: float) -> None:
    rows = build_price_catalog().slice(0, 3).to_pylist()
    rows[1]["ondemand_usd_per_hour"] = price
    table = pa.Table.from_pylist(rows, schema=PRICE_CATALOG)
    name = f"{rows[1]['region']} {rows[1]['instance_type']}"
    with pytest.raises(AmountError, match=f"instance_type={rows[1]['instance_type']}"):
        conform(table, PRICE_CATALOG, "price_catalog")
    with pytest.raises(SizingError, match=f"price catalogue row {name}: ondemand_usd_per_hour"):
        Catalog(table)


def test_the_documented_bounds_hold_for_the_embedded_prices() -> None:
    assert Catalog(build_price_catalog()).get("us-east-1", "m5.large").ondemand_usd_per_hour > 0
