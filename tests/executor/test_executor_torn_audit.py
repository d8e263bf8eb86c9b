"""Issue 17 defect 7: a torn last line in the audit file is skipped with a warning; execute and rollback go on."""

from __future__ import annotations

import json
import logging

import pytest

from cloudopt_pipelines.executor import rollback
from tests.executor.conftest import dev_instance, executor_aws, instance, plan_row


def test_a_torn_audit_line_is_skipped_with_a_warning_and_later_runs_keep_working(
    home, ec2, moto_url, caplog: pytest.LogCaptureFixture
) -> None:
    stopped, later = dev_instance(ec2), dev_instance(ec2)
    home.write_plan([plan_row(stopped, "stop", {"state": "stopped"})])
    home.approve_all()
    aws = executor_aws(moto_url)
    applied = home.run(aws).decisions[0]
    audit = home.paths.audit().path
    whole = audit.read_text()
    lines = len(whole.splitlines())
    with audit.open("a") as handle:  # a crash mid-write: half a record, no newline
        handle.write('{"action_id": "act-000000000bad", "event": "deci')

    home.write_plan([plan_row(stopped, "stop", {"state": "stopped"}), plan_row(later, "stop", {})], plan_id="plan-2")
    home.approve_all()
    with caplog.at_level(logging.WARNING):
        outcomes = {d.resource_id: d.outcome for d in home.run(aws).decisions}
    assert outcomes == {stopped: "skipped", later: "applied"}
    assert instance(ec2, later)["State"]["Name"] == "stopped"
    torn = f"{audit} line {lines + 1} is not a complete JSON record"
    assert any(torn in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    # The next record started on a new line: everything after the torn line reads back whole.
    text = audit.read_text().splitlines()
    assert text[lines] == '{"action_id": "act-000000000bad", "event": "deci'
    assert all(json.loads(line) for line in text[lines + 1 :])

    undone = rollback(home.lake, home.paths, applied.action_id, "apply", "carol", aws)
    assert undone.outcome == "rolled_back" and instance(ec2, stopped)["State"]["Name"] == "running"
