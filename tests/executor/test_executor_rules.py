"""The safety rules against a real moto server: each test reads the state back from the server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cloudopt_pipelines.executor import ChangeWindow, ExecutorAws, execute_day
from cloudopt_pipelines.executor.policy import ExecutorPolicy
from tests.executor.conftest import (
    DAY,
    NOW,
    FaultProxy,
    dev_instance,
    executor_aws,
    instance,
    plan_row,
    run_instance,
)

RESIZE = {"instance_type": "m5.large", "market": "on_demand"}


def test_dry_run_is_the_default_mode_and_reports_exactly_the_calls(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize", RESIZE)])
    home.approve_all()
    aws = executor_aws(moto_url)
    dry = home.run(aws, mode="dry_run").decisions[0]
    assert dry.mode == "dry_run" and dry.outcome == "would_apply"
    assert [(c["api"], c["params"]) for c in dry.api_calls] == [
        ("ec2:StopInstances", {"InstanceIds": [iid]}),
        ("ec2:ModifyInstanceAttribute", {"InstanceId": iid, "InstanceType": {"Value": "m5.large"}}),
        ("ec2:StartInstances", {"InstanceIds": [iid]}),
    ]
    assert instance(ec2, iid)["InstanceType"] == "m5.xlarge"  # nothing changed on the server
    assert ExecutorPolicy().schedule_method == "custodian_tag"

    applied = home.run(aws, mode="apply").decisions[0]
    assert applied.outcome == "applied"
    # The dry run said exactly what the apply then called.
    assert [(c["api"], c["params"]) for c in applied.api_calls] == [(c["api"], c["params"]) for c in dry.api_calls]
    assert all(c["status"] == "ok" for c in applied.api_calls)
    assert applied.state_before == {"instance_type": "m5.xlarge", "state": "running"}
    live = instance(ec2, iid)
    assert (live["InstanceType"], live["State"]["Name"]) == ("m5.large", "running")


def test_only_approved_actions_of_the_current_plan_run(home, ec2, moto_url) -> None:
    approved_iid, other_iid = dev_instance(ec2), dev_instance(ec2)
    actions = home.write_plan([plan_row(approved_iid, "stop", {"state": "stopped"}), plan_row(other_iid, "stop", {})])
    home.approve_all(ids=tuple(a.action_id for a in actions if a.resource_id == approved_iid))
    by_resource = {d.resource_id: d for d in home.run(executor_aws(moto_url)).decisions}
    assert by_resource[approved_iid].outcome == "applied" and by_resource[approved_iid].approved_by == "alice"
    assert by_resource[other_iid].outcome == "skipped" and "not approved" in by_resource[other_iid].reason
    assert instance(ec2, approved_iid)["State"]["Name"] == "stopped"
    assert instance(ec2, other_iid)["State"]["Name"] == "running"


def test_a_stale_approval_never_executes(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})], plan_id="plan-1")
    home.approve_all()
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})], plan_id="plan-2")  # re-materialised since
    decision = home.run(executor_aws(moto_url)).decisions[0]
    assert decision.outcome == "skipped"
    assert "stale approval" in decision.reason and "plan-1" in decision.reason and "plan-2" in decision.reason
    assert instance(ec2, iid)["State"]["Name"] == "running"


def test_protected_resources_are_never_touched_checked_on_live_tags(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    # The plan says nothing is protected; the tags were added after the plan, on the live resources.
    home.write_plan([plan_row(iid, "resize", RESIZE), plan_row(volume, "delete_volume", {"action": "delete_volume"})])
    ec2.create_tags(Resources=[iid], Tags=[{"Key": "cloudopt:protect", "Value": "true"}])
    ec2.create_tags(Resources=[volume], Tags=[{"Key": "keep-me", "Value": "yes"}])
    home.approve_all()
    decisions = home.run(executor_aws(moto_url), protect_tag_key="cloudopt:protect").decisions
    assert {d.resource_id: d.outcome for d in decisions} == {iid: "skipped", volume: "applied"}
    assert "live tag cloudopt:protect=true" in next(d.reason for d in decisions if d.resource_id == iid)
    assert instance(ec2, iid)["InstanceType"] == "m5.xlarge"

    # A configured protect tag protects too.
    other = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    ec2.create_tags(Resources=[other], Tags=[{"Key": "keep-me", "Value": "yes"}])
    home.write_plan([plan_row(other, "delete_volume", {"action": "delete_volume"})], plan_id="plan-2")
    home.approve_all()
    decision = home.run(executor_aws(moto_url), protect_tag_key="keep-me").decisions[0]
    assert decision.outcome == "skipped" and "keep-me=yes" in decision.reason
    assert ec2.describe_volumes(VolumeIds=[other])["Volumes"][0]["State"] == "available"


def test_production_only_gets_allowed_action_types(home, ec2, moto_url) -> None:
    prod = run_instance(ec2, {"Name": "web", "env": "prod"}, "m5.xlarge")
    untagged = run_instance(ec2, {}, "m5.xlarge")
    prod_volume = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=10,
        VolumeType="gp3",
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "env", "Value": "prod"}]}],
    )["VolumeId"]
    home.write_plan(
        [
            plan_row(prod, "resize", RESIZE, env="dev"),  # the plan is wrong; the live tag decides
            plan_row(untagged, "stop", {"state": "stopped"}),
            plan_row(prod_volume, "delete_volume", {"action": "delete_volume"}),
        ]
    )
    home.approve_all()
    outcomes = {d.resource_id: (d.outcome, d.reason) for d in home.run(executor_aws(moto_url)).decisions}
    assert outcomes[prod][0] == "skipped" and "production (live tag environment=prod)" in outcomes[prod][1]
    assert outcomes[untagged][0] == "skipped" and "untagged counts as production" in outcomes[untagged][1]
    assert outcomes[prod_volume][0] == "applied"
    assert instance(ec2, prod)["InstanceType"] == "m5.xlarge"
    assert instance(ec2, untagged)["State"]["Name"] == "running"


def test_blast_radius_limits_changes_per_run_and_per_account(home, ec2, moto_url) -> None:
    ids = [dev_instance(ec2) for _ in range(3)]
    home.write_plan(
        [plan_row(i, "stop", {"state": "stopped"}, monthly_savings_usd=10.0 + n) for n, i in enumerate(ids)]
    )
    home.approve_all()
    decisions = home.run(executor_aws(moto_url), max_actions_per_run=5, max_actions_per_account=2).decisions
    assert [d.outcome for d in decisions] == ["applied", "applied", "skipped"]  # most savings first
    assert "max_actions_per_account=2" in decisions[2].reason
    states = {i: instance(ec2, i)["State"]["Name"] for i in ids}
    assert states == {ids[2]: "stopped", ids[1]: "stopped", ids[0]: "running"}
    # The next run takes the rest; the ones done are skipped on their live state and do not count.
    decisions = home.run(executor_aws(moto_url), max_actions_per_run=1).decisions
    assert [d.outcome for d in decisions] == ["skipped", "skipped", "applied"]
    assert instance(ec2, ids[0])["State"]["Name"] == "stopped"


def test_change_windows_hold_actions_outside_them(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"})])
    home.approve_all()
    nightly = ChangeWindow(cron="0 22 * * 1-5", duration_minutes=120, timezone="UTC", action_types=("stop",))
    aws = executor_aws(moto_url)
    decision = home.run(aws, change_windows=(nightly,)).decisions[0]  # NOW is Friday noon
    assert decision.outcome == "skipped" and "outside change window" in decision.reason
    assert "2026-11-20T22:00:00+00:00" in decision.reason
    assert instance(ec2, iid)["State"]["Name"] == "running"
    result, _ = execute_day(
        home.lake,
        home.paths,
        DAY,
        "apply",
        aws,
        ExecutorPolicy(change_windows=(nightly,)),
        now=lambda: datetime(2026, 11, 20, 23, 0, tzinfo=UTC),
        checks=home.checks,
    )
    assert result.decisions[0].outcome == "applied"
    assert instance(ec2, iid)["State"]["Name"] == "stopped"


def test_rate_limit_spaces_mutating_calls(home, ec2, moto_url) -> None:
    ids = [dev_instance(ec2) for _ in range(3)]
    home.write_plan([plan_row(i, "stop", {"state": "stopped"}) for i in ids])
    home.approve_all()
    clock = [0.0]  # virtual time: it moves only when the limiter waits, however fast the machine is

    def rate_sleep(seconds: float) -> None:
        clock[0] += seconds

    aws = ExecutorAws(
        executor_aws(moto_url).settings, poll_seconds=0.01, rate_clock=lambda: clock[0], rate_sleep=rate_sleep
    )
    home.run(aws, max_calls_per_second=5.0)
    assert aws.rate_limiter.waited == pytest.approx(0.4)  # 3 calls at 5/s: two gaps of 0.2 s
    assert all(instance(ec2, i)["State"]["Name"] == "stopped" for i in ids)


def test_applying_twice_makes_no_second_mutation_even_without_the_log(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    address = ec2.allocate_address(Domain="vpc")["AllocationId"]
    home.write_plan(
        [
            plan_row(iid, "resize", RESIZE),
            plan_row(volume, "delete_volume", {"action": "delete_volume"}),
            plan_row(address, "release_address", {"action": "release_address"}),
        ]
    )
    home.approve_all()
    assert {d.outcome for d in home.run(executor_aws(moto_url)).decisions} == {"applied"}
    home.paths.audit().path.unlink()  # the live state alone must stop a second mutation
    proxy = FaultProxy(moto_url)
    with proxy.serve() as url:
        decisions = home.run(executor_aws(url)).decisions
    assert {d.outcome for d in decisions} == {"skipped"}
    assert all("already applied" in d.reason for d in decisions), [d.reason for d in decisions]
    assert proxy.mutating() == []
    snapshots = ec2.describe_snapshots(Filters=[{"Name": "tag:cloudopt:source-volume", "Values": [volume]}])
    assert len(snapshots["Snapshots"]) == 1


def test_audit_file_and_table_hold_every_decision(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "stop", {"state": "stopped"}), plan_row("i-0spot0000000000", "spot", RESIZE)])
    home.approve_all()
    aws = executor_aws(moto_url)
    home.run(aws, mode="dry_run")
    home.run(aws, mode="apply")
    records = home.paths.audit().decisions(DAY)
    table = home.lake.read("executed_actions", day=DAY).to_pylist()
    assert [(r["run_id"], r["action_id"], r["outcome"]) for r in records] == [
        (r["run_id"], r["action_id"], r["outcome"]) for r in table
    ]
    assert sorted(r["outcome"] for r in table) == ["applied", "skipped", "skipped", "would_apply"]
    spot = next(r for r in table if r["action"] == "spot")
    assert "no plug-in for action 'spot'" in spot["reason"]
    applied = next(r for r in table if r["outcome"] == "applied")
    assert json.loads(applied["state_before"])["state"] == "running"
    assert json.loads(applied["api_calls"])[0]["api"] == "ec2:StopInstances"
    assert applied["started_at"] == NOW and applied["mode"] == "apply"


def test_a_plan_that_failed_its_constraint_check_is_never_approved_nor_executed(home, ec2, moto_url) -> None:
    import pytest

    from cloudopt_pipelines.executor.model import PlanError
    from cloudopt_pipelines.executor.service import approve

    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize", RESIZE)])
    home.approve_all()
    home.write_check("plan-1", passed=False)  # the plan was tampered with, or the constraints changed
    with pytest.raises(PlanError, match=r"failed its constraint check .*never acts on it"):
        home.run(executor_aws(moto_url), mode="apply")
    with pytest.raises(PlanError, match="failed its constraint check"):
        approve(home.lake, home.paths, DAY, "mallory", all_actions=True, checks=home.checks)
    home.write_check("another-plan", passed=True)
    with pytest.raises(PlanError, match="is for plan another-plan, not plan-1"):
        home.run(executor_aws(moto_url), mode="apply")
    assert instance(ec2, iid)["InstanceType"] == "m5.xlarge"  # read back from the server: untouched


def test_conflicting_environment_tags_count_as_production(home, ec2, moto_url) -> None:
    # env=dev first and Environment=prod second: the production tag wins, whatever the order.
    conflicting = run_instance(ec2, {"Name": "web", "env": "dev", "Environment": "prod"}, "m5.xlarge")
    prefixed = run_instance(ec2, {"Name": "api", "env": "prod-eu"}, "m5.xlarge")
    home.write_plan(
        [
            plan_row(conflicting, "resize", RESIZE, env="dev"),
            plan_row(prefixed, "stop", {"state": "stopped"}, env="dev"),
        ]
    )
    home.approve_all()
    outcomes = {d.resource_id: (d.outcome, d.reason) for d in home.run(executor_aws(moto_url)).decisions}
    assert outcomes[conflicting][0] == "skipped" and "live tag environment=prod" in outcomes[conflicting][1]
    assert outcomes[prefixed][0] == "skipped" and "live tag environment=prod-eu" in outcomes[prefixed][1]
    assert instance(ec2, conflicting)["InstanceType"] == "m5.xlarge"
    assert instance(ec2, prefixed)["State"]["Name"] == "running"
