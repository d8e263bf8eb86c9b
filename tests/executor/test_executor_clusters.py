"""ECS and EMR plug-ins end to end on the real moto server: the cluster optimiser's rows (their actions,
proposed_config keys and api_calls as optimizers/clusters.py writes them) applied, verified, audited, re-run
as no-ops and rolled back, with the rules: dry run, protected or production clusters and services, drift,
blast radius. EMR's policy and fleet calls (moto answers HTTP 500 or lacks them) and ECS deployments (moto never
settles them) go through ``AwsApi`` (cloudopt_pipelines/testing/aws_api.py), a proxy that answers as the API
references document; everything else reaches moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cloudopt_pipelines.executor import ChangeWindow, ExecutorPolicy, rollback
from cloudopt_pipelines.executor.policy import PolicyError
from cloudopt_pipelines.testing.aws_api import AwsApi
from tests.executor.conftest import MANAGEMENT_ACCOUNT, client, executor_aws, plan_row

_COUNTER = iter(range(10_000))


def _name(prefix: str) -> str:
    return f"{prefix}-{next(_COUNTER)}"


@pytest.fixture(scope="module")
def ecs(moto_url: str) -> Any:
    return client(moto_url, "ecs")


@pytest.fixture(scope="module")
def emr(moto_url: str) -> Any:
    return client(moto_url, "emr")


@pytest.fixture(scope="module")
def ecs_api(moto_url: str) -> Iterator[tuple[AwsApi, str]]:
    api = AwsApi(moto_url)
    with api.serve() as url:
        yield api, url


@pytest.fixture(scope="module")
def ecs_url(ecs_api: tuple[AwsApi, str]) -> str:
    """The executor's endpoint for the ECS tests: moto behind the proxy that settles ECS deployments."""
    return ecs_api[1]


@pytest.fixture
def emr_api(moto_url: str) -> Iterator[tuple[AwsApi, str]]:
    api = AwsApi(moto_url)
    with api.serve() as url:
        yield api, url


# ------------------------------------------------------------------------------------------------ ECS


def fargate_service(ecs: Any, cluster_tags: dict[str, str] | None = None, count: int = 4, **service_tags: str):
    """A Fargate service of 512 CPU units / 1024 MiB on a cluster of its own; (cluster ARN, service ARN, name)."""
    cluster = ecs.create_cluster(
        clusterName=_name("shop"), tags=[{"key": k, "value": v} for k, v in (cluster_tags or {"env": "dev"}).items()]
    )["cluster"]["clusterArn"]
    family = _name("front")
    ecs.register_task_definition(
        family=family,
        cpu="512",
        memory="1024",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        containerDefinitions=[{"name": "front", "image": "nginx", "essential": True}],
        tags=[{"key": "team", "value": "web"}],
    )
    svc = ecs.create_service(
        cluster=cluster,
        serviceName=family,
        taskDefinition=family,
        desiredCount=count,
        launchType="FARGATE",
        tags=[{"key": k, "value": v} for k, v in {"env": "dev", **service_tags}.items()],
    )["service"]
    return cluster, svc["serviceArn"], family


def service_row(cluster: str, arn: str, name: str, option: str, count: int = 4, **change: Any) -> dict[str, Any]:
    """An ``ecs_update_service`` row as the cluster optimiser writes it (optimizers/clusters.py)."""
    current = {
        "cluster": cluster,
        "service": name,
        "desired_count": count,
        "cpu": 512,
        "memory": 1024,
        "task_definition": f"{name}:1",
        "capacity_provider_strategy": None,
        "launch_type": "FARGATE",
        "market": "on_demand",
    }
    proposed = {**current, **change}
    update: dict[str, Any] = {"cluster": cluster, "service": name}
    calls = []
    if "cpu" in change:
        calls.append(
            {
                "service": "ecs",
                "operation": "RegisterTaskDefinition",
                "parameters": {"cpu": str(change["cpu"]), "memory": str(change["memory"])},
                "from_task_definition": f"{name}:1",
            }
        )
        update.update(taskDefinition=name, desiredCount=count)
    if "desired_count" in change:
        update["desiredCount"] = change["desired_count"]
    if "capacity_provider_strategy" in change:
        update.update(capacityProviderStrategy=change["capacity_provider_strategy"], forceNewDeployment=True)
    calls.append({"service": "ecs", "operation": "UpdateService", "parameters": update})
    return plan_row(
        arn,
        "ecs_update_service",
        {**proposed, "api_calls": calls},
        resource_kind="ecs_service",
        deployment_type="ecs",
        option_name=option,
        current_config=json.dumps(current),
    )


def live_service(ecs: Any, cluster: str, name: str) -> dict[str, Any]:
    return ecs.describe_services(cluster=cluster, services=[name])["services"][0]


def test_scale_in_applied_verified_idempotent_and_rolled_back(home, ecs, ecs_url) -> None:
    cluster, arn, name = fargate_service(ecs)
    home.write_plan([service_row(cluster, arn, name, "scale_in", desired_count=2)])
    home.approve_all()
    aws = executor_aws(ecs_url)

    dry = home.run(aws, mode="dry_run").decisions[0]
    assert dry.outcome == "would_apply" and live_service(ecs, cluster, name)["desiredCount"] == 4
    assert [c["api"] for c in dry.api_calls] == ["ecs:UpdateService"]
    assert dry.api_calls[0]["params"] == {"cluster": cluster, "service": name, "desiredCount": 2}

    applied = home.run(aws).decisions[0]
    assert applied.outcome == "applied", applied.error
    assert live_service(ecs, cluster, name)["desiredCount"] == 2
    assert applied.state_before["desired_count"] == 4 and applied.state_after["desired_count"] == 2
    assert [c["api"] for c in applied.api_calls] == ["ecs:UpdateService"] and applied.api_calls[0]["status"] == "ok"

    again = home.run(aws).decisions[0]
    assert again.outcome == "skipped" and again.reason.startswith("already applied")

    dry = rollback(home.lake, home.paths, applied.action_id, "dry_run", "carol", aws)
    assert dry.outcome == "would_apply" and live_service(ecs, cluster, name)["desiredCount"] == 2
    assert [(c["api"], c["params"].get("desiredCount")) for c in dry.api_calls] == [("ecs:UpdateService", 4)]
    undone = rollback(home.lake, home.paths, applied.action_id, "apply", "carol", aws)
    assert undone.outcome == "rolled_back" and live_service(ecs, cluster, name)["desiredCount"] == 4


def test_verification_waits_for_the_deployment_to_settle(home, ecs, moto_url) -> None:
    # The proxy answers IN_PROGRESS for the 3 DescribeServices after UpdateService, then COMPLETED; polls are
    # counted, never timed (the bound is 120 s, the sleep between polls recorded).
    api = AwsApi(moto_url, rollout_polls=3)
    cluster, arn, name = fargate_service(ecs)
    home.write_plan([service_row(cluster, arn, name, "scale_in", desired_count=2)])
    home.approve_all()
    with api.serve() as url:
        aws = executor_aws(url, max_attempts=3)
        slept: list[float] = []
        aws.sleep = slept.append
        applied = home.run(aws).decisions[0]
    assert applied.outcome == "applied", applied.error
    assert len(slept) == 3 and api.rollouts[name] == 0
    assert applied.state_after["rollout_state"] == "COMPLETED"


def test_a_failed_or_unsettled_deployment_fails_verification(home, ecs, moto_url) -> None:
    cluster, arn, name = fargate_service(ecs)
    failing = AwsApi(moto_url, rollout_polls=1, failing_rollouts={name})
    home.write_plan([service_row(cluster, arn, name, "scale_in", desired_count=2)])
    home.approve_all()
    with failing.serve() as url:
        aws = executor_aws(url, max_attempts=3)
        aws.sleep = lambda seconds: None
        failed = home.run(aws).decisions[0]
    assert failed.outcome != "applied" and "verification failed" in failed.error and "FAILED" in failed.error

    cluster, arn, name = fargate_service(ecs)
    stuck = AwsApi(moto_url, rollout_polls=10**6)
    home.write_plan([service_row(cluster, arn, name, "scale_in", desired_count=2)])
    home.approve_all()
    with stuck.serve() as url:
        aws = executor_aws(url, max_attempts=3)
        aws.wait_timeout_seconds = 0
        timed_out = home.run(aws).decisions[0]
    assert timed_out.outcome != "applied" and "timed out after 0 s waiting for the deployment" in timed_out.error
    assert f"ECS service {name}" in timed_out.error


def test_task_resize_registers_a_revision_with_only_cpu_and_memory_changed(home, ecs, ecs_url) -> None:
    cluster, arn, name = fargate_service(ecs)
    home.write_plan([service_row(cluster, arn, name, "resize_tasks", cpu=256, memory=512)])
    home.approve_all()
    aws = executor_aws(ecs_url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied", decision.error
    assert [c["api"] for c in decision.api_calls] == ["ecs:RegisterTaskDefinition", "ecs:UpdateService"]
    svc = live_service(ecs, cluster, name)
    assert svc["taskDefinition"].endswith(f"{name}:2") and svc["desiredCount"] == 4
    new = ecs.describe_task_definition(taskDefinition=f"{name}:2", include=["TAGS"])
    old = ecs.describe_task_definition(taskDefinition=f"{name}:1")["taskDefinition"]
    assert (new["taskDefinition"]["cpu"], new["taskDefinition"]["memory"]) == ("256", "512")
    assert new["taskDefinition"]["containerDefinitions"] == old["containerDefinitions"]
    assert new["taskDefinition"]["networkMode"] == "awsvpc"
    assert {t["key"]: t["value"] for t in new["tags"]} == {"team": "web", "cloudopt:action-id": decision.action_id}

    rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert live_service(ecs, cluster, name)["taskDefinition"].endswith(f"{name}:1")


def test_an_interrupted_resize_reuses_the_revision_it_registered(home, ecs, ecs_url) -> None:
    cluster, arn, name = fargate_service(ecs)
    actions = home.write_plan([service_row(cluster, arn, name, "resize_tasks", cpu=256, memory=512)])
    home.approve_all()
    # An earlier run registered the revision, then died before UpdateService.
    ecs.register_task_definition(
        family=name,
        cpu="256",
        memory="512",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        containerDefinitions=[{"name": "front", "image": "nginx", "essential": True}],
        tags=[{"key": "cloudopt:action-id", "value": actions[0].action_id}],
    )
    decision = home.run(executor_aws(ecs_url)).decisions[0]
    assert decision.outcome == "applied", decision.error
    assert [c["api"] for c in decision.api_calls] == ["ecs:UpdateService"]
    assert live_service(ecs, cluster, name)["taskDefinition"].endswith(f"{name}:2")
    families = ecs.list_task_definitions(familyPrefix=name)["taskDefinitionArns"]
    assert len(families) == 2


def test_fargate_spot_strategy_and_its_rollback_to_fargate(home, ecs, ecs_url) -> None:
    cluster, arn, name = fargate_service(ecs)
    strategy = [
        {"capacityProvider": "FARGATE", "base": 1, "weight": 1},
        {"capacityProvider": "FARGATE_SPOT", "weight": 3},
    ]
    home.write_plan([service_row(cluster, arn, name, "fargate_spot", capacity_provider_strategy=strategy)])
    home.approve_all()
    aws = executor_aws(ecs_url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied", decision.error
    assert decision.api_calls[0]["params"]["forceNewDeployment"] is True
    live = {s["capacityProvider"]: s["weight"] for s in live_service(ecs, cluster, name)["capacityProviderStrategy"]}
    assert live == {"FARGATE": 1, "FARGATE_SPOT": 3}
    undone = rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert undone.outcome == "rolled_back"
    back = live_service(ecs, cluster, name)["capacityProviderStrategy"]
    assert [(s["capacityProvider"], s["weight"]) for s in back] == [("FARGATE", 1)]


@pytest.mark.parametrize(
    ("cluster_tags", "service_tags", "reason"),
    [
        ({"env": "dev", "cloudopt:protect": "true"}, {}, "protected: live tag cloudopt:protect=true"),
        ({"env": "prod"}, {}, "production"),
        ({"env": "dev"}, {"cloudopt:protect": "yes"}, "protected: live tag cloudopt:protect=yes"),
    ],
)
def test_protected_or_production_clusters_and_services_are_never_touched(
    home, ecs, ecs_url, cluster_tags, service_tags, reason
) -> None:
    cluster, arn, name = fargate_service(ecs, cluster_tags, **service_tags)
    home.write_plan([service_row(cluster, arn, name, "scale_in", desired_count=2)])
    home.approve_all()
    decision = home.run(executor_aws(ecs_url)).decisions[0]
    assert decision.outcome == "skipped" and decision.reason.startswith(reason)
    assert live_service(ecs, cluster, name)["desiredCount"] == 4


def test_a_service_changed_since_the_plan_is_left_alone(home, ecs, ecs_url) -> None:
    cluster, arn, name = fargate_service(ecs)
    home.write_plan([service_row(cluster, arn, name, "scale_in", desired_count=2)])
    home.approve_all()
    ecs.update_service(cluster=cluster, service=name, desiredCount=6)  # by hand, after the plan
    decision = home.run(executor_aws(ecs_url)).decisions[0]
    assert decision.outcome == "skipped" and "desired_count was 4 in the plan, is 6 now" in decision.reason
    assert live_service(ecs, cluster, name)["desiredCount"] == 6


def test_unapproved_rows_and_the_blast_radius(home, ecs, ecs_url) -> None:
    rows = []
    for _ in range(2):
        cluster, arn, name = fargate_service(ecs)
        rows.append(service_row(cluster, arn, name, "scale_in", desired_count=2))
    actions = home.write_plan(rows)
    aws = executor_aws(ecs_url)
    assert {d.outcome for d in home.run(aws).decisions} == {"skipped"}  # nothing approved yet
    home.approve_all()
    decisions = home.run(aws, max_actions_per_run=1).decisions
    assert sorted(d.outcome for d in decisions) == ["applied", "skipped"]
    held = next(d for d in decisions if d.outcome == "skipped")
    assert "max_actions_per_run" in held.reason and len(actions) == 2


def test_change_windows_hold_service_updates_outside_them(home, ecs, ecs_url) -> None:
    cluster, arn, name = fargate_service(ecs)
    home.write_plan([service_row(cluster, arn, name, "scale_in", desired_count=2)])
    home.approve_all()
    nightly = ChangeWindow(
        cron="0 22 * * 1-5", duration_minutes=120, timezone="UTC", action_types=("ecs_update_service",)
    )
    decision = home.run(executor_aws(ecs_url), change_windows=(nightly,)).decisions[0]  # NOW is Friday noon
    assert decision.outcome == "skipped" and decision.reason.startswith("outside change window")
    assert live_service(ecs, cluster, name)["desiredCount"] == 4


ADVICE = [
    (
        "arn:aws:ecs:us-east-1:123456789012:cluster/shop",
        "resize_cluster",
        "ecs_cluster",
        {"instance_type": "m6i.xlarge", "count": 2},
        ["UpdateAutoScalingGroup"],
        "2 x m6i.xlarge",
    ),
    (
        "arn:aws:elasticmapreduce:us-east-1:123456789012:cluster/j-BATCH",
        "schedule_batch",
        "emr_cluster",
        {"host_cluster_id": "j-HOST", "window": "20:00-24:00 UTC every day"},
        ["AddJobFlowSteps", "TerminateJobFlows"],
        "run it on j-HOST 20:00-24:00 UTC every day",
    ),
    (
        "arn:aws:ecs:us-east-1:123456789012:cluster/shop",
        "schedule_batch",
        "ecs_cluster",
        {"window": "10:00-12:00 UTC every day", "proposed_window": "07:00-09:00 UTC every day", "count": 5},
        ["PutRule"],
        "start it 07:00-09:00 UTC every day instead of 10:00-12:00 UTC every day in its scheduler, then 5 node(s)",
    ),
    (
        "cloudopt:cluster=etl",
        "schedule_batch",
        "custom_cluster",
        {"host_cluster_id": "cloudopt:cluster=hpc", "window": "10:00-12:00 UTC every day", "count": 0},
        ["UpdateSchedule", "TerminateInstances"],
        "run it on cloudopt:cluster=hpc 10:00-12:00 UTC every day",
    ),
]


@pytest.mark.parametrize(("resource_id", "action", "kind", "proposed", "operations", "said"), ADVICE)
def test_cluster_node_and_batch_rows_are_advice_never_applied(
    home, ecs_url, resource_id, action, kind, proposed, operations, said
) -> None:
    calls = [{"service": "any", "operation": op, "parameters": {}} for op in operations]
    row = plan_row(
        resource_id,
        action,
        {**proposed, "api_calls": calls},
        resource_kind=kind,
        deployment_type="custom_cluster" if kind == "custom_cluster" else kind.split("_")[0],
        option_name=action,
    )
    home.write_plan([row])
    home.approve_all()
    decision = home.run(executor_aws(ecs_url)).decisions[0]
    assert decision.outcome == "skipped" and decision.reason.startswith("not applicable: advisory")
    assert said in decision.reason and all(op in decision.reason for op in operations)
    assert decision.api_calls == []


# ------------------------------------------------------------------------------------------------ EMR


def emr_cluster(emr: Any, **tags: str) -> tuple[str, str]:
    """A WAITING cluster: 1 primary, 3 core and 2 task r5.xlarge on demand; (cluster id, cluster ARN)."""
    cid = emr.run_job_flow(
        Name=_name("etl"),
        ReleaseLabel="emr-6.10.0",
        Instances={
            "InstanceGroups": [
                {"Name": "p", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                {"Name": "c", "InstanceRole": "CORE", "InstanceType": "r5.xlarge", "InstanceCount": 3},
                {"Name": "t", "InstanceRole": "TASK", "InstanceType": "r5.xlarge", "InstanceCount": 2},
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        Tags=[{"Key": k, "Value": v} for k, v in {"env": "dev", **tags}.items()],
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    return cid, emr.describe_cluster(ClusterId=cid)["Cluster"]["ClusterArn"]


def group_ids(emr: Any, cid: str) -> dict[str, str]:
    return {g["InstanceGroupType"]: g["Id"] for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]}


def counts(emr: Any, cid: str) -> dict[str, int]:
    return {
        g["InstanceGroupType"]: g["RequestedInstanceCount"]
        for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]
    }


GROUPS = [
    {"role": "MASTER", "instance_type": "m5.xlarge", "count": 1, "market": "ON_DEMAND"},
    {"role": "CORE", "instance_type": "r5.xlarge", "count": 3, "market": "ON_DEMAND"},
    {"role": "TASK", "instance_type": "r5.xlarge", "count": 2, "market": "ON_DEMAND"},
]


def emr_row(cid: str, arn: str, action: str, option: str, change: dict[str, Any], calls: list[dict[str, Any]]):
    """An EMR row as the cluster optimiser writes it (optimizers/clusters.py)."""
    current = {"cluster_id": cid, "instance_groups": GROUPS, "auto_termination_idle_timeout": None}
    return plan_row(
        arn,
        action,
        {**current, **change, "api_calls": calls},
        resource_kind="emr_cluster",
        deployment_type="emr",
        option_name=option,
        current_config=json.dumps(current),
    )


def auto_termination_row(cid: str, arn: str, timeout: int = 3600) -> dict[str, Any]:
    call = {
        "service": "emr",
        "operation": "PutAutoTerminationPolicy",
        "parameters": {"ClusterId": cid, "AutoTerminationPolicy": {"IdleTimeout": timeout}},
    }
    return emr_row(cid, arn, "emr_auto_termination", "auto_terminate", {"idle_timeout_seconds": timeout}, [call])


def managed_scaling_row(cid: str, arn: str) -> dict[str, Any]:
    limits = {
        "UnitType": "Instances",
        "MinimumCapacityUnits": 3,
        "MaximumCapacityUnits": 5,
        "MaximumCoreCapacityUnits": 3,
    }
    change = {"min_units": 3, "max_units": 5, "max_core_units": 3, "unit_type": "Instances"}
    call = {
        "service": "emr",
        "operation": "PutManagedScalingPolicy",
        "parameters": {"ClusterId": cid, "ManagedScalingPolicy": {"ComputeLimits": limits}},
    }
    return emr_row(cid, arn, "emr_managed_scaling", "managed_scaling", change, [call])


def resize_row(emr: Any, cid: str, arn: str, core: int = 2, task: int = 0) -> dict[str, Any]:
    ids = group_ids(emr, cid)
    proposed = [GROUPS[0], {**GROUPS[1], "count": core}, {**GROUPS[2], "count": task}]
    calls = [
        {
            "service": "emr",
            "operation": "ModifyInstanceGroups",
            "parameters": {"ClusterId": cid, "InstanceGroups": [{"InstanceGroupId": ids[role], "InstanceCount": n}]},
        }
        for role, n in (("CORE", core), ("TASK", task))
    ]
    return emr_row(cid, arn, "emr_resize", "resize", {"instance_groups": proposed}, calls)


def test_auto_termination_applied_idempotent_and_rolled_back(home, emr, emr_api) -> None:
    api, url = emr_api
    cid, arn = emr_cluster(emr)
    home.write_plan([auto_termination_row(cid, arn)])
    home.approve_all()
    aws = executor_aws(url)
    dry = home.run(aws, mode="dry_run").decisions[0]
    assert dry.outcome == "would_apply" and cid not in api.auto_termination
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied", decision.error
    assert api.auto_termination[cid] == {"IdleTimeout": 3600}
    assert [c["api"] for c in decision.api_calls] == ["elasticmapreduce:PutAutoTerminationPolicy"]
    assert decision.state_before == {"auto_termination_idle_timeout": None}
    assert home.run(aws).decisions[0].reason.startswith("already applied")
    undone = rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert undone.outcome == "rolled_back" and cid not in api.auto_termination
    assert [c["api"] for c in undone.api_calls] == ["elasticmapreduce:RemoveAutoTerminationPolicy"]


def test_a_policy_set_since_the_plan_is_not_overwritten(home, emr, emr_api) -> None:
    api, url = emr_api
    cid, arn = emr_cluster(emr)
    home.write_plan([auto_termination_row(cid, arn), managed_scaling_row(cid, arn)])
    home.approve_all()
    api.auto_termination[cid] = {"IdleTimeout": 7200}  # someone set them after the plan
    api.managed_scaling[cid] = {
        "ComputeLimits": {"UnitType": "Instances", "MinimumCapacityUnits": 2, "MaximumCapacityUnits": 9}
    }
    decisions = home.run(executor_aws(url)).decisions
    assert {d.outcome for d in decisions} == {"skipped"}
    assert all("changed since the plan" in d.reason for d in decisions), [d.reason for d in decisions]
    assert api.auto_termination[cid] == {"IdleTimeout": 7200}


def test_managed_scaling_applied_and_rolled_back(home, emr, emr_api) -> None:
    api, url = emr_api
    cid, arn = emr_cluster(emr)
    home.write_plan([managed_scaling_row(cid, arn)])
    home.approve_all()
    aws = executor_aws(url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied", decision.error
    assert api.managed_scaling[cid]["ComputeLimits"] == {
        "UnitType": "Instances",
        "MinimumCapacityUnits": 3,
        "MaximumCapacityUnits": 5,
        "MaximumCoreCapacityUnits": 3,
    }
    rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert cid not in api.managed_scaling


def test_instance_groups_resized_and_rolled_back(home, emr, emr_api) -> None:
    _, url = emr_api
    cid, arn = emr_cluster(emr)
    home.write_plan([resize_row(emr, cid, arn, core=2, task=0)])
    home.approve_all()
    aws = executor_aws(url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied", decision.error
    assert counts(emr, cid) == {"MASTER": 1, "CORE": 2, "TASK": 0}
    assert [c["api"] for c in decision.api_calls] == ["elasticmapreduce:ModifyInstanceGroups"]
    assert home.run(aws).decisions[0].reason.startswith("already applied")
    rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert counts(emr, cid) == {"MASTER": 1, "CORE": 3, "TASK": 2}


def test_resize_rules_protected_drifted_managed_and_new_groups(home, emr, emr_api) -> None:
    api, url = emr_api
    protected, p_arn = emr_cluster(emr, **{"cloudopt:protect": "true"})
    drifted, d_arn = emr_cluster(emr)
    managed, m_arn = emr_cluster(emr)
    spot, s_arn = emr_cluster(emr)
    spot_row = resize_row(emr, spot, s_arn)
    proposed = json.loads(spot_row["proposed_config"])
    proposed["instance_groups"] = [*GROUPS[:2], {**GROUPS[2], "market": "SPOT"}]  # task nodes to Spot: new groups
    spot_row["proposed_config"] = json.dumps(proposed)
    spot_row["option_name"] = "task_nodes_spot"
    home.write_plan(
        [resize_row(emr, protected, p_arn), resize_row(emr, drifted, d_arn), resize_row(emr, managed, m_arn), spot_row]
    )
    home.approve_all()
    emr.modify_instance_groups(
        ClusterId=drifted, InstanceGroups=[{"InstanceGroupId": group_ids(emr, drifted)["TASK"], "InstanceCount": 4}]
    )
    api.managed_scaling[managed] = {
        "ComputeLimits": {"UnitType": "Instances", "MinimumCapacityUnits": 3, "MaximumCapacityUnits": 6}
    }
    by = {d.resource_id: d for d in home.run(executor_aws(url)).decisions}
    assert by[p_arn].reason.startswith("protected: live tag cloudopt:protect=true")
    assert "changed since the plan" in by[d_arn].reason and "TASK 4 x r5.xlarge" in by[d_arn].reason
    assert by[m_arn].reason.startswith("managed scaling owns the counts")
    assert "the row adds no group (no AddInstanceGroups" in by[s_arn].reason
    assert {d.outcome for d in by.values()} == {"skipped"}
    for cid in (protected, managed, spot):
        assert counts(emr, cid) == {"MASTER": 1, "CORE": 3, "TASK": 2}


def test_a_terminated_cluster_is_not_applicable(home, emr, emr_api) -> None:
    _, url = emr_api
    cid, arn = emr_cluster(emr)
    home.write_plan([auto_termination_row(cid, arn)])
    home.approve_all()
    emr.terminate_job_flows(JobFlowIds=[cid])
    decision = home.run(executor_aws(url)).decisions[0]
    assert decision.outcome == "skipped" and "TERMINAT" in decision.reason


def test_without_the_proxy_moto_fails_the_policy_calls_and_the_error_names_them(home, emr, moto_url) -> None:
    # moto answers HTTP 500 to the EMR policy calls (README limits): a failed decision naming the call.
    cid, arn = emr_cluster(emr)
    home.write_plan([auto_termination_row(cid, arn)])
    home.approve_all()
    decision = home.run(executor_aws(moto_url)).decisions[0]
    assert decision.outcome == "failed" and "GetAutoTerminationPolicy" in decision.error
    assert MANAGEMENT_ACCOUNT in decision.error


def spot_row(emr: Any, cid: str, arn: str) -> dict[str, Any]:
    """A ``task_nodes_spot`` row as the optimiser writes it: two Spot task groups added, the on-demand one to 0."""
    task = group_ids(emr, cid)["TASK"]
    types = ["r5a.xlarge", "r4.xlarge"]
    calls = [
        {
            "service": "emr",
            "operation": "AddInstanceGroups",
            "parameters": {
                "JobFlowId": cid,
                "InstanceGroups": [
                    {
                        "Name": f"task-spot-{t}",
                        "InstanceRole": "TASK",
                        "Market": "SPOT",
                        "InstanceType": t,
                        "InstanceCount": 1,
                    }
                    for t in types
                ],
            },
        },
        {
            "service": "emr",
            "operation": "ModifyInstanceGroups",
            "parameters": {"ClusterId": cid, "InstanceGroups": [{"InstanceGroupId": task, "InstanceCount": 0}]},
        },
    ]
    change = {
        "instance_groups": [*GROUPS[:2], {**GROUPS[2], "market": "SPOT"}],
        "spot_instance_types": types,
    }
    return emr_row(cid, arn, "emr_resize", "task_nodes_spot", change, calls)


def test_task_nodes_to_spot_add_groups_first_then_empty_the_old_one(home, emr, emr_api) -> None:
    _, url = emr_api
    cid, arn = emr_cluster(emr)
    home.write_plan([spot_row(emr, cid, arn)])
    home.approve_all()
    aws = executor_aws(url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied", decision.error
    assert [c["api"] for c in decision.api_calls] == [
        "elasticmapreduce:AddInstanceGroups",
        "elasticmapreduce:ModifyInstanceGroups",
    ]
    live = {g.get("Name"): g for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]}
    assert {n: (g["Market"], g["RequestedInstanceCount"]) for n, g in live.items() if n.startswith("task-spot")} == {
        "task-spot-r5a.xlarge": ("SPOT", 1),
        "task-spot-r4.xlarge": ("SPOT", 1),
    }
    assert live["t"]["RequestedInstanceCount"] == 0
    assert home.run(aws).decisions[0].reason.startswith("already applied")  # nothing added twice
    assert len(emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]) == 5

    rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    live = {
        g.get("Name"): g["RequestedInstanceCount"] for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]
    }
    assert live == {"p": 1, "c": 3, "t": 2, "task-spot-r5a.xlarge": 0, "task-spot-r4.xlarge": 0}


def test_an_interrupted_spot_move_adds_only_what_is_missing(home, emr, emr_api) -> None:
    _, url = emr_api
    cid, arn = emr_cluster(emr)
    home.write_plan([spot_row(emr, cid, arn)])
    home.approve_all()
    emr.add_instance_groups(  # an earlier run added one group, then died
        JobFlowId=cid,
        InstanceGroups=[
            {
                "Name": "task-spot-r5a.xlarge",
                "InstanceRole": "TASK",
                "Market": "SPOT",
                "InstanceType": "r5a.xlarge",
                "InstanceCount": 1,
            }
        ],
    )
    decision = home.run(executor_aws(url)).decisions[0]
    assert decision.outcome == "applied", decision.error
    added = decision.api_calls[0]["params"]["InstanceGroups"]
    assert [g["Name"] for g in added] == ["task-spot-r4.xlarge"]
    assert len(emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]) == 5


def test_containers_reserving_more_than_the_new_size_are_not_resized(home, ecs, ecs_url) -> None:
    cluster = ecs.create_cluster(clusterName=_name("shop"), tags=[{"key": "env", "value": "dev"}])["cluster"]
    family = _name("api")
    ecs.register_task_definition(
        family=family,
        cpu="512",
        memory="1024",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        containerDefinitions=[{"name": "api", "image": "nginx", "cpu": 512, "memory": 768}],
    )
    arn = ecs.create_service(
        cluster=cluster["clusterArn"], serviceName=family, taskDefinition=family, desiredCount=4, launchType="FARGATE"
    )["service"]["serviceArn"]
    home.write_plan([service_row(cluster["clusterArn"], arn, family, "resize_tasks", cpu=256, memory=512)])
    home.approve_all()
    decision = home.run(executor_aws(ecs_url)).decisions[0]
    assert decision.outcome == "skipped" and "reserve 512 CPU units / 768 MiB" in decision.reason
    assert ecs.list_task_definitions(familyPrefix=family)["taskDefinitionArns"] == [
        ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]["taskDefinitionArn"]
    ]


FLEET_GROUPS = [
    {"role": "MASTER", "instance_type": "m5.xlarge", "count": 1, "market": "ON_DEMAND"},
    {"role": "CORE", "instance_type": "r5.xlarge", "count": 3, "market": "ON_DEMAND"},
    {"role": "TASK", "instance_type": "r5.xlarge", "count": 2, "market": "ON_DEMAND"},
    {"role": "TASK", "instance_type": "r5.xlarge", "count": 2, "market": "SPOT"},
]


def fleet_cluster(emr: Any, api: AwsApi) -> tuple[str, str]:
    """A cluster of instance fleets (primary 1, core 3 on-demand, task 2 on-demand + 2 Spot units): moto runs
    the job flow, the proxy answers its fleets."""
    cid = emr.run_job_flow(
        Name=_name("fleet"),
        ReleaseLabel="emr-6.10.0",
        Instances={
            "InstanceFleets": [
                {
                    "InstanceFleetType": role,
                    "TargetOnDemandCapacity": n,
                    "InstanceTypeConfigs": [{"InstanceType": t}],
                }
                for role, t, n in (("MASTER", "m5.xlarge", 1), ("CORE", "r5.xlarge", 3), ("TASK", "r5.xlarge", 2))
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        Tags=[{"Key": "env", "Value": "dev"}],
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    spec = {"r5.xlarge": [{"InstanceType": "r5.xlarge", "WeightedCapacity": 1}]}
    api.add_fleets(
        cid,
        [
            {
                "Id": f"if-{role.lower()}-{cid}",
                "InstanceFleetType": role,
                "TargetOnDemandCapacity": od,
                "TargetSpotCapacity": spot,
                "InstanceTypeSpecifications": spec.get(t, [{"InstanceType": t, "WeightedCapacity": 1}]),
            }
            for role, t, od, spot in (
                ("MASTER", "m5.xlarge", 1, 0),
                ("CORE", "r5.xlarge", 3, 0),
                ("TASK", "r5.xlarge", 2, 2),
            )
        ],
    )
    return cid, emr.describe_cluster(ClusterId=cid)["Cluster"]["ClusterArn"]


def fleet_row(cid: str, arn: str, targets: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """An ``emr_resize`` row for a cluster of fleets, as the optimiser writes it: ModifyInstanceFleet per fleet."""
    current = {"cluster_id": cid, "instance_groups": FLEET_GROUPS, "auto_termination_idle_timeout": None}
    calls = [
        {
            "service": "emr",
            "operation": "ModifyInstanceFleet",
            "parameters": {
                "ClusterId": cid,
                "InstanceFleet": {
                    "InstanceFleetId": f"if-{role}-{cid}",
                    "TargetOnDemandCapacity": od,
                    "TargetSpotCapacity": spot,
                },
            },
        }
        for role, (od, spot) in targets.items()
    ]
    return plan_row(
        arn,
        "emr_resize",
        {**current, "api_calls": calls},
        resource_kind="emr_cluster",
        deployment_type="emr",
        option_name="resize",
        current_config=json.dumps(current),
    )


def fleet_targets(api: AwsApi, cid: str) -> dict[str, tuple[int, int]]:
    return {f["InstanceFleetType"]: (f["TargetOnDemandCapacity"], f["TargetSpotCapacity"]) for f in api.fleets[cid]}


def test_instance_fleets_resized_by_target_capacity_and_rolled_back(home, emr, emr_api) -> None:
    api, url = emr_api
    cid, arn = fleet_cluster(emr, api)
    assert client(url, "emr").describe_cluster(ClusterId=cid)["Cluster"]["InstanceCollectionType"] == "INSTANCE_FLEET"
    home.write_plan([fleet_row(cid, arn, {"core": (3, 0), "task": (0, 2)})])
    home.approve_all()
    aws = executor_aws(url)

    dry = home.run(aws, mode="dry_run").decisions[0]
    assert dry.outcome == "would_apply", dry.error
    assert [c["api"] for c in dry.api_calls] == ["elasticmapreduce:ModifyInstanceFleet"]  # core is there already
    assert dry.api_calls[0]["params"]["InstanceFleet"] == {
        "InstanceFleetId": f"if-task-{cid}",
        "TargetOnDemandCapacity": 0,
        "TargetSpotCapacity": 2,
    }
    assert fleet_targets(api, cid)["TASK"] == (2, 2)

    applied = home.run(aws).decisions[0]
    assert applied.outcome == "applied", applied.error
    assert fleet_targets(api, cid) == {"MASTER": (1, 0), "CORE": (3, 0), "TASK": (0, 2)}
    assert applied.state_after["fleet_targets"][f"if-task-{cid}"] == [0, 2]
    again = home.run(aws).decisions[0]
    assert again.outcome == "skipped" and again.reason.startswith("already applied")

    planned = rollback(home.lake, home.paths, applied.action_id, "dry_run", "carol", aws)
    assert [c["params"]["InstanceFleet"]["TargetOnDemandCapacity"] for c in planned.api_calls] == [2]
    undone = rollback(home.lake, home.paths, applied.action_id, "apply", "carol", aws)
    assert undone.outcome == "rolled_back", undone.error
    assert fleet_targets(api, cid)["TASK"] == (2, 2)


def test_fleet_rows_that_do_not_fit_the_live_fleets_are_not_applied(home, emr, emr_api) -> None:
    api, url = emr_api
    cid, arn = fleet_cluster(emr, api)
    groups_row = emr_row(cid, arn, "emr_resize", "resize", {"instance_groups": GROUPS[:2]}, [])
    primary = fleet_row(cid, arn, {"master": (2, 0)})
    by_row = []
    for row in (groups_row, primary):
        home.write_plan([row])
        home.approve_all()
        by_row.append(home.run(executor_aws(url)).decisions[0])
    assert [d.outcome for d in by_row] == ["skipped", "skipped"]
    assert "changed since the plan" in by_row[0].reason or "no ModifyInstanceFleet" in by_row[0].reason
    assert "not a live core or task fleet" in by_row[1].reason
    assert fleet_targets(api, cid)["MASTER"] == (1, 0)

    # Fleets resized by someone else since the plan: left alone.
    api.fleets[cid][2].update(TargetOnDemandCapacity=1, ProvisionedOnDemandCapacity=1)
    home.write_plan([fleet_row(cid, arn, {"task": (0, 2)})])
    home.approve_all()
    drifted = home.run(executor_aws(url)).decisions[0]
    assert drifted.outcome == "skipped" and "instance_groups were" in drifted.reason
    assert fleet_targets(api, cid)["TASK"] == (1, 2)


@pytest.mark.parametrize("action", ["ecs_update_service", "emr_resize", "emr_managed_scaling", "emr_auto_termination"])
def test_cluster_actions_can_never_be_allowed_in_production(action: str) -> None:
    with pytest.raises(PolicyError, match=f"may not include \\[.{action}.\\]"):
        ExecutorPolicy(production_allowed_actions=("delete_volume", action))
