"""The demo's ECS and EMR clusters: CloudWatch series shaped by their nodes' real traces, task sizes and
EMR group types in the inventory, and cluster recommendations after a week of them (features run by the
real SQL runner on a real lake, the optimiser behind the shared interface)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from cloudopt_pipelines.assets.features import SOURCE_TABLES
from cloudopt_pipelines.assets.recommendations import read_inputs
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.base import OptimizerInputs, optimizer_named
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.project_files import sql_models_dir
from cloudopt_pipelines.sources.demo import DEMO_EMR_BUSY_CPU_PCT, DemoCollector
from cloudopt_pipelines.sqlmodels.runner import execute_model, load_models
from cloudopt_pipelines.sqlmodels.sources import source_schemas
from cloudopt_pipelines.storage.lake import Lake

ACCOUNT = "123456789012"
MODELS = {m.name: m for m in load_models(sql_models_dir(), set(SOURCE_TABLES))}
PARTITIONING = {k: v[0] for k, v in SOURCE_TABLES.items()} | {m.name: m.partitioned_by for m in MODELS.values()}


@pytest.fixture(scope="module")
def collector() -> DemoCollector:
    return DemoCollector()


def test_ecs_series_follow_the_container_instances_traces(collector: DemoCollector) -> None:
    day = collector.days[0]
    series = collector.collect_cluster_metrics(ACCOUNT, day).table.to_pylist()
    nodes = collector.collect_metrics(ACCOUNT, day).table.to_pylist()
    members = {"i-01000000000000011", "i-01000000000000012"}  # retail-prod-ecs, c5.xlarge x 2
    by_ts: dict = {}
    for r in nodes:
        if r["resource_id"] in members:
            by_ts.setdefault(r["ts"], []).append(r["cpu_pct"])
    cluster_cpu = {
        r["ts"]: r["value"] for r in series if r["resource_id"] == "retail-prod-ecs" and r["metric"] == "CPUUtilization"
    }
    assert len(cluster_cpu) == 288
    for ts, value in cluster_cpu.items():
        assert value == pytest.approx(sum(by_ts[ts]) / len(by_ts[ts]))
    # 4 tasks of 1 vCPU reserve half of 8 vCPUs: the service's use is twice the cluster's.
    service = {
        r["ts"]: r["value"]
        for r in series
        if r["resource_id"].endswith("/nightly-jobs") and r["metric"] == "CPUUtilization"
    }
    assert all(service[ts] == pytest.approx(2 * v) for ts, v in cluster_cpu.items())
    reservation = {
        r["value"] for r in series if r["resource_id"] == "retail-prod-ecs" and r["metric"] == "CPUReservation"
    }
    assert reservation == {50.0}


def test_emr_idle_follows_yarn_memory(collector: DemoCollector) -> None:
    idle_slots = 0
    for day in collector.days:
        series = collector.collect_cluster_metrics(ACCOUNT, day).table.to_pylist()
        emr = [r for r in series if r["namespace"] == "AWS/ElasticMapReduce"]
        yarn = {r["ts"]: r["value"] for r in emr if r["metric"] == "YARNMemoryAvailablePercentage"}
        idle = {r["ts"]: r["value"] for r in emr if r["metric"] == "IsIdle"}
        assert len(yarn) == len(idle) == 288
        assert all(idle[ts] == (1.0 if 100 - yarn[ts] < DEMO_EMR_BUSY_CPU_PCT else 0.0) for ts in yarn)
        idle_slots += int(sum(idle.values()))
    # The core nodes' traces leave it idle part of the week, busy the rest.
    assert 0 < idle_slots < 288 * len(collector.days)


def test_inventory_has_task_sizes_and_emr_group_types(collector: DemoCollector) -> None:
    rows = collector.collect_inventory(ACCOUNT, collector.days[0]).table.to_pylist()
    service = next(r for r in rows if r["resource_kind"] == "ecs_service")
    attributes = json.loads(service["attributes"])
    assert (attributes["task_cpu"], attributes["task_memory"]) == (1024, 2048)
    cluster = json.loads(next(r for r in rows if r["resource_kind"] == "ecs_cluster")["attributes"])
    assert len(cluster["tasks"]) == 4
    emr = json.loads(next(r for r in rows if r["resource_kind"] == "emr_cluster")["attributes"])
    assert {g["role"]: g["instance_type"] for g in emr["instance_groups"]} == {
        "MASTER": "m5.xlarge",
        "CORE": "r5.2xlarge",
    }


@pytest.fixture(scope="module")
def week_lake(collector: DemoCollector, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """A week of the demo account's raw tables and the cluster feature models, in a real lake."""
    lake = Lake(tmp_path_factory.mktemp("demo-clusters-lake"))
    lake.write("price_catalog", build_price_catalog())
    for day in collector.days:
        lake.write("resources", collector.collect_inventory(ACCOUNT, day).table, ACCOUNT, day)
        lake.write("utilization_5m", collector.collect_metrics(ACCOUNT, day).table, ACCOUNT, day)
        lake.write("cluster_metrics_5m", collector.collect_cluster_metrics(ACCOUNT, day).table, ACCOUNT, day)
        for name in ("stg_utilization_5m", "stg_cluster_metrics_5m", "cluster_utilization_daily"):
            execute_model(MODELS[name], lake, PARTITIONING, ACCOUNT, day, source_schemas=source_schemas())
    for name in ("cluster_activity_profile", "emr_idle_runs"):
        execute_model(MODELS[name], lake, PARTITIONING, ACCOUNT, collector.days[-1], source_schemas=source_schemas())
    return lake


def test_a_week_of_demo_data_gives_cluster_recommendations(collector: DemoCollector, week_lake: Lake) -> None:
    day = collector.days[-1]
    assert day - collector.days[0] >= timedelta(days=6)
    optimizer = optimizer_named("clusters")
    tables, days_found = read_inputs(week_lake, optimizer.inputs, ACCOUNT, day)
    inputs = OptimizerInputs(
        account_id=ACCOUNT,
        day=day,
        inventory=optimizer.select(week_lake.read("resources", ACCOUNT, day)),
        tables=tables,
        days_found=days_found,
        catalog=Catalog(week_lake.read("price_catalog")),
    )
    rows = optimizer.recommend(inputs, optimizer.default_settings()).table.to_pylist()
    best = {r["resource_id"]: r for r in rows if r["is_best"]}
    assert set(best) == {"retail-prod-ecs", "retail-prod-ecs/nightly-jobs", "j-1DEMO789012"}
    assert best["retail-prod-ecs/nightly-jobs"]["option_name"] == "resize_tasks"
    assert best["retail-prod-ecs"]["action"] == "resize_cluster" and best["retail-prod-ecs"]["monthly_savings_usd"] > 0
    # The EMR cluster idles most of one week and little of the next: no hour of the week is idle in both, but
    # its own idle runs (emr_idle_runs) are, and auto-termination saves the hours past the timeout.
    emr = best["j-1DEMO789012"]
    assert emr["confidence"] == 1.0
    assert emr["action"] == "emr_auto_termination" and emr["monthly_savings_usd"] > 0
    assert "idle run(s), the longest" in emr["rationale"]
    assert all(r["confidence"] > 0 for r in best.values())
    candidates = optimizer.candidates(optimizer.recommend(inputs, optimizer.default_settings()).table)
    assert {c.resource_id for c in candidates} == set(best)
