"""The server lost mid-apply: a consistent audit of what was done and not, and a re-run that finishes the job
without applying anything twice (read back from the server)."""

from __future__ import annotations

from cloudopt_pipelines.executor import write_actions_partition
from tests.executor.conftest import DAY, MANAGEMENT_ACCOUNT, FaultProxy, dev_instance, executor_aws, instance, plan_row


def test_server_lost_mid_apply_then_rerun_completes_without_doing_anything_twice(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    address = ec2.allocate_address(Domain="vpc")["AllocationId"]
    home.write_plan(
        [
            plan_row(iid, "stop", {"state": "stopped"}, monthly_savings_usd=30.0),
            plan_row(volume, "delete_volume", {"action": "delete_volume"}, monthly_savings_usd=20.0),
            plan_row(address, "release_address", {"action": "release_address"}, monthly_savings_usd=10.0),
        ]
    )
    home.approve_all()
    proxy = FaultProxy(moto_url, down_on="DeleteVolume")  # the server "stops" as the volume is deleted
    with proxy.serve() as url:
        first = home.run(executor_aws(url)).decisions
    outcomes = {d.resource_id: d for d in first}
    assert outcomes[iid].outcome == "applied"
    failed = outcomes[volume]
    assert failed.outcome == "failed" and "AWS call ec2:DeleteVolume failed" in failed.error and url in failed.error
    assert MANAGEMENT_ACCOUNT in failed.error and "us-east-1" in failed.error and "Fix:" in failed.error
    assert [(c["api"], c["status"].split(":")[0]) for c in failed.api_calls] == [
        ("ec2:CreateSnapshot", "ok"),
        ("ec2:DeleteVolume", "error"),
    ]
    assert outcomes[address].outcome == "skipped" and outcomes[address].reason.startswith("not attempted")
    # The server holds exactly what the audit says was done.
    assert instance(ec2, iid)["State"]["Name"] == "stopped"
    assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"
    assert address in {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
    snapshots = ec2.describe_snapshots(Filters=[{"Name": "tag:cloudopt:source-volume", "Values": [volume]}])
    assert len(snapshots["Snapshots"]) == 1

    second = {d.resource_id: d for d in home.run(executor_aws(moto_url)).decisions}
    assert second[iid].outcome == "skipped" and "already applied" in second[iid].reason
    assert second[volume].outcome == "applied"
    assert [c["api"] for c in second[volume].api_calls] == ["ec2:DeleteVolume"]  # the snapshot is not made twice
    assert second[address].outcome == "applied"
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume]}])["Volumes"]
    assert address not in {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
    snapshots = ec2.describe_snapshots(Filters=[{"Name": "tag:cloudopt:source-volume", "Values": [volume]}])
    assert len(snapshots["Snapshots"]) == 1
    table = home.lake.read("executed_actions", day=DAY).to_pylist()
    assert [r["outcome"] for r in table] == ["applied", "failed", "skipped", "skipped", "applied", "applied"]


def test_resize_cut_off_before_the_start_is_finished_by_the_rerun(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize", {"instance_type": "m5.large"})])
    home.approve_all()
    with FaultProxy(moto_url, down_on="StartInstances").serve() as url:
        decision = home.run(executor_aws(url)).decisions[0]
    # Unreachable: no automatic rollback is attempted against a dead endpoint; the audit says what is left.
    assert decision.outcome == "failed"
    assert [c["status"].split(":")[0] for c in decision.api_calls] == ["ok", "ok", "error"]
    live = instance(ec2, iid)
    assert (live["InstanceType"], live["State"]["Name"]) == ("m5.large", "stopped")

    again = home.run(executor_aws(moto_url)).decisions[0]
    assert again.outcome == "applied" and "interrupted resize" in again.reason
    assert [c["api"] for c in again.api_calls] == ["ec2:StartInstances"]
    assert again.state_before == {"instance_type": "m5.xlarge", "state": "running"}
    live = instance(ec2, iid)
    assert (live["InstanceType"], live["State"]["Name"]) == ("m5.large", "running")


def test_an_intent_without_outcome_shows_as_interrupted(home) -> None:
    home.paths.audit().intent(
        {
            "date": DAY.isoformat(),
            "plan_id": "plan-1",
            "action_id": "act-000000000001",
            "run_id": "run-killed",
            "account_id": "123456789012",
            "region": "us-east-1",
            "resource_id": "i-0abc",
            "action": "stop",
            "mode": "apply",
            "state_before": {"state": "running"},
            "api_calls": [{"api": "ec2:StopInstances", "params": {"InstanceIds": ["i-0abc"]}, "status": "planned"}],
        }
    )
    write_actions_partition(home.lake, home.paths.audit(), DAY)
    (row,) = home.lake.read("executed_actions", day=DAY).to_pylist()
    assert row["outcome"] == "interrupted" and "live state decides" in row["reason"]
