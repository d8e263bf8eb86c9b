"""Hysteresis through Dagster: ``recommendations/standalone_ec2`` reads its own partition of the day before
(a self-dependency, previous day of the same account) and keeps yesterday's best option within the margin,
on consecutive days of the demo fleet."""

import itertools
import json
import shutil
from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from cloudopt_pipelines.assets.recommendations import build_recommendation_asset, recommendation_key
from cloudopt_pipelines.backtest.features import MODELS, run_feature_models
from cloudopt_pipelines.catalog.prices import build_price_catalog, build_reserved_prices
from cloudopt_pipelines.optimizers.standalone import HYSTERESIS_RISK, HYSTERESIS_SAVINGS_PCT
from cloudopt_pipelines.optimizers.standalone_ec2 import StandaloneEc2Optimizer
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, account_day_key, demo_partitions, with_partitions
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake

ACCOUNT = "123456789012"
DAYS = 8  # the demo's first 8 days: a first day gathering data, then days of answers
TABLE = "recommendations_standalone_ec2"
OP = "recommendations__standalone_ec2"
WINDOW_MODELS = ("utilization_window", "activity_profile")
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
NO_HYSTERESIS = {"hysteresis_savings_pct": 0.0, "hysteresis_risk": 0.0}
WIDE = {"hysteresis_savings_pct": 30.0}


@pytest.fixture(scope="module")
def feature_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[date]]:
    """The demo's first days of one account through the feature models, with prices: what the asset reads."""
    root = tmp_path_factory.mktemp("stability") / "lake"
    lake, collector = Lake(root), DemoCollector()
    days = list(collector.days[:DAYS])
    lake.write("price_catalog", build_price_catalog())
    lake.write("reserved_prices", build_reserved_prices())
    for d in days:
        lake.write("resources", collector.collect_inventory(ACCOUNT, d).table, ACCOUNT, d)
        lake.write("utilization_5m", collector.collect_metrics(ACCOUNT, d).table, ACCOUNT, d)
    run_feature_models(lake, ACCOUNT, days, (*MODELS, "activity_profile"))
    for i in range(1, len(days)):  # the window models of every day, as the daily pipeline writes them
        run_feature_models(lake, ACCOUNT, days[:i], WINDOW_MODELS)
    return root, days


def run_days(feature_lake: tuple[Path, list[date]], target: Path, config: dict) -> tuple[Lake, list[dict]]:
    """Materialise the asset through Dagster for each day in order (its own lake copy); the runs' metadata."""
    source, days = feature_lake
    shutil.copytree(source, target)
    asset = with_partitions([build_recommendation_asset(StandaloneEc2Optimizer())], demo_partitions())[0]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME, [ACCOUNT])
    metadata = []
    for d in days:
        result = dg.materialize(
            [asset],
            instance=instance,
            partition_key=account_day_key(ACCOUNT, d),
            resources={"lake": LakeResource(root=str(target))},
            run_config={**QUIET, "ops": {OP: {"config": config}}},
        )
        assert result.success
        metadata.append(result.asset_materializations_for_node(OP)[0].metadata)
    return Lake(target), metadata


def best_by_day(lake: Lake, days: list[date]) -> list[dict[str, dict]]:
    out = []
    for d in days:
        table = lake.read(TABLE, ACCOUNT, d)
        best = table.filter(pc.equal(table["is_best"], True))
        out.append({r["resource_id"]: r for r in best.to_pylist() if r["resource_kind"] == "ec2_instance"})
    return out


def changes(days_best: list[dict[str, dict]]) -> list[tuple[int, str, str, str]]:
    """(day index, resource, yesterday's option, today's) for every change of a best option, not counting the
    first answer after a day of gathering data."""
    out = []
    for i, (yesterday, today) in enumerate(itertools.pairwise(days_best), start=1):
        for rid, row in today.items():
            prev = yesterday.get(rid)
            if prev and prev["finding"] != "gathering-data" and prev["option_name"] != row["option_name"]:
                out.append((i, rid, prev["option_name"], row["option_name"]))
    return out


@pytest.fixture(scope="module")
def series(feature_lake, tmp_path_factory):
    base = tmp_path_factory.mktemp("series")
    return {
        name: run_days(feature_lake, base / name, config)
        for name, config in (("default", {}), ("none", NO_HYSTERESIS), ("wide", WIDE))
    }


def test_the_asset_depends_on_its_own_previous_day_and_the_first_day_has_none(feature_lake, series) -> None:
    _, days = feature_lake
    asset = with_partitions([build_recommendation_asset(StandaloneEc2Optimizer())], demo_partitions())[0]
    graph = dg.Definitions(assets=[asset], resources={"lake": LakeResource(root="unused")}).resolve_asset_graph()
    key = recommendation_key(StandaloneEc2Optimizer())
    assert key in graph.get(key).parent_keys  # the self-dependency is declared, as the UI's lineage shows
    _, metadata = series["default"]
    assert [m["previous_day_found"].value for m in metadata] == [False] + [True] * (len(days) - 1)


def test_yesterdays_best_option_holds_within_the_margin_and_every_change_is_beyond_it(feature_lake, series) -> None:
    _, days = feature_lake
    lake, _ = series["default"]
    default = changes(best_by_day(lake, days))
    for i, rid, yesterday, today in default:
        rows = {r["option_name"]: r for r in lake.read(TABLE, ACCOUNT, days[i]).to_pylist() if r["resource_id"] == rid}
        prev, new = rows.get(yesterday), rows[today]
        if (
            prev is None
            or prev["performance_risk"] > 1.0
            or json.loads(prev["proposed_config"] or "{}").get("cross_architecture")
        ):
            continue  # yesterday's option no longer fits, or is no longer allowed: it must change
        moved = abs(prev["monthly_cost_proposed_usd"] - new["monthly_cost_proposed_usd"])
        moved_pct = moved / new["monthly_cost_current_usd"] * 100
        assert (
            moved_pct > HYSTERESIS_SAVINGS_PCT
            or abs(prev["performance_risk"] - new["performance_risk"]) >= HYSTERESIS_RISK
            or new["finding"] != prev["finding"]  # the up-size of an under-provisioned day is not a choice
        ), (rid, days[i], yesterday, today)
    none = changes(best_by_day(series["none"][0], days))
    assert len(default) <= len(none)
    assert none, "the demo days should show changes of the best option without the hysteresis"


def test_a_wider_margin_holds_more_and_says_so(feature_lake, series) -> None:
    _, days = feature_lake
    wide_lake, _ = series["wide"]
    wide = changes(best_by_day(wide_lake, days))
    none = changes(best_by_day(series["none"][0], days))
    assert len(wide) < len(none)
    kept = [
        r
        for d in days[1:]
        for r in wide_lake.read(TABLE, ACCOUNT, d).to_pylist()
        if r["is_best"] and "Kept yesterday's best option" in (r["rationale"] or "")
    ]
    assert kept and all(r["option_name"] in r["rationale"] for r in kept)


def test_a_day_still_gathering_data_holds_nothing(feature_lake, series) -> None:
    _, days = feature_lake
    first, second = best_by_day(series["wide"][0], days)[:2]
    assert {r["finding"] for r in first.values()} == {"gathering-data"}
    # Day 2 has the data the first lacked: its answers are its own, never the first day's "keep" held.
    assert not any("Kept yesterday" in (r["rationale"] or "") for r in second.values())
    assert any(r["option_name"] != "keep" for r in second.values())
