"""Issue 17 defect 25: rollback verifies the signed audit record and never resizes to a type the plan never held."""

from __future__ import annotations

import json
import stat

import pytest

from cloudopt_pipelines.executor import rollback
from cloudopt_pipelines.executor.actions import RollbackRefused
from tests.executor.conftest import dev_instance, executor_aws, instance, plan_row

HUGE = "u-12tb1.112xlarge"


def rewrite_applied(home, change) -> None:
    """Edit the applied decision of the audit file in place (as someone with write access to it would)."""
    path = home.paths.audit().path
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        if r.get("event") == "decision" and r.get("outcome") == "applied":
            change(r)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def applied_resize(home, ec2, moto_url):
    iid = dev_instance(ec2)
    home.write_plan([plan_row(iid, "resize", {"instance_type": "m5.large", "market": "on_demand"})])
    home.approve_all()
    aws = executor_aws(moto_url)
    decision = home.run(aws).decisions[0]
    assert decision.outcome == "applied" and instance(ec2, iid)["InstanceType"] == "m5.large"
    return iid, decision.action_id, aws


def test_an_edited_or_unsigned_audit_record_is_never_rolled_back_from(home, ec2, moto_url) -> None:
    iid, action_id, aws = applied_resize(home, ec2, moto_url)
    key = home.paths.audit_key_file
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600

    rewrite_applied(home, lambda r: r["state_before"].update(instance_type=HUGE))
    with pytest.raises(RollbackRefused, match="does not match its signature: it was edited"):
        rollback(home.lake, home.paths, action_id, "apply", "mallory", aws)
    rewrite_applied(home, lambda r: r.pop("hmac"))
    with pytest.raises(RollbackRefused, match="is not signed"):
        rollback(home.lake, home.paths, action_id, "dry_run", "mallory", aws)
    assert instance(ec2, iid)["InstanceType"] == "m5.large"
    refusals = [r for r in home.paths.audit().history(action_id) if r.get("reason", "").startswith("rollback refused")]
    assert len(refusals) == 2 and refusals[0]["approved_by"] == "mallory"


def test_a_signed_record_to_a_type_the_plan_never_held_is_refused(home, ec2, moto_url) -> None:
    iid, action_id, aws = applied_resize(home, ec2, moto_url)
    audit = home.paths.audit()

    def forge(r: dict) -> None:  # a record re-signed with the key: only the plan can still say no
        r["state_before"]["instance_type"] = HUGE
        r.update(audit.sign(r))

    rewrite_applied(home, forge)
    with pytest.raises(RollbackRefused) as refused:
        rollback(home.lake, home.paths, action_id, "apply", "mallory", aws)
    assert f"type {HUGE}, a type the plan of 2026-11-20 never held (m5.large, m5.xlarge)" in str(refused.value)
    assert instance(ec2, iid)["InstanceType"] == "m5.large"

    # The plan partition gone (re-planned since): the record's own signed copy of the plan row decides.
    home.write_plan([], plan_id="plan-2")
    with pytest.raises(RollbackRefused, match="never held"):
        rollback(home.lake, home.paths, action_id, "apply", "mallory", aws)
    assert instance(ec2, iid)["InstanceType"] == "m5.large"


def test_an_honest_record_still_rolls_back(home, ec2, moto_url) -> None:
    iid, action_id, aws = applied_resize(home, ec2, moto_url)
    assert rollback(home.lake, home.paths, action_id, "apply", "carol", aws).outcome == "rolled_back"
    assert instance(ec2, iid)["InstanceType"] == "m5.xlarge"
