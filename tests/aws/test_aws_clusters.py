"""ECS, EMR and custom-cluster collection on a real moto server: tasks and their sizes, steps, protect and
production tags, custom-cluster membership, and ECS service series put with their dimensions in another
order than the collector's.

Seeded in ap-southeast-2 of the management account on a moto server of this module's own (see ``world``).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from conftest import (
    FIRST_DAY,
    MANAGEMENT_ACCOUNT,
    AwsWorld,
    build_collector,
    client,
    load_gcd,
    put_metric_data,
    run_instance,
    running_moto_server,
    step_time,
)

from cloudopt_pipelines.testing.aws_api import JSON_TYPE, AwsApi, forward, send, serve

REGION = "ap-southeast-2"
EMR_BUSY_CPU_PCT = 20.0


@dataclass
class ClusterWorld:
    container_instances: list[str] = field(default_factory=list)
    custom_members: list[str] = field(default_factory=list)
    grid_member: str = ""
    emr_cluster_id: str = ""
    ecs_trace: list[float] = field(default_factory=list)
    insights_cpu: list[float] = field(default_factory=list)
    emr_trace: list[tuple[float, float]] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsWorld]:
    """A moto server of this module's own: moto's EMR lists clusters and starts their instances outside the
    region asked for, so the session's shared estate would see them."""
    with running_moto_server(tmp_path_factory.mktemp("moto-clusters") / "moto_server.log") as url:
        yield AwsWorld(endpoint=url)


@pytest.fixture(scope="module")
def clusters_world(world: AwsWorld) -> ClusterWorld:
    w = ClusterWorld()
    endpoint = world.endpoint
    ec2 = client(endpoint, "ec2", REGION)
    ecs = client(endpoint, "ecs", REGION)
    ecs.create_cluster(clusterName="shop", tags=[{"key": "env", "value": "prod"}])
    ecs.create_cluster(
        clusterName="batch", tags=[{"key": "env", "value": "dev"}, {"key": "cloudopt:protect", "value": "true"}]
    )
    for _ in range(2):
        iid = run_instance(ec2, {}, "m5.2xlarge", Placement={"AvailabilityZone": f"{REGION}a"})
        w.container_instances.append(iid)
        document = {"instanceId": iid, "region": REGION, "availabilityZone": f"{REGION}a", "instanceType": "m5.2xlarge"}
        ecs.register_container_instance(cluster="shop", instanceIdentityDocument=json.dumps(document))
    # Task-level size, and a definition sized only by its containers (EC2 launch type).
    ecs.register_task_definition(
        family="api",
        cpu="1024",
        memory="2048",
        requiresCompatibilities=["EC2"],
        containerDefinitions=[{"name": "api", "image": "nginx", "cpu": 1024, "memory": 2048}],
    )
    ecs.register_task_definition(
        family="worker",
        containerDefinitions=[
            {"name": "a", "image": "busybox", "cpu": 256, "memory": 512},
            {"name": "b", "image": "busybox", "cpu": 256, "memoryReservation": 256},
        ],
    )
    ecs.register_task_definition(
        family="front",
        cpu="256",
        memory="512",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        containerDefinitions=[{"name": "front", "image": "nginx"}],
    )
    ecs.create_service(
        cluster="shop",
        serviceName="api",
        taskDefinition="api",
        desiredCount=3,
        launchType="EC2",
        tags=[{"key": "cloudopt:protect", "value": "true"}],
    )
    ecs.create_service(
        cluster="shop", serviceName="front", taskDefinition="front", desiredCount=2, launchType="FARGATE"
    )
    ecs.create_service(cluster="batch", serviceName="worker", taskDefinition="worker", desiredCount=1)
    ecs.run_task(cluster="shop", taskDefinition="api", count=2, startedBy="events-rule/nightly", launchType="EC2")

    # ECS service series put as [ServiceName, ClusterName]: CloudWatch matches dimensions as a set, moto only
    # in the order given, so the collector must ask in the listed order.
    gcd = load_gcd()
    vm = list(dict.fromkeys(gcd.vm_id))[2]
    rows = gcd[gcd.vm_id == vm]
    w.ecs_trace = [float(v) for v in rows.cpu_util_pct]
    put_metric_data(
        client(endpoint, "cloudwatch", REGION),
        "AWS/ECS",
        [
            {
                "MetricName": "CPUUtilization",
                "Dimensions": [{"Name": "ServiceName", "Value": "api"}, {"Name": "ClusterName", "Value": "shop"}],
                "Timestamp": step_time(r.step_5min),
                "Value": float(r.cpu_util_pct),
                "Unit": "Percent",
            }
            for r in rows.itertuples()
        ],
    )

    # Container Insights on for the api service (3 tasks of 1024 units / 2048 MiB): the tasks use half of what
    # AWS/ECS CPUUtilization says, so which one the analysis reads shows.
    w.insights_cpu = [v / 2 for v in w.ecs_trace]
    put_metric_data(
        client(endpoint, "cloudwatch", REGION),
        "ECS/ContainerInsights",
        [
            {
                "MetricName": metric,
                "Dimensions": [{"Name": "ClusterName", "Value": "shop"}, {"Name": "ServiceName", "Value": "api"}],
                "Timestamp": step_time(r.step_5min),
                "Value": value,
            }
            for r in rows.itertuples()
            for metric, value in (
                ("CpuUtilized", 3072 * float(r.cpu_util_pct) / 2 / 100),
                ("CpuReserved", 3072.0),
                ("MemoryUtilized", 6144 * float(r.mem_util_pct) / 100),
                ("MemoryReserved", 6144.0),
            )
        ],
    )

    emr = client(endpoint, "emr", REGION)
    w.emr_cluster_id = emr.run_job_flow(
        Name="nightly-etl",
        ReleaseLabel="emr-6.10.0",
        Applications=[{"Name": "Spark"}],
        Instances={
            "InstanceGroups": [
                {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                {"Name": "core", "InstanceRole": "CORE", "InstanceType": "r5.xlarge", "InstanceCount": 2},
                {
                    "Name": "task",
                    "InstanceRole": "TASK",
                    "InstanceType": "r5.xlarge",
                    "InstanceCount": 3,
                    "Market": "SPOT",
                },
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        Steps=[
            {
                "Name": "aggregate",
                "ActionOnFailure": "CONTINUE",
                "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "s3://b/job.py"]},
            }
        ],
        Tags=[{"Key": "env", "Value": "prod"}, {"Key": "cloudopt:protect", "Value": "yes"}],
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]

    # EMR series of the same real day: YARN memory from the trace's memory, idle where its CPU is low.
    put_metric_data(
        client(endpoint, "cloudwatch", REGION),
        "AWS/ElasticMapReduce",
        [
            {
                "MetricName": metric,
                "Dimensions": [{"Name": "JobFlowId", "Value": w.emr_cluster_id}],
                "Timestamp": step_time(r.step_5min),
                "Value": value,
            }
            for r in rows.itertuples()
            for metric, value in (
                ("YARNMemoryAvailablePercentage", max(0.0, 100.0 - float(r.mem_util_pct))),
                ("IsIdle", 1.0 if float(r.cpu_util_pct) < EMR_BUSY_CPU_PCT else 0.0),
            )
        ],
    )
    w.emr_trace = [(float(r.cpu_util_pct), float(r.mem_util_pct)) for r in rows.itertuples()]

    for k in range(3):
        w.custom_members.append(
            run_instance(ec2, {"Name": f"hpc-{k}", "env": "dev", "cloudopt:cluster": "hpc"}, "c5.2xlarge")
        )
    w.grid_member = run_instance(ec2, {"Name": "render-0", "grid:cluster": "render"}, "c5.xlarge")
    return w


@pytest.fixture(scope="module")
def cluster_inventory(world, clusters_world: ClusterWorld) -> list[dict[str, Any]]:
    collector = build_collector(world, regions=(REGION,))
    return collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY).table.to_pylist()


def _by_name(rows: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in rows if r["resource_kind"] == kind}


def test_ecs_services_carry_task_sizes_from_describe_task_definition(cluster_inventory) -> None:
    services = _by_name(cluster_inventory, "ecs_service")
    api = json.loads(services["api"]["attributes"])
    assert (api["task_cpu"], api["task_memory"]) == (1024, 2048)
    assert api["task_definition_revision"] == "api:1"
    assert api["requires_compatibilities"] == ["EC2"]
    worker = json.loads(services["worker"]["attributes"])
    # No task-level size: the containers' cpu and memory (memoryReservation where memory is unset) add up.
    assert (worker["task_cpu"], worker["task_memory"]) == (512, 768)
    front = json.loads(services["front"]["attributes"])
    assert (front["task_cpu"], front["task_memory"], front["launch_type"]) == (256, 512, "FARGATE")
    assert all(json.loads(s["attributes"])["task_definition_error"] is None for s in services.values())


def test_ecs_cluster_lists_its_running_tasks_with_sizes(cluster_inventory) -> None:
    clusters = _by_name(cluster_inventory, "ecs_cluster")
    tasks = json.loads(clusters["shop"]["attributes"])["tasks"]
    scheduled = [t for t in tasks if t["started_by"] == "events-rule/nightly"]
    assert len(scheduled) == 2
    assert {(t["cpu"], t["memory"], t["task_definition"]) for t in scheduled} == {(1024, 2048, "api:1")}
    assert all(t["container_instance"] for t in scheduled)
    assert json.loads(clusters["batch"]["attributes"])["tasks"] == []


def test_protect_and_production_tags_are_read_from_ecs_and_emr(cluster_inventory) -> None:
    clusters = _by_name(cluster_inventory, "ecs_cluster")
    assert clusters["shop"]["env"] == "prod"
    assert json.loads(clusters["batch"]["tags"])["cloudopt:protect"] == "true"
    services = _by_name(cluster_inventory, "ecs_service")
    assert json.loads(services["api"]["tags"]).get("cloudopt:protect") == "true"
    emr = _by_name(cluster_inventory, "emr_cluster")["nightly-etl"]
    assert emr["env"] == "prod"
    assert json.loads(emr["tags"])["cloudopt:protect"] == "yes"


def test_emr_groups_steps_and_applications(cluster_inventory, clusters_world: ClusterWorld) -> None:
    emr = _by_name(cluster_inventory, "emr_cluster")["nightly-etl"]
    attributes = json.loads(emr["attributes"])
    groups = {g["role"]: g for g in attributes["instance_groups"]}
    assert set(groups) == {"MASTER", "CORE", "TASK"}
    assert (groups["TASK"]["instance_type"], groups["TASK"]["requested"], groups["TASK"]["market"]) == (
        "r5.xlarge",
        3,
        "SPOT",
    )
    assert all(g["id"] for g in groups.values())
    assert [s["name"] for s in attributes["steps"]] == ["aggregate"]
    assert attributes["steps"][0]["state"] in ("PENDING", "RUNNING", "COMPLETED")
    assert attributes["applications"] == ["Spark"]
    assert attributes["cluster_id"] == clusters_world.emr_cluster_id


def test_custom_cluster_members_are_never_standalone(cluster_inventory, clusters_world: ClusterWorld) -> None:
    instances = {r["resource_id"]: r for r in cluster_inventory if r["resource_kind"] == "ec2_instance"}
    for iid in clusters_world.custom_members:
        assert instances[iid]["deployment_type"] == "custom_cluster"
        assert instances[iid]["parent_id"] == "hpc"
        assert json.loads(instances[iid]["attributes"])["custom_cluster"] == "hpc"
    # Another key is not a cluster tag unless configured.
    assert instances[clusters_world.grid_member]["deployment_type"] == "standalone"
    for iid in clusters_world.container_instances:
        assert instances[iid]["deployment_type"] == "ecs"


def test_cluster_tag_key_is_configurable(world, clusters_world: ClusterWorld) -> None:
    collector = build_collector(world, regions=(REGION,), cluster_tag_key="grid:cluster")
    rows = collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY).table.to_pylist()
    instances = {r["resource_id"]: r for r in rows if r["resource_kind"] == "ec2_instance"}
    assert instances[clusters_world.grid_member]["deployment_type"] == "custom_cluster"
    assert instances[clusters_world.grid_member]["parent_id"] == "render"
    assert instances[clusters_world.custom_members[0]]["deployment_type"] == "standalone"


def test_ecs_service_series_found_whatever_the_dimension_order(world, clusters_world: ClusterWorld) -> None:
    collector = build_collector(world, regions=(REGION,))
    rows = collector.collect_cluster_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY).table.to_pylist()
    api = sorted(
        (r["ts"], r["value"])
        for r in rows
        if r["resource_id"].endswith(":service/shop/api") and r["metric"] == "CPUUtilization"
    )
    assert [v for _, v in api] == pytest.approx(clusters_world.ecs_trace)
    # Container Insights asked for where ListMetrics lists it (the api service), not elsewhere.
    insights = {
        (r["resource_id"].rsplit("/", 1)[-1], r["metric"]) for r in rows if r["namespace"] == "ECS/ContainerInsights"
    }
    assert insights == {("api", m) for m in ("CpuUtilized", "CpuReserved", "MemoryUtilized", "MemoryReserved")}
    emr = {r["metric"] for r in rows if r["namespace"] == "AWS/ElasticMapReduce"}
    assert emr <= {
        "YARNMemoryAvailablePercentage",
        "ContainerPending",
        "AppsRunning",
        "IsIdle",
        "CoreNodesRunning",
        "TaskNodesRunning",
    }


class DenyTaskDefinition:
    """Forwards to moto, but answers DescribeTaskDefinition of family ``worker`` the way ECS answers a
    caller without ecs:DescribeTaskDefinition on it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.denied = 0

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if handler.headers.get("X-Amz-Target", "").endswith(".DescribeTaskDefinition") and b"worker" in body:
            self.denied += 1
            error = {"__type": "AccessDeniedException", "message": "not authorized to DescribeTaskDefinition"}
            headers = [("Content-Type", JSON_TYPE), ("x-amzn-errortype", "AccessDeniedException")]
            send(handler, 400, json.dumps(error).encode(), headers)
            return
        forward(handler, self.upstream, body)

    def serve(self) -> contextlib.AbstractContextManager[str]:
        return serve(self.handle)


def test_unreadable_task_definition_is_a_reason_not_a_failed_partition(world, clusters_world: ClusterWorld) -> None:
    proxy = DenyTaskDefinition(world.endpoint)
    with proxy.serve() as url:
        collector = build_collector(world, regions=(REGION,), endpoint_url=url)
        rows = collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY).table.to_pylist()
    assert proxy.denied >= 1
    services = _by_name(rows, "ecs_service")
    worker = json.loads(services["worker"]["attributes"])
    assert worker["task_cpu"] is None and worker["task_memory"] is None
    assert "AccessDeniedException" in worker["task_definition_error"]
    assert json.loads(services["api"]["attributes"])["task_cpu"] == 1024


def test_collector_to_recommendations_end_to_end(world, clusters_world: ClusterWorld, tmp_path) -> None:
    """moto -> the AWS collector -> a real lake -> the SQL feature models -> the cluster optimiser."""
    from cloudopt_pipelines.assets.features import SOURCE_TABLES
    from cloudopt_pipelines.assets.recommendations import read_inputs
    from cloudopt_pipelines.catalog.prices import build_price_catalog
    from cloudopt_pipelines.optimizers.base import OptimizerInputs, optimizer_named
    from cloudopt_pipelines.optimizers.clusters_optimizer import ClustersSettings
    from cloudopt_pipelines.optimizers.sizing import Catalog
    from cloudopt_pipelines.project_files import sql_models_dir
    from cloudopt_pipelines.sqlmodels.runner import execute_model, load_models
    from cloudopt_pipelines.sqlmodels.sources import source_schemas
    from cloudopt_pipelines.storage.lake import Lake

    models = {m.name: m for m in load_models(sql_models_dir(), set(SOURCE_TABLES))}
    partitioning = {k: v[0] for k, v in SOURCE_TABLES.items()} | {m.name: m.partitioned_by for m in models.values()}
    collector = build_collector(world, regions=(REGION,))
    lake = Lake(tmp_path / "lake")
    lake.write("price_catalog", build_price_catalog())
    lake.write(
        "resources", collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY).table, MANAGEMENT_ACCOUNT, FIRST_DAY
    )
    lake.write(
        "utilization_5m", collector.collect_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY).table, MANAGEMENT_ACCOUNT, FIRST_DAY
    )
    lake.write(
        "cluster_metrics_5m",
        collector.collect_cluster_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY).table,
        MANAGEMENT_ACCOUNT,
        FIRST_DAY,
    )
    for name in (
        "stg_utilization_5m",
        "stg_cluster_metrics_5m",
        "cluster_utilization_daily",
        "cluster_activity_profile",
    ):
        execute_model(models[name], lake, partitioning, MANAGEMENT_ACCOUNT, FIRST_DAY, source_schemas=source_schemas())

    # Container Insights preferred where present: the api service's use is its tasks' CpuUtilized / CpuReserved.
    stg = lake.read("stg_cluster_metrics_5m", MANAGEMENT_ACCOUNT, FIRST_DAY).to_pylist()
    api_cpu = sorted((r["ts"], r) for r in stg if r["resource_id"].endswith(":service/shop/api"))
    assert [r["cpu_pct"] for _, r in api_cpu] == pytest.approx(clusters_world.insights_cpu)
    assert all(r["from_insights"] for _, r in api_cpu)
    assert not any(r["from_insights"] for r in stg if r["resource_kind"] == "ecs_cluster")

    optimizer = optimizer_named("clusters")
    tables, days_found = read_inputs(lake, optimizer.inputs, MANAGEMENT_ACCOUNT, FIRST_DAY)
    inputs = OptimizerInputs(
        account_id=MANAGEMENT_ACCOUNT,
        day=FIRST_DAY,
        inventory=optimizer.select(lake.read("resources", MANAGEMENT_ACCOUNT, FIRST_DAY)),
        tables=tables,
        days_found=days_found,
        catalog=Catalog(lake.read("price_catalog")),
    )
    one_day = optimizer.recommend(inputs, ClustersSettings()).table.to_pylist()
    # One day of data: the documented minimum (7 days) holds every cut back.
    assert {r["option_name"] for r in one_day} == {"keep"}
    rows = optimizer.recommend(inputs, ClustersSettings(min_days_before_cut=1)).table.to_pylist()
    by = {}
    for r in rows:
        by.setdefault(r["resource_id"], {})[r["option_name"]] = r
    shop = next(k for k in by if k.endswith(":cluster/shop"))
    # Capacity from the catalogue (2 x m5.2xlarge = 16 vCPU), not moto's 4096 CPU units per instance.
    assert by[shop]["keep"]["vcpu"] == 16.0
    api = next(k for k in by if k.endswith(":service/shop/api"))
    assert by[api]["keep"]["protected"] and by[api]["keep"]["is_best"]
    assert json.loads(by[api]["keep"]["details"])["analysis"]["usage_source"] == "ECS/ContainerInsights"
    resize = json.loads(by[api]["resize_tasks"]["proposed_config"])
    assert resize["api_calls"][1]["parameters"]["cluster"] == shop
    emr_arn = next(
        k for k in by if ":cluster/" + clusters_world.emr_cluster_id in k or k.endswith(clusters_world.emr_cluster_id)
    )
    emr_rows = by[emr_arn]
    assert all(r["protected"] for r in emr_rows.values()) and emr_rows["keep"]["is_best"]
    calls = [c for r in emr_rows.values() for c in json.loads(r["proposed_config"])["api_calls"]]
    assert calls and all(
        c["parameters"].get("ClusterId", c["parameters"].get("JobFlowId")) == clusters_world.emr_cluster_id
        for c in calls
    )
    hpc = by["cloudopt:cluster=hpc"]
    assert {r["deployment_type"] for r in hpc.values()} == {"custom_cluster"}


def test_emr_policies_read_where_the_api_answers(world, clusters_world: ClusterWorld) -> None:
    # The proxy answers as the EMR API reference documents: a 2-hour idle timeout, no managed-scaling policy.
    proxy = AwsApi(world.endpoint, auto_termination={clusters_world.emr_cluster_id: {"IdleTimeout": 7200}})
    with proxy.serve() as url:
        rows = build_collector(world, regions=(REGION,), endpoint_url=url).collect_inventory(
            MANAGEMENT_ACCOUNT, FIRST_DAY
        )
    emr = json.loads(_by_name(rows.table.to_pylist(), "emr_cluster")["nightly-etl"]["attributes"])
    assert sorted(set(proxy.calls)) == ["GetAutoTerminationPolicy", "GetManagedScalingPolicy"]
    assert emr["auto_termination_idle_timeout"] == 7200
    assert emr["managed_scaling_policy"] is None and emr["policy_errors"] == []


def test_emr_policy_calls_moto_fails_leave_the_policy_unknown(cluster_inventory) -> None:
    # moto answers these two calls with HTTP 500 (README limits): named, not a failed partition.
    emr = json.loads(_by_name(cluster_inventory, "emr_cluster")["nightly-etl"]["attributes"])
    assert emr["auto_termination_idle_timeout"] is None
    assert [e.split(":")[1] for e in emr["policy_errors"]] == ["GetAutoTerminationPolicy", "GetManagedScalingPolicy"]
