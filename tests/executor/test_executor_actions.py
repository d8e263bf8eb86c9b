"""Each action plug-in on a moto server: apply, verify on the server, roll back from the recorded state."""

from __future__ import annotations

import csv
import json

import pytest

from cloudopt_pipelines.executor import RollbackError, rollback
from cloudopt_pipelines.executor.actions import RollbackRefused
from tests.executor.conftest import DAY, FaultProxy, dev_instance, executor_aws, instance, plan_row, tags

RESIZE = {"instance_type": "m5.large", "market": "on_demand"}
SCHEDULE = {
    "instance_type": "m5.xlarge",
    "custodian_offhours": "off=(M-F,19);on=(M-F,7);tz=et",
    "instance_scheduler_period": {
        "name": "office-hours-07-19",
        "begintime": "07:00",
        "endtime": "19:00",
        "weekdays": "mon-fri",
        "timezone": "America/New_York",
    },
}


def test_resize_whose_instance_fails_to_start_is_rolled_back(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize", RESIZE)])
    home.approve_all()
    proxy = FaultProxy(moto_url, fail_once={"StartInstances": ("InsufficientInstanceCapacity", "No m5.large here")})
    with proxy.serve() as url:
        decision = home.run(executor_aws(url)).decisions[0]
    assert decision.outcome == "rolled_back"
    assert "InsufficientInstanceCapacity" in decision.error and "ec2:StartInstances" in decision.error
    assert decision.state_after == {"instance_type": "m5.xlarge", "state": "running"}
    assert [c["api"] for c in decision.api_calls] == [
        "ec2:StopInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:StartInstances",  # failed once ...
        "ec2:ModifyInstanceAttribute",  # ... so back to the type before
        "ec2:StartInstances",
    ]
    assert decision.api_calls[2]["status"].startswith("error")
    live = instance(ec2, iid)
    assert (live["InstanceType"], live["State"]["Name"]) == ("m5.xlarge", "running")


def test_resize_and_its_rollback(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize", RESIZE)])
    home.approve_all()
    aws = executor_aws(moto_url)
    decision = home.run(aws).decisions[0]
    assert instance(ec2, iid)["InstanceType"] == "m5.large"
    dry = rollback(home.lake, home.paths, decision.action_id, "dry_run", "carol", aws)
    assert dry.outcome == "would_apply" and instance(ec2, iid)["InstanceType"] == "m5.large"
    undone = rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert undone.outcome == "rolled_back" and undone.approved_by == "carol"
    live = instance(ec2, iid)
    assert (live["InstanceType"], live["State"]["Name"]) == ("m5.xlarge", "running")
    with pytest.raises(RollbackError, match="already rolled back"):
        rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    table = home.lake.read("executed_actions", day=DAY).to_pylist()
    assert [r["outcome"] for r in table] == ["applied", "would_apply", "rolled_back"]


@pytest.mark.parametrize("method", ["custodian_tag", "instance_scheduler_tag"])
def test_schedule_tags_and_rollback_removes_the_tag(home, ec2, moto_url, method: str) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "schedule", SCHEDULE)])
    home.approve_all()
    aws = executor_aws(moto_url)
    decision = home.run(aws, schedule_method=method).decisions[0]
    assert decision.outcome == "applied"
    key, value = (
        ("maid_offhours", "off=(M-F,19);on=(M-F,7);tz=et")
        if method == "custodian_tag"
        else ("Schedule", "cloudopt-office-hours-07-19")
    )
    assert tags(instance(ec2, iid))[key] == value
    assert instance(ec2, iid)["State"]["Name"] == "running"
    rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert key not in tags(instance(ec2, iid))


def test_schedule_stop_start_sets_the_state_the_period_wants_now(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize+schedule", {**SCHEDULE, "instance_type": "m5.large"})])
    home.approve_all()
    aws = executor_aws(moto_url)
    # NOW is Friday 12:00 UTC = 07:00 in New York: inside the running period.
    decision = home.run(aws, schedule_method="stop_start").decisions[0]
    assert decision.outcome == "applied", decision.reason
    live = instance(ec2, iid)
    assert (live["InstanceType"], live["State"]["Name"]) == ("m5.large", "running")


def test_resize_and_schedule_with_the_custodian_tag(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize+schedule", {**SCHEDULE, "instance_type": "m5.large"})])
    home.approve_all()
    aws = executor_aws(moto_url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied", decision.reason
    live = instance(ec2, iid)
    assert live["InstanceType"] == "m5.large" and tags(live)["maid_offhours"].startswith("off=")
    rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    live = instance(ec2, iid)
    assert live["InstanceType"] == "m5.xlarge" and "maid_offhours" not in tags(live)


def test_stop_and_restart(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    aws = executor_aws(moto_url)
    decision = home.run(aws).decisions[0]
    assert instance(ec2, iid)["State"]["Name"] == "stopped"
    rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    assert instance(ec2, iid)["State"]["Name"] == "running"


def test_terminate_only_with_explicit_approval_after_snapshots(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    actions = home.write_plan([plan_row(iid, "terminate", {"state": "terminated", "snapshot_first": True})])
    home.approve_all()  # --all: not enough for terminate
    aws = executor_aws(moto_url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "skipped" and "--all does not cover it" in decision.reason
    assert instance(ec2, iid)["State"]["Name"] == "running"

    home.approve_all(ids=(actions[0].action_id,), by="dana")
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied" and decision.approved_by == "dana"
    assert instance(ec2, iid)["State"]["Name"] == "terminated"
    snapshots = decision.state_after["snapshots"]
    assert len(snapshots) == 1
    found = ec2.describe_snapshots(SnapshotIds=list(snapshots.values()))["Snapshots"]
    assert found[0]["State"] == "completed"
    with pytest.raises(RollbackRefused, match="cannot come back"):
        rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)


def test_delete_volume_snapshots_first_and_rollback_restores_it(home, ec2, moto_url) -> None:
    volume = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=20,
        VolumeType="gp3",
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "team", "Value": "data"}]}],
    )["VolumeId"]
    home.write_plan([plan_row(volume, "delete_volume", {"action": "delete_volume"})])
    home.approve_all()
    aws = executor_aws(moto_url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied"
    assert [c["api"] for c in decision.api_calls] == ["ec2:CreateSnapshot", "ec2:DeleteVolume"]
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume]}])["Volumes"]
    snapshot_id = decision.state_after["snapshot_id"]
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["VolumeId"] == volume

    undone = rollback(home.lake, home.paths, decision.action_id, "apply", "carol", aws)
    restored = ec2.describe_volumes(VolumeIds=[undone.state_after["volume_id"]])["Volumes"][0]
    assert restored["SnapshotId"] == snapshot_id and restored["Size"] == 20 and restored["VolumeType"] == "gp3"
    assert tags(restored) == {"team": "data", "cloudopt:restored-from": volume}


def test_release_address_and_its_refused_rollback(home, ec2, moto_url) -> None:
    free = ec2.allocate_address(Domain="vpc")
    used = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=used, InstanceId=dev_instance(ec2))  # associated since the plan
    home.write_plan(
        [
            plan_row(free["AllocationId"], "release_address", {"action": "release_address"}),
            plan_row(used, "release_address", {"action": "release_address"}),
        ]
    )
    home.approve_all()
    aws = executor_aws(moto_url)
    decisions = {d.resource_id: d for d in home.run(aws).decisions}
    assert decisions[free["AllocationId"]].outcome == "applied"
    assert decisions[used].outcome == "skipped" and "associated with" in decisions[used].reason
    remaining = {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
    assert free["AllocationId"] not in remaining and used in remaining
    with pytest.raises(RollbackRefused, match="cannot be re-acquired") as refused:
        rollback(home.lake, home.paths, decisions[free["AllocationId"]].action_id, "dry_run", "carol", aws)
    assert free["PublicIp"] in str(refused.value)
    audit = home.paths.audit().history(decisions[free["AllocationId"]].action_id)
    assert audit[-1]["outcome"] == "skipped" and "rollback refused" in audit[-1]["reason"]


def test_commitments_are_exported_never_bought(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    commitment = {
        "instance_type": "m5.large",
        "commitment": "standard_ri",
        "term_years": 1,
        "payment_option": "no_upfront",
    }
    home.write_plan(
        [
            plan_row(iid, "reserve", commitment, option_name="ri_1y_no_upfront:m5.large", market="reserved"),
            plan_row(iid, "savings_plan", {**commitment, "commitment": "compute_savings_plan"}, option_name="csp"),
        ]
    )
    proxy = FaultProxy(moto_url)
    with proxy.serve() as url:
        decisions = home.run(executor_aws(url)).decisions  # not even approved: exporting buys nothing
    assert {d.outcome for d in decisions} == {"exported"}
    assert proxy.actions == []  # no AWS call at all
    exported = home.paths.exports_dir / f"purchases-{DAY}.csv"
    rows = list(csv.DictReader(exported.open()))
    assert sorted(r["commitment"] for r in rows) == ["compute_savings_plan", "standard_ri"]
    assert rows[0]["instance_type"] == "m5.large" and rows[0]["account_id"] == "123456789012"
    as_json = json.loads(exported.with_suffix(".json").read_text())
    assert len(as_json["purchases"]) == 2
    assert str(exported) in decisions[0].reason
