"""Inventory, accounts and credentials of the AWS collector, against a real moto server over HTTP."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from conftest import EXTERNAL_ID, FIRST_DAY, MANAGEMENT_ACCOUNT, ROLE_NAME, SECRET_KEY, AwsWorld, client, run_instance

from cloudopt_pipelines.optimizers.sizing import Catalog
from cloudopt_pipelines.optimizers.standalone import recommend_account, recommendations_summary
from cloudopt_pipelines.optimizers.standalone_actions import ebs_monthly_usd
from cloudopt_pipelines.resources.aws import AwsResource
from cloudopt_pipelines.sources.aws import CONFIGURED, UNREACHABLE, CollectorError
from cloudopt_pipelines.sources.base import Collected
from cloudopt_pipelines.storage.schemas import RESOURCE_KINDS, RESOURCES, UTILIZATION_5M


def rows_of(collected: Collected, kind: str | None = None) -> list[dict]:
    rows = collected.table.to_pylist()
    return [r for r in rows if kind is None or r["resource_kind"] == kind]


def by_id(collected: Collected, kind: str) -> dict[str, dict]:
    return {r["resource_id"]: r for r in rows_of(collected, kind)}


def test_inventory_has_the_schema_and_every_seeded_resource(inventory: Collected, world: AwsWorld) -> None:
    assert inventory.table.schema == RESOURCES
    assert {r["source"] for r in rows_of(inventory)} == {"aws"}
    assert {r["account_id"] for r in rows_of(inventory)} == {MANAGEMENT_ACCOUNT}
    assert {r["date"] for r in rows_of(inventory)} == {FIRST_DAY}
    assert {r["resource_kind"] for r in rows_of(inventory)} <= set(RESOURCE_KINDS)

    instances = by_id(inventory, "ec2_instance")
    expected = {
        *world.standalone,
        *world.asg_instances,
        world.ecs_instance,
        *world.emr_instances,
        *world.eks_instances,
    }
    assert set(instances) == expected
    counts = inventory.metadata["rows_by_kind"]
    assert counts["asg"] == counts["ecs_cluster"] == counts["ecs_service"] == 1
    assert counts["emr_cluster"] == counts["eks_cluster"] == counts["eks_nodegroup"] == 1
    # One root volume per instance plus the unattached one; only the unassociated address.
    assert counts["ebs_volume"] == len(expected) + 1
    assert set(by_id(inventory, "elastic_ip")) == {world.unassociated_eip}


@pytest.mark.parametrize(
    ("group", "deployment_type"),
    [
        ("standalone", "standalone"),
        ("asg_instances", "asg"),
        ("emr_instances", "emr"),
        ("eks_instances", "kubernetes"),
    ],
)
def test_every_instance_gets_its_deployment_type(
    inventory: Collected, world: AwsWorld, group: str, deployment_type: str
) -> None:
    instances = by_id(inventory, "ec2_instance")
    ids = getattr(world, group)
    assert ids
    assert {instances[i]["deployment_type"] for i in ids} == {deployment_type}


def test_cluster_members_are_never_standalone(inventory: Collected, world: AwsWorld) -> None:
    instances = by_id(inventory, "ec2_instance")
    # The ECS container instance has no tag at all: membership comes from ListContainerInstances.
    ecs = instances[world.ecs_instance]
    assert ecs["deployment_type"] == "ecs"
    assert ecs["parent_id"].endswith(":cluster/apps")
    assert json.loads(ecs["attributes"])["ecs_container_instance_arn"]
    # moto's own EMR instances are untagged: membership comes from elasticmapreduce:ListInstances.
    emr_cluster = next(iter(by_id(inventory, "emr_cluster").values()))
    assert {instances[i]["parent_id"] for i in world.emr_instances} == {emr_cluster["resource_id"]}
    standalone = {i for i, r in instances.items() if r["deployment_type"] == "standalone"}
    assert standalone == set(world.standalone)


def test_instance_fields(inventory: Collected, world: AwsWorld) -> None:
    instances = by_id(inventory, "ec2_instance")
    first = instances[world.standalone[0]]
    assert first["name"] == "web-prod-1"
    assert (first["env"], first["team"], first["service"]) == ("prod", "web", "shop")
    assert json.loads(first["tags"])["cloudopt:protect"] == "true"
    assert first["instance_type"] == "m5.xlarge"
    assert first["state"] == "running"
    assert first["architecture"] == "x86_64"
    assert first["platform"] == "Linux/UNIX"
    assert first["zone"].startswith("us-east-1")
    assert first["launch_time"] is not None
    db = instances[world.standalone[2]]
    # Alternative tag keys: Environment / Team / app.
    assert (db["env"], db["team"], db["service"]) == ("prod", "data", "orders")
    assert {i for i, r in instances.items() if "cloudopt:protect" in json.loads(r["tags"])} == set(world.protected)
    assert instances[world.spot]["lifecycle"] == "spot"
    assert {r["lifecycle"] for i, r in instances.items() if i != world.spot} == {"on-demand"}
    asg = next(iter(by_id(inventory, "asg").values()))
    assert {instances[i]["parent_id"] for i in world.asg_instances} == {asg["resource_id"]}
    assert json.loads(instances[world.asg_instances[0]]["attributes"])["auto_scaling_group"] == "web-asg"


def test_group_and_cluster_fields(inventory: Collected, world: AwsWorld) -> None:
    asg = json.loads(next(iter(by_id(inventory, "asg").values()))["attributes"])
    assert (asg["min_size"], asg["desired_capacity"], asg["max_size"]) == (1, 2, 4)
    overrides = asg["mixed_instances_policy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["c5.large", "c6i.large"]

    service = next(iter(by_id(inventory, "ecs_service").values()))
    attributes = json.loads(service["attributes"])
    assert (attributes["desired_count"], attributes["launch_type"]) == (2, "EC2")
    assert "running_count" in attributes and "capacity_provider_strategy" in attributes
    assert service["parent_id"] == next(iter(by_id(inventory, "ecs_cluster")))

    emr = next(iter(by_id(inventory, "emr_cluster").values()))
    assert emr["state"] == "WAITING"
    emr_attributes = json.loads(emr["attributes"])
    assert emr_attributes["idle"] is True
    groups = {g["role"]: g for g in emr_attributes["instance_groups"]}
    assert (groups["CORE"]["market"], groups["CORE"]["requested"], groups["CORE"]["instance_type"]) == (
        "SPOT",
        2,
        "r5.xlarge",
    )
    assert groups["MASTER"]["market"] == "ON_DEMAND"

    nodegroup = next(iter(by_id(inventory, "eks_nodegroup").values()))
    ng = json.loads(nodegroup["attributes"])
    assert (ng["min_size"], ng["desired_size"], ng["max_size"]) == (1, 2, 3)
    assert nodegroup["lifecycle"] == "spot"
    assert nodegroup["instance_type"] == "m5.large"
    assert nodegroup["parent_id"] == next(iter(by_id(inventory, "eks_cluster")))


def test_volumes_and_addresses(inventory: Collected, world: AwsWorld) -> None:
    volumes = by_id(inventory, "ebs_volume")
    free = volumes[world.unattached_volume]
    attributes = json.loads(free["attributes"])
    assert attributes["attached_to"] is None and attributes["attached_instances"] == [] and free["parent_id"] is None
    assert (attributes["volume_type"], attributes["size_gib"], attributes["iops"]) == ("gp3", 100, 3000)
    attached = [v for v in volumes.values() if json.loads(v["attributes"])["attached_to"]]
    assert attached and all(v["parent_id"] == json.loads(v["attributes"])["attached_to"] for v in attached)
    eip = by_id(inventory, "elastic_ip")[world.unassociated_eip]
    assert json.loads(eip["attributes"])["public_ip"]


def test_every_paginated_api_is_followed_to_the_end(inventory: Collected, world: AwsWorld) -> None:
    # page_size=5 in the test settings: 11 reservations need 3 pages of DescribeInstances. (moto ignores
    # MaxResults on DescribeVolumes, so that one is a single page there.)
    calls = inventory.metadata["api_calls"]
    assert calls["ec2:DescribeInstances"] == 3
    assert len(by_id(inventory, "ec2_instance")) == inventory.metadata["rows_by_kind"]["ec2_instance"]


def test_empty_region_gives_empty_tables_with_the_schema(make_collector, world: AwsWorld) -> None:
    # The member account's eu-west-1 (moto's EMR ignores the region when an endpoint_url is set, so the
    # management account's EMR cluster would show up in each of its regions).
    collector = make_collector(regions=("eu-west-1",))
    inventory = collector.collect_inventory(world.member_account, FIRST_DAY)
    metrics = collector.collect_metrics(world.member_account, FIRST_DAY)
    clusters = collector.collect_cluster_metrics(world.member_account, FIRST_DAY)
    assert inventory.table.num_rows == metrics.table.num_rows == clusters.table.num_rows == 0
    assert inventory.table.schema == RESOURCES
    assert metrics.table.schema == UTILIZATION_5M
    assert metrics.metadata["metric_series"] == metrics.metadata["get_metric_data_calls"] == 0


def test_accounts_are_discovered_with_organizations(collector, world: AwsWorld) -> None:
    statuses = collector.list_account_statuses()
    assert statuses[MANAGEMENT_ACCOUNT] == "ACTIVE"
    assert statuses[world.member_account] == "ACTIVE"
    assert statuses[world.suspended_account] == "SUSPENDED"
    assert collector.list_accounts() == sorted([MANAGEMENT_ACCOUNT, world.member_account])


def test_configured_accounts_are_checked_and_an_unreachable_one_is_marked(make_collector, world: AwsWorld) -> None:
    collector = make_collector(accounts=(world.member_account, MANAGEMENT_ACCOUNT))
    statuses = collector.list_account_statuses()  # the member through its role, the base account as it is
    assert statuses == {world.member_account: CONFIGURED, MANAGEMENT_ACCOUNT: CONFIGURED}
    assert collector.list_accounts() == sorted([world.member_account, MANAGEMENT_ACCOUNT])
    # No role to reach the member (as for a mistyped id): marked, not listed, never run.
    without_role = make_collector(accounts=(world.member_account, MANAGEMENT_ACCOUNT), assume_role=None)
    assert without_role.list_account_statuses() == {world.member_account: UNREACHABLE, MANAGEMENT_ACCOUNT: CONFIGURED}
    assert without_role.list_accounts() == [MANAGEMENT_ACCOUNT]


def test_a_dead_endpoint_is_the_sources_error_not_an_unreachable_account(make_collector, world: AwsWorld) -> None:
    collector = make_collector(accounts=(world.member_account,), endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(CollectorError, match=r"127\.0\.0\.1:9"):
        collector.list_account_statuses()


def test_second_account_is_reached_by_assuming_the_role(make_collector, world: AwsWorld) -> None:
    collector = make_collector(regions=("us-east-1", "us-west-2"), region_concurrency=2)
    member = collector.collect_inventory(world.member_account, FIRST_DAY)
    assert member.metadata["api_calls"]["sts:AssumeRole"] == 1
    assert set(by_id(member, "ec2_instance")) == set(world.member_instances)
    assert {r["account_id"] for r in rows_of(member)} == {world.member_account}
    assert {r["env"] for r in rows_of(member, "ec2_instance")} == {"staging"}
    # The management account's resources are not the member's, and the other way round.
    management = collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY)
    assert "sts:AssumeRole" not in management.metadata["api_calls"]
    assert not set(world.member_instances) & set(by_id(management, "ec2_instance"))
    assert set(world.bulk_instances) <= set(by_id(management, "ec2_instance"))
    assert {r["region"] for r in rows_of(management)} == {"us-east-1", "us-west-2"}


def test_assumed_credentials_are_cached_and_refreshed_when_expired(make_collector, world: AwsWorld) -> None:
    jumps: list[timedelta] = []

    def clock() -> datetime:
        # Real time, except two hours on between a jump and the next sts:AssumeRole: the cached
        # credentials then look expired, and the ones fetched to replace them are current.
        return datetime.now(UTC) + sum(jumps, timedelta(0))

    collector = make_collector(clock=clock)
    collector.base_session.events.register("after-call.sts.AssumeRole", lambda **_: jumps.clear())
    first = collector.collect_inventory(world.member_account, FIRST_DAY)
    second = collector.collect_inventory(world.member_account, FIRST_DAY)
    assert first.metadata["api_calls"]["sts:AssumeRole"] == 1
    assert "sts:AssumeRole" not in second.metadata["api_calls"]
    jumps.append(timedelta(hours=2))
    third = collector.collect_inventory(world.member_account, FIRST_DAY)
    assert third.metadata["api_calls"]["sts:AssumeRole"] == 1
    assert set(by_id(third, "ec2_instance")) == set(world.member_instances)
    fourth = collector.collect_inventory(world.member_account, FIRST_DAY)
    assert "sts:AssumeRole" not in fourth.metadata["api_calls"]


def test_credentials_near_expiry_are_refreshed_before_they_expire(make_collector, world: AwsWorld) -> None:
    # A refresh margin longer than the credentials' life: every use is "near expiry" and re-assumes,
    # while the credentials in hand are still valid (no failed call).
    collector = make_collector(role_duration_seconds=900, credential_refresh_margin_seconds=1200)
    collected = collector.collect_inventory(world.member_account, FIRST_DAY)
    assert collected.metadata["api_calls"]["sts:AssumeRole"] > 1
    assert set(by_id(collected, "ec2_instance")) == set(world.member_instances)


def test_no_secret_in_metadata_tables_or_logs(make_collector, world: AwsWorld, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="cloudopt_pipelines")
    collector = make_collector()
    outputs = [
        collector.collect_inventory(world.member_account, FIRST_DAY),
        collector.collect_metrics(world.member_account, FIRST_DAY),
        collector.collect_cluster_metrics(world.member_account, FIRST_DAY),
    ]
    assumed = collector.session_for(world.member_account).get_credentials().get_frozen_credentials()
    secrets = [SECRET_KEY, EXTERNAL_ID, assumed.secret_key, assumed.token, assumed.access_key]
    text = json.dumps([o.metadata for o in outputs], default=str)
    text += json.dumps([o.table.to_pylist() for o in outputs], default=str)
    text += json.dumps(collector.list_account_statuses()) + caplog.text
    for secret in secrets:
        assert secret and secret not in text


def test_assume_role_failure_names_the_account_role_and_fix(make_collector, world: AwsWorld) -> None:
    collector = make_collector(assume_role=None)
    with pytest.raises(CollectorError) as error:
        collector.collect_inventory(world.member_account, FIRST_DAY)
    message = str(error.value)
    assert world.member_account in message and "CLOUDOPT_ASSUME_ROLE" in message


def test_resource_from_env_and_collector(monkeypatch, world: AwsWorld) -> None:
    monkeypatch.setenv("CLOUDOPT_ACCOUNTS", f"{world.member_account}, {MANAGEMENT_ACCOUNT}")
    monkeypatch.setenv("CLOUDOPT_REGIONS", "us-east-1,eu-west-1")
    monkeypatch.setenv("CLOUDOPT_ASSUME_ROLE", ROLE_NAME)
    monkeypatch.setenv("AWS_ENDPOINT_URL", world.endpoint)
    resource = AwsResource.from_env()
    assert resource.accounts == sorted([world.member_account, MANAGEMENT_ACCOUNT])
    assert resource.regions == ["us-east-1", "eu-west-1"]
    assert resource.assume_role == ROLE_NAME
    assert resource.settings().role_arn(world.member_account) == (
        f"arn:aws:iam::{world.member_account}:role/{ROLE_NAME}"
    )
    collector = resource.get_collector()
    assert collector is resource.get_collector()
    # AWS_ENDPOINT_URL is honoured by boto3 itself.
    member = collector.collect_inventory(world.member_account, FIRST_DAY)
    assert set(by_id(member, "ec2_instance")) == set(world.member_instances)


def test_role_arn_templates() -> None:
    resource = AwsResource(assume_role="arn:aws:iam::{account_id}:role/Ops/CloudoptReadOnly")
    assert resource.settings().role_arn("000000000042") == "arn:aws:iam::000000000042:role/Ops/CloudoptReadOnly"
    assert AwsResource(assume_role="Reader").settings().role_arn("111111111111", "aws-cn") == (
        "arn:aws-cn:iam::111111111111:role/Reader"
    )
    assert AwsResource().settings().role_arn("111111111111") is None


def test_in_use_volumes_are_never_recommended_for_deletion(inventory: Collected, world: AwsWorld) -> None:
    """Defect 5: the collector and the recommender read one attributes schema (attached_to)."""
    volumes = by_id(inventory, "ebs_volume")
    in_use = {rid for rid, v in volumes.items() if v["parent_id"]}
    assert len(in_use) >= 2 and any(v["parent_id"] in world.protected for v in volumes.values())
    table = inventory.table
    no_rows = pa.table({"resource_id": pa.array([], pa.string())})  # no feature rows: the orphans need none
    features = {"utilization_window": no_rows, "activity_profile": no_rows}
    result = recommend_account(MANAGEMENT_ACCOUNT, FIRST_DAY, table, features, Catalog([]))
    deletions = {r["resource_id"] for r in result.table.to_pylist() if r["action"] == "delete_volume"}
    assert world.unattached_volume in deletions
    assert not deletions & in_use
    # Savings count the unattached volumes only (plus the unassociated addresses).
    free = [json.loads(v["attributes"]) for rid, v in volumes.items() if rid in deletions]
    addresses = sum(r["action"] == "release_address" and r["is_best"] for r in result.table.to_pylist())
    expected = sum(ebs_monthly_usd(a["size_gib"], a["volume_type"]) for a in free) + addresses * 0.005 * 730
    assert recommendations_summary(result.table)["orphan_monthly_savings_usd"] == pytest.approx(expected, abs=0.01)
    assert result.notes == ()


def test_an_instance_of_a_self_managed_cluster_is_never_standalone(make_collector, world: AwsWorld) -> None:
    region = "ap-southeast-2"  # a region of its own: the shared estate stays as seeded
    ec2 = client(world.endpoint, "ec2", region)
    iid = run_instance(ec2, {"Name": "kafka-1", "cloudopt:cluster": "kafka-prod", "env": "prod"})
    rows = by_id(make_collector(regions=(region,)).collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY), "ec2_instance")
    assert (rows[iid]["deployment_type"], rows[iid]["parent_id"]) == ("custom_cluster", "kafka-prod")
