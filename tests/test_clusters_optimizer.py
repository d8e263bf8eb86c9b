"""The cluster optimiser's rules, one test each (optimizers/clusters.py), and its place behind the shared
interface (optimizers/clusters_optimizer.py): ECS services and clusters, EMR clusters, custom clusters and
the bad inputs of issue 14."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pyarrow as pa
import pytest

from cloudopt_pipelines.catalog.clusters import is_valid_fargate_size
from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.base import OptimizerInputs, optimizer_named
from cloudopt_pipelines.optimizers.clusters_optimizer import ClustersOptimizer, ClustersSettings
from cloudopt_pipelines.optimizers.sizing import HOURS_PER_MONTH, Catalog
from cloudopt_pipelines.storage.schemas import RECOMMENDATIONS

ACCOUNT = "123456789012"
DAY = date(2026, 11, 16)
REGION = "us-east-1"
CLUSTER = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/shop"
EMR_ARN = f"arn:aws:elasticmapreduce:{REGION}:{ACCOUNT}:cluster/j-ETL"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(build_price_catalog())


def resource(kind: str, rid: str, attributes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "account_id": ACCOUNT,
        "date": DAY,
        "resource_id": rid,
        "resource_kind": kind,
        "deployment_type": extra.pop("deployment_type", {"emr_cluster": "emr"}.get(kind, "ecs")),
        "region": REGION,
        "zone": extra.pop("zone", None),
        "name": extra.pop("name", rid.rsplit("/", 1)[-1]),
        "state": extra.pop("state", "ACTIVE"),
        "tags": json.dumps(extra.pop("tags", {"env": "dev"})),
        "attributes": json.dumps(attributes),
        **extra,
    }


def service(name: str, cpu: int | None, memory: int | None, count: int = 4, launch: str = "FARGATE", **kw: Any) -> dict:
    attributes = {
        "desired_count": count,
        "launch_type": launch,
        "task_cpu": cpu,
        "task_memory": memory,
        "task_definition_revision": f"{name}:7",
        "capacity_provider_strategy": [],
        **kw.pop("attributes", {}),
    }
    return resource(
        "ecs_service", f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/shop/{name}", attributes, parent_id=CLUSTER, **kw
    )


def node(iid: str, itype: str, zone: str, parent: str, deployment: str = "ecs", **attributes: Any) -> dict:
    return {
        "account_id": ACCOUNT,
        "date": DAY,
        "resource_id": iid,
        "resource_kind": "ec2_instance",
        "deployment_type": deployment,
        "region": REGION,
        "zone": zone,
        "instance_type": itype,
        "lifecycle": "on-demand",
        "state": "running",
        "parent_id": parent,
        "tags": json.dumps({"env": "dev"}),
        "attributes": json.dumps({"image_id": "ami-1", **attributes}),
    }


def profile(rid: str, kind: str, days: int = 14, hours: range = range(168), **values: float | None) -> list[dict]:
    base = {
        "cpu_p95_pct": None,
        "mem_max_pct": None,
        "yarn_mem_used_p95_pct": None,
        "idle_share_pct": None,
        "cpu_reserved_mean_pct": None,
        "containers_pending_max": None,
    }
    base.update(values)
    return [{"resource_id": rid, "resource_kind": kind, "hour_of_week": h, "days_seen": days, **base} for h in hours]


def daily(cluster_id: str, days: int, cpu_p95: float, mem_max: float | None) -> list[dict]:
    return [
        {
            "cluster_id": cluster_id,
            "date": date(2026, 11, 1 + d),
            "node_samples": 288,
            "used_cpu_p95_pct": cpu_p95,
            "used_mem_max_pct": mem_max,
        }
        for d in range(days)
    ]


def recommend(
    catalog: Catalog,
    inventory: list[dict],
    prof: list[dict],
    days: list[dict] | None = None,
    runs: list[dict] | None = None,
    **settings: Any,
) -> list[dict]:
    optimizer = ClustersOptimizer()
    inputs = OptimizerInputs(
        account_id=ACCOUNT,
        day=DAY,
        inventory=_table(inventory),
        tables={
            "cluster_activity_profile": pa.Table.from_pylist(prof) if prof else pa.table({"resource_id": []}),
            "cluster_utilization_daily": pa.Table.from_pylist(days) if days else pa.table({"resource_id": []}),
            "emr_idle_runs": pa.Table.from_pylist(runs) if runs else pa.table({"resource_id": []}),
        },
        days_found={},
        catalog=catalog,
    )
    result = optimizer.recommend(inputs, ClustersSettings(**settings))
    assert result.table.schema == RECOMMENDATIONS
    return result.table.to_pylist()


def _table(rows: list[dict]) -> pa.Table:
    from cloudopt_pipelines.storage.schemas import RESOURCES

    full = [{f.name: r.get(f.name) for f in RESOURCES} for r in rows]
    return pa.Table.from_pylist(full, schema=RESOURCES)


def options(rows: list[dict], rid_end: str) -> dict[str, dict]:
    return {r["option_name"]: r for r in rows if r["resource_id"].endswith(rid_end)}


# ------------------------------------------------------------------------------------------ ECS services


def test_fargate_service_gets_a_valid_smaller_size_and_fewer_tasks(catalog: Catalog) -> None:
    svc = service("api", 1024, 2048, count=4)
    rows = recommend(catalog, [svc], profile(svc["resource_id"], "ecs_service", cpu_p95_pct=20.0, mem_max_pct=30.0))
    opts = options(rows, "/api")
    resize = opts["resize_tasks"]
    proposed = json.loads(resize["proposed_config"])
    assert is_valid_fargate_size(proposed["cpu"], proposed["memory"])
    assert (proposed["cpu"], proposed["memory"]) == (512, 1024)
    calls = proposed["api_calls"]
    assert [c["operation"] for c in calls] == ["RegisterTaskDefinition", "UpdateService"]
    assert calls[0]["parameters"] == {"cpu": "512", "memory": "1024"} and calls[0]["from_task_definition"] == "api:7"
    assert calls[1]["parameters"] == {"cluster": CLUSTER, "service": "api", "taskDefinition": "api", "desiredCount": 4}
    assert resize["monthly_savings_usd"] > 0
    scale = json.loads(opts["scale_in"]["proposed_config"])
    assert scale["desired_count"] == 2
    assert scale["api_calls"] == [
        {
            "service": "ecs",
            "operation": "UpdateService",
            "parameters": {"cluster": CLUSTER, "service": "api", "desiredCount": 2},
        }
    ]
    keep = opts["keep"]
    # 4 tasks of 1 vCPU / 2 GiB at the published us-east-1 Fargate rates.
    assert keep["monthly_cost_current_usd"] == pytest.approx(4 * (0.04048 + 2 * 0.004445) * 730, abs=0.01)
    assert sum(r["is_best"] for r in opts.values()) == 1


def test_production_service_keeps_two_tasks(catalog: Catalog) -> None:
    svc = service("api", 512, 1024, count=6, tags={"env": "prod"})
    rows = recommend(catalog, [svc], profile(svc["resource_id"], "ecs_service", cpu_p95_pct=2.0, mem_max_pct=5.0))
    assert json.loads(options(rows, "/api")["scale_in"]["proposed_config"])["desired_count"] == 2


def test_no_cut_before_the_minimum_days(catalog: Catalog) -> None:
    svc = service("api", 1024, 2048)
    rows = recommend(catalog, [svc], profile(svc["resource_id"], "ecs_service", days=6, cpu_p95_pct=5.0))
    assert [r["option_name"] for r in rows] == ["keep"]
    assert "fewer than the 7 required" in rows[0]["rationale"]
    rows = recommend(
        catalog, [svc], profile(svc["resource_id"], "ecs_service", days=6, cpu_p95_pct=5.0), min_days_before_cut=5
    )
    assert "resize_tasks" in {r["option_name"] for r in rows}


def test_confidence_follows_coverage(catalog: Catalog) -> None:
    svc = service("api", 1024, 2048)
    full = recommend(catalog, [svc], profile(svc["resource_id"], "ecs_service", cpu_p95_pct=20.0))
    half = recommend(
        catalog, [svc], profile(svc["resource_id"], "ecs_service", days=7, hours=range(84), cpu_p95_pct=20.0)
    )
    assert full[0]["confidence"] == 1.0
    assert half[0]["confidence"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("svc", "with_metrics", "reason"),
    [
        (service("nometrics", 1024, 2048), False, "no CloudWatch data"),
        (service("bad", 256, 4096), True, "not a valid Fargate pair"),
        (
            service("unread", None, None, attributes={"task_definition_error": "AccessDeniedException"}),
            True,
            "unreadable",
        ),
    ],
)
def test_bad_service_inputs_get_a_reason_and_no_cut(
    catalog: Catalog, svc: dict, with_metrics: bool, reason: str
) -> None:
    prof = profile(svc["resource_id"], "ecs_service", cpu_p95_pct=10.0) if with_metrics else []
    rows = recommend(catalog, [svc], prof)
    assert [r["option_name"] for r in rows] == ["keep"]
    assert reason in rows[0]["rationale"]


def test_unreadable_fargate_task_definition_is_left_out_of_the_plan_with_its_reason(catalog: Catalog) -> None:
    svc = service("unread", None, None, attributes={"task_definition_error": "ecs:DescribeTaskDefinition x failed"})
    ok = service("api", 1024, 2048)
    rows = recommend(catalog, [svc, ok], profile(ok["resource_id"], "ecs_service", cpu_p95_pct=20.0))
    optimizer = optimizer_named("clusters")
    table = pa.Table.from_pylist(rows, schema=RECOMMENDATIONS)
    unpriced = optimizer.unpriced(table)
    assert [u.resource_id for u in unpriced] == [svc["resource_id"]]
    assert "DescribeTaskDefinition" in unpriced[0].reason
    assert [c.resource_id for c in optimizer.candidates(table)] == [ok["resource_id"]]


def test_fargate_spot_only_for_spot_ready_services(catalog: Catalog) -> None:
    ready = service("worker", 1024, 2048, count=4, tags={"env": "dev", "workload": "stateless"})
    plain = service("api", 1024, 2048, count=4)
    prof = profile(ready["resource_id"], "ecs_service", cpu_p95_pct=60.0, mem_max_pct=70.0)
    prof += profile(plain["resource_id"], "ecs_service", cpu_p95_pct=60.0, mem_max_pct=70.0)
    rows = recommend(catalog, [ready, plain], prof)
    spot = options(rows, "/worker")["fargate_spot"]
    proposed = json.loads(spot["proposed_config"])
    assert proposed["capacity_provider_strategy"] == [
        {"capacityProvider": "FARGATE", "base": 1, "weight": 1},
        {"capacityProvider": "FARGATE_SPOT", "weight": 3},
    ]
    assert proposed["api_calls"][0]["parameters"]["forceNewDeployment"] is True
    assert spot["market"] == "spot" and spot["monthly_savings_usd"] > 0
    assert "fargate_spot" not in options(rows, "/api")
    assert json.loads(options(rows, "/api")["keep"]["details"])["spot_ready"]["ready"] is False


# ------------------------------------------------------------------------------------------ ECS on EC2


def test_ecs_on_ec2_saving_is_counted_once_on_the_nodes(catalog: Catalog) -> None:
    nodes = [
        node(f"i-{k}", "m5.xlarge", f"{REGION}{'ab'[k % 2]}", CLUSTER, ecs_container_instance_arn=f"ci-{k}")
        for k in range(4)
    ]
    cluster = resource("ecs_cluster", CLUSTER, {"tasks": []}, name="shop")
    svc = service("api", 1024, 2048, count=4, launch="EC2")
    prof = profile(svc["resource_id"], "ecs_service", cpu_p95_pct=15.0, mem_max_pct=20.0)
    prof += profile(CLUSTER, "ecs_cluster", cpu_p95_pct=15.0, mem_max_pct=20.0)
    rows = recommend(catalog, [cluster, svc, *nodes], prof)
    svc_rows = options(rows, "/api")
    assert all(r["monthly_cost_current_usd"] == 0 and r["monthly_savings_usd"] == 0 for r in svc_rows.values())
    assert svc_rows["resize_tasks"]["is_best"]
    cluster_rows = options(rows, ":cluster/shop")
    best = next(r for r in cluster_rows.values() if r["is_best"])
    assert best["action"] == "resize_cluster"
    proposed = json.loads(best["proposed_config"])
    # Four 256-unit tasks fit one node; two zones keep two nodes (availability first).
    assert proposed["count"] == 2 and sorted(proposed["zones"].values()) == [1, 1]
    assert proposed["requires"][0]["option"] == "resize_tasks"
    saving = sum(r["monthly_savings_usd"] for r in rows if r["is_best"])
    assert saving == pytest.approx(best["monthly_savings_usd"])
    calls = json.loads(cluster_rows["resize_cluster_same_type"]["proposed_config"])["api_calls"]
    assert [c["operation"] for c in calls] == ["UpdateContainerInstancesState", "TerminateInstances"]
    # One node leaves each zone: the spread stays even.
    assert calls[0]["parameters"] == {"cluster": CLUSTER, "containerInstances": ["ci-2", "ci-3"], "status": "DRAINING"}
    assert calls[1]["parameters"] == {"InstanceIds": ["i-2", "i-3"]}
    if best["option_name"] == "resize_cluster":
        new_type = json.loads(best["proposed_config"])["api_calls"]
        assert [c["operation"] for c in new_type[:2]] == ["RunInstances", "RunInstances"]
        assert new_type[-1] == {
            "service": "ec2",
            "operation": "TerminateInstances",
            "parameters": {"InstanceIds": ["i-0", "i-1", "i-2", "i-3"]},
        }


def test_ecs_capacity_comes_from_the_catalogue_not_from_ecs(catalog: Catalog) -> None:
    # moto registers every container instance as 4096 CPU / 7482 MiB; the catalogue says m5.4xlarge is 16 vCPU.
    nodes = [node("i-1", "m5.4xlarge", f"{REGION}a", CLUSTER, ecs_registered_resources={"CPU": 4096, "MEMORY": 7482})]
    cluster = resource("ecs_cluster", CLUSTER, {"tasks": []})
    rows = recommend(catalog, [cluster, *nodes], profile(CLUSTER, "ecs_cluster", cpu_p95_pct=10.0))
    keep = options(rows, ":cluster/shop")["keep"]
    assert keep["vcpu"] == 16.0 and keep["memory_gib"] == 64.0


def test_cluster_with_an_unpriced_type_is_named(catalog: Catalog) -> None:
    cluster = resource("ecs_cluster", CLUSTER, {"tasks": []})
    rows = recommend(catalog, [cluster, node("i-1", "m9.huge", f"{REGION}a", CLUSTER)], [])
    assert [r["option_name"] for r in rows] == ["keep"]
    assert "m9.huge" in rows[0]["rationale"] and rows[0]["monthly_cost_proposed_usd"] is None


# ------------------------------------------------------------------------------------------------- EMR


def emr(groups: list[tuple[str, str, int, str]], fleets: bool = False, **kw: Any) -> dict:
    attributes = {
        "cluster_id": "j-ETL",
        "instance_collection_type": "INSTANCE_FLEET" if fleets else "INSTANCE_GROUP",
        "instance_groups": []
        if fleets
        else [
            {"id": f"ig-{role}", "role": role, "instance_type": t, "market": m, "requested": n, "running": n}
            for role, t, n, m in groups
        ],
        "instance_fleets": [
            {
                "id": f"if-{role}",
                "type": role,
                "target_on_demand": n if m == "ON_DEMAND" else 0,
                "target_spot": n if m == "SPOT" else 0,
                "provisioned_on_demand": n if m == "ON_DEMAND" else 0,
                "provisioned_spot": n if m == "SPOT" else 0,
                "instance_types": [{"instance_type": t, "weight": 1}],
            }
            for role, t, n, m in groups
        ]
        if fleets
        else [],
        "auto_termination_idle_timeout": None,
        **kw.pop("attributes", {}),
    }
    return resource("emr_cluster", EMR_ARN, attributes, state=kw.pop("state", "WAITING"), **kw)


GROUPS = [
    ("MASTER", "m5.xlarge", 1, "ON_DEMAND"),
    ("CORE", "r5.xlarge", 2, "ON_DEMAND"),
    ("TASK", "r5.xlarge", 4, "ON_DEMAND"),
]


def emr_profile(busy_hours: set[int], yarn: float, pending: float = 0.0) -> list[dict]:
    rows = []
    for h in range(168):
        busy = h % 24 in busy_hours
        rows.extend(
            profile(
                EMR_ARN,
                "emr_cluster",
                hours=range(h, h + 1),
                idle_share_pct=0.0 if busy else 100.0,
                yarn_mem_used_p95_pct=yarn if busy else 0.0,
                containers_pending_max=pending,
            )
        )
    return rows


def test_emr_idle_hours_give_auto_termination_with_the_api_call(catalog: Catalog) -> None:
    rows = recommend(catalog, [emr(GROUPS)], emr_profile(set(range(18, 24)), yarn=60.0))
    opts = options(rows, "j-ETL")
    auto = opts["auto_terminate"]
    proposed = json.loads(auto["proposed_config"])
    assert proposed["idle_timeout_seconds"] == 3600
    assert proposed["api_calls"] == [
        {
            "service": "emr",
            "operation": "PutAutoTerminationPolicy",
            "parameters": {"ClusterId": "j-ETL", "AutoTerminationPolicy": {"IdleTimeout": 3600}},
        }
    ]
    # Idle 18 h a day in one stretch: 17 of them saved, every day.
    hourly = auto["monthly_cost_current_usd"] / 730
    assert auto["monthly_savings_usd"] == pytest.approx(hourly * 17 * 730 / 24, rel=0.01)
    assert "18:00-24:00 UTC every day" in auto["rationale"]


def test_emr_resize_cuts_task_nodes_first_and_keeps_core(catalog: Catalog) -> None:
    rows = recommend(catalog, [emr(GROUPS)], emr_profile(set(range(24)), yarn=30.0))
    resize = json.loads(options(rows, "j-ETL")["resize"]["proposed_config"])
    counts = {g["role"]: g["count"] for g in resize["instance_groups"]}
    # 6 workers at 30 % YARN memory: 3 keep it under 80 %; core stays at 2.
    assert counts == {"MASTER": 1, "CORE": 2, "TASK": 1}
    # YARN memory taken as 75 % of the 6 workers' 32 GiB, the primary excluded.
    assert json.loads(options(rows, "j-ETL")["resize"]["details"])["yarn_memory_gib"] == pytest.approx(0.75 * 6 * 32)
    ops = {c["parameters"]["InstanceGroups"][0]["InstanceGroupId"]: c for c in resize["api_calls"]}
    assert ops["ig-TASK"]["parameters"]["InstanceGroups"][0]["InstanceCount"] == 1


def test_emr_pending_containers_block_the_cut(catalog: Catalog) -> None:
    rows = recommend(catalog, [emr(GROUPS)], emr_profile(set(range(24)), yarn=30.0, pending=12.0))
    assert "resize" not in options(rows, "j-ETL") and "managed_scaling" not in options(rows, "j-ETL")


def test_emr_managed_scaling_bounds(catalog: Catalog) -> None:
    rows = recommend(catalog, [emr(GROUPS)], emr_profile(set(range(8, 20)), yarn=90.0))
    scaling = json.loads(options(rows, "j-ETL")["managed_scaling"]["proposed_config"])
    assert (scaling["min_units"], scaling["max_units"], scaling["max_core_units"]) == (2, 6, 2)
    limits = scaling["api_calls"][0]["parameters"]["ManagedScalingPolicy"]["ComputeLimits"]
    assert limits == {
        "UnitType": "Instances",
        "MinimumCapacityUnits": 2,
        "MaximumCapacityUnits": 6,
        "MaximumCoreCapacityUnits": 2,
    }


def test_emr_task_nodes_on_diversified_spot_primary_and_core_never(catalog: Catalog) -> None:
    rows = recommend(catalog, [emr(GROUPS)], emr_profile(set(range(24)), yarn=70.0))
    spot = options(rows, "j-ETL")["task_nodes_spot"]
    proposed = json.loads(spot["proposed_config"])
    markets = {g["role"]: g["market"] for g in proposed["instance_groups"]}
    assert markets == {"MASTER": "ON_DEMAND", "CORE": "ON_DEMAND", "TASK": "SPOT"}
    assert len(proposed["spot_instance_types"]) == 3 and "r5.xlarge" in proposed["spot_instance_types"]
    added = proposed["api_calls"][0]["parameters"]["InstanceGroups"]
    assert sum(g["InstanceCount"] for g in added) == 4 and {g["Market"] for g in added} == {"SPOT"}
    assert {g["InstanceRole"] for g in added} == {"TASK"}
    # Without task nodes, core stays on-demand unless configured.
    no_task = [g for g in GROUPS if g[0] != "TASK"]
    assert "task_nodes_spot" not in options(
        recommend(catalog, [emr(no_task)], emr_profile(set(range(24)), 70.0)), "j-ETL"
    )
    core_ok = recommend(catalog, [emr(no_task)], emr_profile(set(range(24)), 70.0), emr_spot_core=True)
    core_spot = json.loads(options(core_ok, "j-ETL")["task_nodes_spot"]["proposed_config"])
    assert {g["role"]: g["market"] for g in core_spot["instance_groups"]}["MASTER"] == "ON_DEMAND"


def test_emr_fleets_and_terminated_clusters(catalog: Catalog) -> None:
    rows = recommend(catalog, [emr(GROUPS, fleets=True)], emr_profile(set(range(24)), yarn=30.0))
    groups = recommend(catalog, [emr(GROUPS)], emr_profile(set(range(24)), yarn=30.0))
    resize = options(rows, "j-ETL")["resize"]
    assert options(rows, "j-ETL")["keep"]["monthly_cost_current_usd"] > 0
    # The same cut as for groups, applied with ModifyInstanceFleet target capacities (on-demand units first).
    as_groups = json.loads(options(groups, "j-ETL")["resize"]["proposed_config"])["instance_groups"]
    proposed = json.loads(resize["proposed_config"])
    counts = {
        g["role"]: sum(x["count"] for x in proposed["instance_groups"] if x["role"] == g["role"]) for g in as_groups
    }
    assert counts == {g["role"]: g["count"] for g in as_groups}
    assert resize["monthly_savings_usd"] == pytest.approx(options(groups, "j-ETL")["resize"]["monthly_savings_usd"])
    calls = proposed["api_calls"]
    assert calls and {c["operation"] for c in calls} == {"ModifyInstanceFleet"}
    by_fleet = {c["parameters"]["InstanceFleet"]["InstanceFleetId"]: c["parameters"]["InstanceFleet"] for c in calls}
    assert "if-MASTER" not in by_fleet
    assert {fid: (f["TargetOnDemandCapacity"], f["TargetSpotCapacity"]) for fid, f in by_fleet.items()} == {
        f"if-{g['role']}": (g["count"], 0)
        for g in as_groups
        if g["role"] != "MASTER" and (g["role"], g["count"]) != ("CORE", 2)
    }
    scaling = json.loads(options(rows, "j-ETL")["managed_scaling"]["proposed_config"])
    assert scaling["unit_type"] == "InstanceFleetUnits"
    weighted = emr(GROUPS, fleets=True)
    attrs = json.loads(weighted["attributes"])
    attrs["instance_fleets"][1]["instance_types"][0]["weight"] = 4
    weighted["attributes"] = json.dumps(attrs)
    rows = recommend(catalog, [weighted], emr_profile(set(range(24)), yarn=30.0))
    assert "weighted capacities" in options(rows, "j-ETL")["keep"]["rationale"] and "resize" not in options(
        rows, "j-ETL"
    )
    idle = recommend(catalog, [emr(GROUPS, fleets=True)], emr_profile(set(range(20, 24)), yarn=30.0))
    assert "auto_terminate" in options(idle, "j-ETL")
    gone = recommend(catalog, [emr(GROUPS, state="TERMINATING")], emr_profile(set(), yarn=0.0))
    assert [r["option_name"] for r in gone] == ["keep"] and "TERMINATING" in gone[0]["rationale"]


def test_emr_idle_time_that_moves_between_weeks_comes_from_its_idle_runs(catalog: Catalog) -> None:
    # Idle all of one week, busy all of the next: every hour of the week is idle half the time, so the
    # hour-of-week profile finds no idle hour; the cluster's own idle runs do.
    half = [{**r, "idle_share_pct": 50.0, "days_seen": 14} for r in emr_profile(set(range(24)), yarn=30.0)]
    assert "auto_terminate" not in options(recommend(catalog, [emr(GROUPS)], half), "j-ETL")
    week = [{"resource_id": EMR_ARN, "idle_minutes": 7 * 24 * 60, "days_seen": 14}]
    rows = recommend(catalog, [emr(GROUPS)], half, runs=week)
    auto = options(rows, "j-ETL")["auto_terminate"]
    assert "1 idle run(s), the longest 168.0 h" in auto["rationale"]
    # 168 h idle over 14 days, 1 h of it before the timeout ends the cluster: 83.5 cluster-hours a week saved.
    hourly = auto["monthly_cost_current_usd"] / HOURS_PER_MONTH
    assert auto["monthly_savings_usd"] == pytest.approx(hourly * 83.5 / 7 * HOURS_PER_MONTH / 24, abs=0.02)
    # Many short runs (each shorter than the timeout) save nothing: no option.
    flicker = [{"resource_id": EMR_ARN, "idle_minutes": 30, "days_seen": 14} for _ in range(300)]
    assert "auto_terminate" not in options(recommend(catalog, [emr(GROUPS)], half, runs=flicker), "j-ETL")


def test_batch_emr_cluster_consolidated_onto_an_always_on_one_with_room_in_its_window(catalog: Catalog) -> None:
    host_arn = EMR_ARN.replace("j-ETL", "j-HOST")

    def host(yarn: float) -> tuple[dict, list[dict]]:
        cluster = emr(GROUPS, attributes={"cluster_id": "j-HOST", "applications": ["Spark", "Hive"]})
        cluster["resource_id"], cluster["name"] = host_arn, "warehouse"
        return cluster, profile(host_arn, "emr_cluster", idle_share_pct=0.0, yarn_mem_used_p95_pct=yarn)

    batch = emr(GROUPS, attributes={"applications": ["Spark"]})
    # The batch cluster is busy 20:00-24:00 UTC every day at 30 % of its YARN memory, idle otherwise.
    batch_profile = emr_profile(set(range(20, 24)), yarn=30.0)
    cluster, host_profile = host(yarn=20.0)
    rows = recommend(catalog, [batch, cluster], batch_profile + host_profile)
    moved = options(rows, "j-ETL")["consolidate_batch"]
    proposed = json.loads(moved["proposed_config"])
    assert moved["action"] == "schedule_batch" and proposed["advisory"] is True
    assert proposed["host_cluster_id"] == "j-HOST" and proposed["window"] == "20:00-24:00 UTC every day"
    # Same groups on both: 20 % + 30 % of the same YARN memory in the window.
    assert proposed["host_yarn_memory_peak_pct"] == pytest.approx(50.0)
    assert [c["operation"] for c in proposed["api_calls"]] == ["AddJobFlowSteps", "TerminateJobFlows"]
    # Priced as the host's extra workers in the window: 6 workers sized for 80 % hold 20 % of their YARN memory
    # on 2 of them, 20 % + 30 % on 4: 2 more nodes x 4 h x 7 days a week, at the host's mean node price.
    assert proposed["host_extra_node_hours_week"] == 2 * 4 * 7
    node_hour = moved["monthly_cost_current_usd"] / HOURS_PER_MONTH / 7
    assert moved["monthly_cost_proposed_usd"] == pytest.approx(56 * node_hour * HOURS_PER_MONTH / 168, abs=0.01)
    assert 0 < moved["monthly_savings_usd"] < moved["monthly_cost_current_usd"]
    assert "consolidate_batch" not in options(rows, "j-HOST")

    # A host without room in the window (60 % + 30 % over the 80 % target), or without the batch's
    # applications, takes nothing.
    full, full_profile = host(yarn=60.0)
    assert "consolidate_batch" not in options(recommend(catalog, [batch, full], batch_profile + full_profile), "j-ETL")
    other = emr(GROUPS, attributes={"applications": ["Presto"]})
    lacking = {**cluster, "attributes": json.dumps({**json.loads(cluster["attributes"]), "applications": ["Hive"]})}
    rows = recommend(catalog, [{**other, "resource_id": EMR_ARN}, lacking], batch_profile + host_profile)
    assert "consolidate_batch" not in options(rows, "j-ETL")


def test_protected_emr_cluster_keeps_as_best(catalog: Catalog) -> None:
    rows = recommend(catalog, [emr(GROUPS, tags={"cloudopt:protect": "true"})], emr_profile(set(range(2)), yarn=30.0))
    best = [r for r in rows if r["is_best"]]
    assert [r["option_name"] for r in best] == ["keep"] and all(r["protected"] for r in rows)


# ------------------------------------------------------------------------------------------- custom


def test_custom_cluster_is_sized_as_one_group(catalog: Catalog) -> None:
    members = [node(f"i-h{k}", "c5.2xlarge", f"{REGION}{'abc'[k % 3]}", "hpc", "custom_cluster") for k in range(6)]
    rows = recommend(catalog, members, [], daily("cloudopt:cluster=hpc", 10, cpu_p95=20.0, mem_max=30.0))
    assert {r["resource_id"] for r in rows} == {"cloudopt:cluster=hpc"}
    assert {r["deployment_type"] for r in rows} == {"custom_cluster"}
    best = next(r for r in rows if r["is_best"])
    proposed = json.loads(best["proposed_config"])
    assert best["action"] == "resize_cluster" and proposed["count"] >= 3
    assert sorted(proposed["zones"]) == [f"{REGION}a", f"{REGION}b", f"{REGION}c"]
    assert max(proposed["zones"].values()) - min(proposed["zones"].values()) <= 1
    assert best["monthly_savings_usd"] > 0


def test_custom_cluster_without_memory_data_never_loses_memory(catalog: Catalog) -> None:
    members = [node(f"i-h{k}", "r5.2xlarge", f"{REGION}a", "hpc", "custom_cluster") for k in range(4)]
    rows = recommend(catalog, members, [], daily("cloudopt:cluster=hpc", 10, cpu_p95=10.0, mem_max=None))
    for r in rows:
        assert r["memory_gib"] is None or r["memory_gib"] >= 4 * 64 - 0.01


def test_a_protected_ec2_service_is_packed_at_its_current_size(catalog: Catalog) -> None:
    nodes = [node(f"i-{k}", "m5.xlarge", f"{REGION}{'ab'[k % 2]}", CLUSTER) for k in range(4)]
    cluster = resource("ecs_cluster", CLUSTER, {"tasks": []}, name="shop")
    svc = service("api", 1024, 2048, count=4, launch="EC2", tags={"env": "dev", "cloudopt:protect": "true"})
    prof = profile(svc["resource_id"], "ecs_service", cpu_p95_pct=15.0, mem_max_pct=20.0)
    prof += profile(CLUSTER, "ecs_cluster", cpu_p95_pct=15.0, mem_max_pct=20.0)
    rows = recommend(catalog, [cluster, svc, *nodes], prof)
    assert [r["option_name"] for r in rows if r["is_best"] and r["resource_id"].endswith("/api")] == ["keep"]
    best = next(r for r in rows if r["is_best"] and r["resource_id"] == CLUSTER)
    packed = json.loads(best["details"])["packed"]["services"]
    assert packed == [
        {"service": svc["resource_id"], "option": "keep", "cpu": 1024, "memory": 2048, "desired_count": 4}
    ]


@pytest.mark.parametrize("ready", [True, False])
def test_ec2_spot_capacity_provider_only_when_every_service_is_spot_ready(catalog: Catalog, ready: bool) -> None:
    nodes = [
        node(f"i-{k}", "m5.xlarge", f"{REGION}{'ab'[k % 2]}", CLUSTER, subnet_id=f"subnet-{'ab'[k % 2]}")
        for k in range(4)
    ]
    cluster = resource("ecs_cluster", CLUSTER, {"tasks": []}, name="shop")
    tags = {"env": "dev", "workload": "stateless"} if ready else {"env": "dev"}
    svc = service("api", 1024, 2048, count=4, launch="EC2", tags=tags)
    prof = profile(svc["resource_id"], "ecs_service", cpu_p95_pct=50.0, mem_max_pct=60.0)
    prof += profile(CLUSTER, "ecs_cluster", cpu_p95_pct=50.0, mem_max_pct=60.0)
    rows = recommend(catalog, [cluster, svc, *nodes], prof)
    cluster_rows = options(rows, ":cluster/shop")
    if not ready:
        assert "resize_cluster_spot" not in cluster_rows
        assert "workload" in json.loads(cluster_rows["keep"]["details"])["spot_ready"]["why"]
        return
    spot = cluster_rows["resize_cluster_spot"]
    proposed = json.loads(spot["proposed_config"])
    assert spot["market"] == "spot" and spot["monthly_savings_usd"] > 0
    assert len(proposed["spot_instance_types"]) == 3
    ops = [c["operation"] for c in proposed["api_calls"]]
    assert ops == ["CreateAutoScalingGroup", "CreateCapacityProvider", "PutClusterCapacityProviders", "UpdateService"]
    group = proposed["api_calls"][0]["parameters"]
    assert group["VPCZoneIdentifier"] == "subnet-a,subnet-b" and group["DesiredCapacity"] == proposed["count"]
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    assert proposed["api_calls"][3]["parameters"]["capacityProviderStrategy"] == [
        {"capacityProvider": "shop-spot", "weight": 1}
    ]


def test_batch_tasks_move_to_fargate_spot_with_their_hours_from_the_reservation(catalog: Catalog) -> None:
    nodes = [node(f"i-{k}", "m5.xlarge", f"{REGION}{'ab'[k % 2]}", CLUSTER) for k in range(4)]
    batch = [
        {
            "task_definition": "report:2",
            "cpu": 4096,
            "memory": 8192,
            "launch_type": "EC2",
            "group": "family:report",
            "started_by": "events-rule/nightly-report",
        }
        for _ in range(2)
    ]
    cluster = resource(
        "ecs_cluster", CLUSTER, {"tasks": batch}, name="shop", tags={"env": "dev", "workload": "fault-tolerant"}
    )
    svc = service("api", 1024, 2048, count=2, launch="EC2")
    prof = profile(svc["resource_id"], "ecs_service", cpu_p95_pct=60.0, mem_max_pct=70.0)
    # 16 vCPU of nodes: the services reserve 2; the two 4-vCPU batch tasks run 02:00-04:00 every day.
    for h in range(168):
        running = h % 24 in (2, 3)
        prof += profile(
            CLUSTER,
            "ecs_cluster",
            hours=range(h, h + 1),
            cpu_p95_pct=30.0,
            cpu_reserved_mean_pct=100.0 * (2 + (8 if running else 0)) / 16,
        )
    rows = recommend(catalog, [cluster, svc, *nodes], prof)
    opts = options(rows, ":cluster/shop")
    moved = opts["batch_to_fargate_spot"]
    details = json.loads(moved["details"])["batch"]
    assert details["vcpu_hours_week"] == pytest.approx(8 * 2 * 7)
    proposed = json.loads(moved["proposed_config"])
    assert proposed["api_calls"][0]["operation"] == "PutTargets"
    assert proposed["api_calls"][0]["parameters"]["Rule"] == "nightly-report"
    # Without the batch the nodes pack two 1-vCPU tasks: fewer or smaller nodes than with it.
    with_batch = min(o["monthly_cost_proposed_usd"] for n, o in opts.items() if n.startswith("resize_cluster"))
    assert moved["monthly_cost_proposed_usd"] < with_batch
    assert moved["market"] == "spot" and moved["monthly_savings_usd"] > 0
    # Not spot-ready (no workload tag): the batch stays on the nodes.
    not_ready = {**cluster, "tags": json.dumps({"env": "dev"})}
    opts = options(recommend(catalog, [not_ready, svc, *nodes], prof), ":cluster/shop")
    assert "batch_to_fargate_spot" not in opts
    assert "workload" in json.loads(opts["keep"]["details"])["batch"]["spot_ready"]["why"]


def test_services_of_a_protected_ecs_cluster_are_protected(catalog: Catalog) -> None:
    cluster = resource("ecs_cluster", CLUSTER, {"tasks": []}, tags={"cloudopt:protect": "true"})
    svc = service("api", 1024, 2048, count=4)
    rows = recommend(catalog, [cluster, svc], profile(svc["resource_id"], "ecs_service", cpu_p95_pct=20.0))
    api = options(rows, "/api")
    assert all(r["protected"] for r in api.values()) and api["keep"]["is_best"] and len(api) > 1


def test_emr_policies_already_set_are_not_proposed_again(catalog: Catalog) -> None:
    prof = emr_profile(set(range(18, 24)), yarn=30.0)
    has = emr(
        GROUPS, attributes={"auto_termination_idle_timeout": 1800, "managed_scaling_policy": {"UnitType": "Instances"}}
    )
    opts = options(recommend(catalog, [has], prof), "j-ETL")
    assert not {"auto_terminate", "managed_scaling", "resize"} & set(opts)
    unknown = emr(GROUPS, attributes={"policy_errors": ["elasticmapreduce:GetAutoTerminationPolicy: HTTP 500"]})
    auto = options(recommend(catalog, [unknown], prof), "j-ETL")["auto_terminate"]
    assert "current policy unknown: elasticmapreduce:GetAutoTerminationPolicy: HTTP 500" in auto["rationale"]
