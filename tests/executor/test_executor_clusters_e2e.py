"""The cluster optimiser's own rows, applied: resources seeded on moto, described in the inventory with their
live ids, sized by ``ClustersOptimizer``, written to the plan as it wrote them, approved and executed. The
plug-ins must understand the rows exactly as optimizers/clusters.py writes them (actions, proposed_config
keys, api_calls). EMR's policy calls and ECS deployments go through ``AwsApi`` (cloudopt_pipelines/testing/aws_api.py:
moto answers HTTP 500 to the first and never settles the second)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from cloudopt_pipelines.catalog.prices import build_price_catalog
from cloudopt_pipelines.optimizers.base import OptimizerInputs
from cloudopt_pipelines.optimizers.clusters_optimizer import ClustersOptimizer, ClustersSettings
from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.storage.schemas import RESOURCES
from cloudopt_pipelines.testing.aws_api import AwsApi
from tests.executor.conftest import DAY, MANAGEMENT_ACCOUNT, client, executor_aws, plan_row

REGION = "us-east-1"


def resource(kind: str, rid: str, attributes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    row = {
        "account_id": MANAGEMENT_ACCOUNT,
        "date": DAY,
        "resource_id": rid,
        "resource_kind": kind,
        "deployment_type": "emr" if kind == "emr_cluster" else "ecs",
        "region": REGION,
        "name": rid.rsplit("/", 1)[-1],
        "state": "ACTIVE",
        "tags": json.dumps({"env": "dev"}),
        "attributes": json.dumps(attributes),
        **extra,
    }
    return {f.name: row.get(f.name) for f in RESOURCES}


def profile(rid: str, kind: str, hours: range = range(168), **values: float) -> list[dict[str, Any]]:
    base = {
        "cpu_p95_pct": None,
        "mem_max_pct": None,
        "yarn_mem_used_p95_pct": None,
        "idle_share_pct": None,
        "cpu_reserved_mean_pct": None,
        "containers_pending_max": None,
        **values,
    }
    return [{"resource_id": rid, "resource_kind": kind, "hour_of_week": h, "days_seen": 14, **base} for h in hours]


def emr_profile(rid: str, busy: set[int], yarn: float) -> list[dict[str, Any]]:
    rows = []
    for h in range(168):
        on = h % 24 in busy
        rows += profile(
            rid,
            "emr_cluster",
            range(h, h + 1),
            idle_share_pct=0.0 if on else 100.0,
            yarn_mem_used_p95_pct=yarn if on else 0.0,
            containers_pending_max=0.0,
        )
    return rows


def seed_emr(emr: Any, name: str) -> tuple[str, str, list[dict[str, Any]]]:
    cid = emr.run_job_flow(
        Name=name,
        ReleaseLabel="emr-6.10.0",
        Instances={
            "InstanceGroups": [
                {"Name": "p", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                {"Name": "c", "InstanceRole": "CORE", "InstanceType": "r5.xlarge", "InstanceCount": 2},
                {"Name": "t", "InstanceRole": "TASK", "InstanceType": "r5.xlarge", "InstanceCount": 4},
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        Tags=[{"Key": "env", "Value": "dev"}],
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    arn = emr.describe_cluster(ClusterId=cid)["Cluster"]["ClusterArn"]
    groups = [
        {
            "id": g["Id"],
            "role": g["InstanceGroupType"],
            "instance_type": g["InstanceType"],
            "market": g["Market"],
            "requested": g["RequestedInstanceCount"],
            "running": g["RunningInstanceCount"],
        }
        for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]
    ]
    return cid, arn, groups


def recommend(inventory: list[dict[str, Any]], prof: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inputs = OptimizerInputs(
        account_id=MANAGEMENT_ACCOUNT,
        day=DAY,
        inventory=pa.Table.from_pylist(inventory, schema=RESOURCES),
        tables={
            "cluster_activity_profile": pa.Table.from_pylist(prof),
            "cluster_utilization_daily": pa.table({"resource_id": []}),
        },
        days_found={},
        catalog=Catalog(build_price_catalog()),
    )
    return ClustersOptimizer().recommend(inputs, ClustersSettings()).table.to_pylist()


def as_plan_row(rec: dict[str, Any]) -> dict[str, Any]:
    """A recommendation row as the portfolio plan carries it (the same action, configs and ids)."""
    return plan_row(
        rec["resource_id"],
        rec["action"],
        json.loads(rec["proposed_config"]),
        resource_kind=rec["resource_kind"],
        deployment_type=rec["deployment_type"],
        option_name=rec["option_name"],
        current_config=rec["current_config"],
        monthly_savings_usd=rec["monthly_savings_usd"] or 0.0,
    )


def test_the_optimisers_rows_applied_on_ecs_and_emr(home, moto_url) -> None:
    ecs, emr = client(moto_url, "ecs"), client(moto_url, "emr")
    cluster = ecs.create_cluster(clusterName="e2e-shop", tags=[{"key": "env", "value": "dev"}])["cluster"]["clusterArn"]
    ecs.register_task_definition(
        family="e2e-api",
        cpu="1024",
        memory="2048",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        containerDefinitions=[{"name": "api", "image": "nginx", "essential": True}],
    )
    service_arn = ecs.create_service(
        cluster=cluster,
        serviceName="e2e-api",
        taskDefinition="e2e-api",
        desiredCount=4,
        launchType="FARGATE",
        tags=[{"key": "env", "value": "dev"}],
    )["service"]["serviceArn"]
    sized_id, sized_arn, sized_groups = seed_emr(emr, "e2e-sized")
    idle_id, idle_arn, idle_groups = seed_emr(emr, "e2e-idle")

    def emr_resource(cid: str, arn: str, groups: list[dict[str, Any]]) -> dict[str, Any]:
        attributes = {
            "cluster_id": cid,
            "instance_collection_type": "INSTANCE_GROUP",
            "instance_groups": groups,
            "auto_termination_idle_timeout": None,
        }
        return resource("emr_cluster", arn, attributes, state="WAITING")

    inventory = [
        resource(
            "ecs_service",
            service_arn,
            {
                "desired_count": 4,
                "launch_type": "FARGATE",
                "task_cpu": 1024,
                "task_memory": 2048,
                "task_definition_revision": "e2e-api:1",
                "capacity_provider_strategy": [],
            },
            parent_id=cluster,
        ),
        emr_resource(sized_id, sized_arn, sized_groups),
        emr_resource(idle_id, idle_arn, idle_groups),
    ]
    prof = [
        *profile(service_arn, "ecs_service", cpu_p95_pct=20.0, mem_max_pct=30.0),
        *emr_profile(sized_arn, set(range(24)), yarn=30.0),
        *emr_profile(idle_arn, set(range(18, 24)), yarn=60.0),
    ]
    recs = {(r["resource_id"], r["option_name"]): r for r in recommend(inventory, prof)}
    chosen = [recs[(service_arn, "resize_tasks")], recs[(sized_arn, "resize")], recs[(idle_arn, "auto_terminate")]]
    assert [r["action"] for r in chosen] == ["ecs_update_service", "emr_resize", "emr_auto_termination"]
    home.write_plan([as_plan_row(r) for r in chosen])
    home.approve_all()

    api = AwsApi(moto_url)
    with api.serve() as url:
        aws = executor_aws(url)
        dry = home.run(aws, mode="dry_run").decisions
        assert {d.outcome for d in dry} == {"would_apply"}, [d.reason for d in dry]
        decisions = {d.resource_id: d for d in home.run(aws).decisions}
    assert {d.outcome for d in decisions.values()} == {"applied"}, [d.error for d in decisions.values()]

    proposed = {r["resource_id"]: json.loads(r["proposed_config"]) for r in chosen}
    svc = ecs.describe_services(cluster=cluster, services=["e2e-api"])["services"][0]
    size = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    assert (int(size["cpu"]), int(size["memory"])) == (proposed[service_arn]["cpu"], proposed[service_arn]["memory"])
    assert svc["desiredCount"] == 4
    live = {
        g["InstanceGroupType"]: g["RequestedInstanceCount"]
        for g in emr.list_instance_groups(ClusterId=sized_id)["InstanceGroups"]
    }
    assert live == {g["role"]: g["count"] for g in proposed[sized_arn]["instance_groups"]}
    assert api.auto_termination[idle_id] == {"IdleTimeout": proposed[idle_arn]["idle_timeout_seconds"]}
    # The calls made are the row's api_calls (the revision's number filled in by ECS).
    made = [c["api"].split(":")[1] for c in decisions[service_arn].api_calls]
    assert made == [c["operation"] for c in proposed[service_arn]["api_calls"]]
    assert decisions[sized_arn].api_calls[0]["params"]["InstanceGroups"] == [
        i
        for c in proposed[sized_arn]["api_calls"]
        for i in c["parameters"]["InstanceGroups"]
        if i["InstanceCount"] != next(g["requested"] for g in sized_groups if g["id"] == i["InstanceGroupId"])
    ]
