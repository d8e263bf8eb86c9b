"""Issue 17 defect 2: an action whose resource changed since the plan is left as it is (read back from moto)."""

from __future__ import annotations

import json

from tests.executor.conftest import dev_instance, executor_aws, instance, plan_row


def resize_by_hand(ec2, iid: str, instance_type: str) -> None:
    ec2.stop_instances(InstanceIds=[iid])
    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": instance_type})
    ec2.start_instances(InstanceIds=[iid])


def test_an_instance_upsized_by_hand_after_approval_is_left_as_it_is(home, ec2, moto_url) -> None:
    resized, stopped = dev_instance(ec2), dev_instance(ec2)
    home.write_plan(
        [
            plan_row(resized, "resize", {"instance_type": "m5.large", "market": "on_demand"}),
            plan_row(stopped, "stop", {"state": "stopped"}),
        ]
    )
    home.approve_all()
    resize_by_hand(ec2, resized, "m5.4xlarge")  # the plan was made for m5.xlarge
    resize_by_hand(ec2, stopped, "m5.2xlarge")
    aws = executor_aws(moto_url)
    for mode in ("dry_run", "apply"):
        decisions = {d.resource_id: d for d in home.run(aws, mode=mode).decisions}
        for iid, now in ((resized, "m5.4xlarge"), (stopped, "m5.2xlarge")):
            assert decisions[iid].outcome == "skipped", decisions[iid].reason
            assert "changed since the plan" in decisions[iid].reason and "left as it is" in decisions[iid].reason
            assert f"instance_type was m5.xlarge in the plan, is {now} now" in decisions[iid].reason
            assert decisions[iid].api_calls == []
    live = instance(ec2, resized)
    assert (live["InstanceType"], live["State"]["Name"]) == ("m5.4xlarge", "running")
    assert instance(ec2, stopped)["State"]["Name"] == "running"


def test_a_volume_grown_since_the_plan_is_not_deleted(home, ec2, moto_url) -> None:
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    current = json.dumps({"config": "gp3 10 GiB, unattached"})  # as the standalone recommender writes it
    home.write_plan([plan_row(volume, "delete_volume", {"action": "delete_volume"}, current_config=current)])
    home.approve_all()
    ec2.modify_volume(VolumeId=volume, Size=50)
    decision = home.run(executor_aws(moto_url)).decisions[0]
    assert decision.outcome == "skipped" and "size_gib was 10 in the plan, is 50 now" in decision.reason
    assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"


def test_an_unchanged_resource_and_an_interrupted_resize_still_run(home, ec2, moto_url) -> None:
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    iid = dev_instance(ec2)
    current = json.dumps({"config": "gp3 10 GiB, unattached"})
    home.write_plan(
        [
            plan_row(volume, "delete_volume", {"action": "delete_volume"}, current_config=current),
            plan_row(iid, "resize", {"instance_type": "m5.large", "market": "on_demand"}),
        ]
    )
    home.approve_all()
    assert {d.outcome for d in home.run(executor_aws(moto_url)).decisions} == {"applied"}
    assert instance(ec2, iid)["InstanceType"] == "m5.large"
