"""Cost-aware scheduling of ECS batch tasks and custom-cluster jobs (optimizers/cluster_schedules.py, issue 14):
the batch window told apart from the steady load, moved to the hours of headroom or onto another custom
cluster, priced as the nodes the peak no longer needs, advisory ``schedule_batch`` rows."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.base import OptimizerInputs
from cloudopt_pipelines.optimizers.cluster_schedules import best_shift, cron_for, shift_text, split_batch
from cloudopt_pipelines.optimizers.clusters_optimizer import ClustersOptimizer, ClustersSettings
from cloudopt_pipelines.optimizers.sizing import HOURS_PER_MONTH, Catalog
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS
from tests.test_clusters_optimizer import ACCOUNT, CLUSTER, DAY, REGION, _table, daily, node, profile, resource

DAYTIME = range(9, 17)  # 8 h: longer than a batch window, the services' working day


def day_load(night: float, day: float, bump: float, bump_hours: tuple[int, ...]) -> dict[int, float]:
    return {h: (day if h % 24 in DAYTIME else night) + (bump if h % 24 in bump_hours else 0.0) for h in range(168)}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def recommend(catalog: Catalog, inventory: list[dict], prof: list[dict], days=(), members=(), **settings: Any):
    inputs = OptimizerInputs(
        account_id=ACCOUNT,
        day=DAY,
        inventory=_table(inventory),
        tables={
            "cluster_activity_profile": pa.Table.from_pylist(prof) if prof else pa.table({"resource_id": []}),
            "cluster_utilization_daily": pa.Table.from_pylist(list(days)) if days else pa.table({"resource_id": []}),
            "emr_idle_runs": pa.table({"resource_id": []}),
            "activity_profile": pa.Table.from_pylist(list(members)) if members else pa.table({"resource_id": []}),
        },
        days_found={},
        catalog=catalog,
    )
    table = ClustersOptimizer().recommend(inputs, ClustersSettings(**settings)).table
    assert table.schema == RECOMMENDATIONS
    return table.to_pylist()


# ------------------------------------------------------------------------------------------- pure rules


def test_a_short_bump_is_batch_and_a_working_day_is_steady() -> None:
    steady, batch = split_batch(day_load(4.0, 10.0, 8.0, (10, 11)), floor=1.0)
    assert sorted(batch) == [h for d in range(7) for h in (24 * d + 10, 24 * d + 11)]
    assert set(batch.values()) == {8.0}
    assert steady[10] == 10.0 and steady[3] == 4.0
    assert split_batch(day_load(4.0, 10.0, 0.0, ()), floor=1.0)[1] == {}
    # a bump below the floor is noise
    assert split_batch(day_load(4.0, 10.0, 0.5, (10,)), floor=1.0)[1] == {}
    # a bump longer than the batch window is steady load too
    assert split_batch(day_load(4.0, 4.0, 8.0, tuple(range(1, 9))), floor=1.0)[1] == {}


def test_the_batch_moves_the_shortest_way_to_headroom() -> None:
    steady, batch = split_batch(day_load(4.0, 10.0, 8.0, (10, 11)), floor=1.0)
    shift, today, after = best_shift(steady, batch, 3.6, set(range(168)))
    assert (today, after) == (5, 4)  # 18 vCPU at the peak, then max(10, 4 + 8)
    assert shift_text(shift) == "3 h earlier"  # 07:00-09:00, before the working day
    # a batch already in the night's headroom does not move
    steady, batch = split_batch(day_load(4.0, 10.0, 4.0, (1, 2)), floor=1.0)
    assert best_shift(steady, batch, 3.6, set(range(168))) is None


def test_cron_of_the_moved_window() -> None:
    assert cron_for([24 * d + h for d in range(7) for h in (7, 8)]) == "cron(0 7 ? * * *)"
    assert cron_for([24 * d + 22 for d in range(5)]) == "cron(0 22 ? * MON,TUE,WED,THU,FRI *)"
    assert cron_for([3, 30]) is None


# ------------------------------------------------------------------------------------------------- ECS


def ecs_fleet(load: dict[int, float], days: int = 14, hours: range = range(168)) -> tuple[list[dict], list[dict]]:
    """6 x m5.xlarge (24 vCPU); the batch tasks were started by the EventBridge rule ``report``."""
    nodes = [node(f"i-{k}", "m5.xlarge", f"{REGION}{'ab'[k % 2]}", CLUSTER) for k in range(6)]
    tasks = [
        {
            "task_definition": "report:3",
            "cpu": 4096,
            "memory": 8192,
            "launch_type": "EC2",
            "group": "family:report",
            "started_by": "events-rule/report",
        }
        for _ in range(2)
    ]
    cluster = resource("ecs_cluster", CLUSTER, {"tasks": tasks}, name="shop")
    prof = []
    for h in hours:
        prof += profile(
            CLUSTER,
            "ecs_cluster",
            days=days,
            hours=range(h, h + 1),
            cpu_p95_pct=40.0,
            cpu_reserved_mean_pct=100.0 * load[h] / 24,
        )
    return [cluster, *nodes], prof


def test_ecs_batch_on_the_peak_moves_to_headroom_with_the_nodes_it_frees(catalog: Catalog) -> None:
    inventory, prof = ecs_fleet(day_load(4.0, 10.0, 8.0, (10, 11)))
    rows = recommend(catalog, inventory, prof)
    row = next(r for r in rows if r["option_name"] == "shift_batch_window")
    proposed = json.loads(row["proposed_config"])
    assert row["action"] == "schedule_batch" and row["resource_kind"] == "ecs_cluster" and proposed["advisory"]
    assert proposed["window"] == "10:00-12:00 UTC every day"
    assert proposed["proposed_window"] == "07:00-09:00 UTC every day"
    assert (proposed["peak_nodes_needed"], proposed["peak_nodes_needed_after"], proposed["count"]) == (5, 4, 5)
    node_month = catalog.get(REGION, "m5.xlarge").ondemand_usd_per_hour * HOURS_PER_MONTH
    assert row["monthly_savings_usd"] == pytest.approx(node_month, abs=0.02)
    assert proposed["api_calls"] == [
        {
            "service": "events",
            "operation": "PutRule",
            "parameters": {"Name": "report", "ScheduleExpression": "cron(0 7 ? * * *)"},
            "note": "the rule's schedule moved 3 h earlier (07:00-09:00 UTC every day)",
        }
    ]
    keep = next(r for r in rows if r["option_name"] == "keep" and r["resource_id"] == CLUSTER)
    assert row["confidence"] == keep["confidence"] == 1.0
    assert sum(r["is_best"] for r in rows if r["resource_id"] == CLUSTER) == 1


def test_ecs_batch_off_peak_or_a_plain_working_day_gets_no_move(catalog: Catalog) -> None:
    for load in (day_load(4.0, 10.0, 8.0, (1, 2)), day_load(4.0, 10.0, 0.0, ())):
        rows = recommend(catalog, *ecs_fleet(load))
        assert "schedule_batch" not in {r["action"] for r in rows}


def test_ecs_batch_move_needs_the_days_and_every_hour_of_the_week(catalog: Catalog) -> None:
    load = day_load(4.0, 10.0, 8.0, (10, 11))
    few_days = recommend(catalog, *ecs_fleet(load, days=5))
    part_week = recommend(catalog, *ecs_fleet(load, hours=range(150)))
    for rows in (few_days, part_week):
        assert "schedule_batch" not in {r["action"] for r in rows}


# ------------------------------------------------------------------------------------------ custom clusters


def group(name: str, n: int, load_pct: dict[int, float]) -> tuple[list[dict], list[dict], list[dict]]:
    """``n`` c5.2xlarge members of custom cluster ``name`` in one zone, each at ``load_pct`` CPU p95 by hour."""
    members = [node(f"i-{name}{k}", "c5.2xlarge", f"{REGION}a", name, "custom_cluster") for k in range(n)]
    hourly = [
        {"resource_id": m["resource_id"], "hour_of_week": h, "cpu_p95_pct": load_pct[h]}
        for m in members
        for h in range(168)
    ]
    return members, hourly, daily(f"cloudopt:cluster={name}", 10, cpu_p95=max(load_pct.values()), mem_max=None)


def test_custom_cluster_jobs_on_its_peak_start_in_its_headroom(catalog: Catalog) -> None:
    # 4 x 8 vCPU: 3.2 vCPU at night, 12.8 in the working day, jobs +11.2 at 10:00-12:00 (24 vCPU, 5 nodes at
    # 70 %, capped at the 4 it has); at 07:00 the peak is 14.4 vCPU: 3 nodes.
    members, hourly, days = group("hpc", 4, day_load(10.0, 40.0, 35.0, (10, 11)))
    rows = recommend(catalog, members, [], days=days, members=hourly)
    row = next(r for r in rows if r["option_name"] == "shift_batch_window")
    proposed = json.loads(row["proposed_config"])
    assert row["resource_id"] == "cloudopt:cluster=hpc" and row["action"] == "schedule_batch"
    assert proposed["proposed_window"] == "07:00-09:00 UTC every day" and proposed["count"] == 3
    node_month = catalog.get(REGION, "c5.2xlarge").ondemand_usd_per_hour * HOURS_PER_MONTH
    assert row["monthly_savings_usd"] == pytest.approx(node_month, abs=0.02)
    assert [c["operation"] for c in proposed["api_calls"]] == ["UpdateSchedule", "TerminateInstances"]
    assert len(proposed["api_calls"][1]["parameters"]["InstanceIds"]) == 1


def test_custom_cluster_jobs_consolidate_onto_a_group_with_headroom(catalog: Catalog) -> None:
    # etl: 2 nodes idle but for its jobs 10:00-12:00; hpc: 6 nodes at 25 % all week (12 vCPU: 3 nodes at 70 %),
    # with etl's jobs 21.3 vCPU: 4 nodes. etl ends (2 nodes), hpc needs 1 more: one node a month saved.
    etl = group("etl", 2, day_load(2.0, 2.0, 58.0, (10, 11)))
    hpc = group("hpc", 6, {h: 25.0 for h in range(168)})
    rows = recommend(catalog, etl[0] + hpc[0], [], days=etl[2] + hpc[2], members=etl[1] + hpc[1])
    row = next(r for r in rows if r["option_name"] == "consolidate_batch")
    proposed = json.loads(row["proposed_config"])
    assert row["resource_id"] == "cloudopt:cluster=etl" and proposed["host_cluster_id"] == "cloudopt:cluster=hpc"
    assert proposed["host_extra_nodes"] == 1 and proposed["count"] == 0
    node_month = catalog.get(REGION, "c5.2xlarge").ondemand_usd_per_hour * HOURS_PER_MONTH
    assert row["monthly_savings_usd"] == pytest.approx(node_month, abs=0.02)
    assert sorted(proposed["api_calls"][1]["parameters"]["InstanceIds"]) == ["i-etl0", "i-etl1"]
    assert not any(r["action"] == "schedule_batch" for r in rows if r["resource_id"].endswith("hpc"))


def test_no_consolidation_onto_a_protected_group(catalog: Catalog) -> None:
    etl = group("etl", 2, day_load(2.0, 2.0, 58.0, (10, 11)))
    hpc = group("hpc", 6, {h: 25.0 for h in range(168)})
    for m in hpc[0]:
        m["tags"] = json.dumps({"env": "dev", "cloudopt:protect": "true"})
    rows = recommend(catalog, etl[0] + hpc[0], [], days=etl[2] + hpc[2], members=etl[1] + hpc[1])
    assert "consolidate_batch" not in {r["option_name"] for r in rows}
