"""The executed_actions asset through Dagster, and `cloudopt approve / execute / rollback` on a real instance."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import typer
from typer.testing import CliRunner

from cloudopt_pipelines.assets.actions import EXECUTED_ACTIONS_KEY, executed_actions
from cloudopt_pipelines.executor_cli import EXECUTED_ACTIONS_OP, register_executor_commands
from cloudopt_pipelines.resources.executor import AwsExecutorResource, KubernetesExecutorResource
from cloudopt_pipelines.resources.storage import LakeResource
from tests.executor.conftest import DAY, EXECUTOR_ROLE, dev_instance, instance, plan_row


def resources(home, moto_url: str) -> dict:
    return {
        "lake": LakeResource(root=str(home.lake.root)),
        "aws_executor": AwsExecutorResource(
            endpoint_url=moto_url, executor_role=EXECUTOR_ROLE, home=str(home.root), poll_seconds=0.01, max_attempts=2
        ),
        "k8s_executor": KubernetesExecutorResource(),
    }


def test_asset_applies_a_run_config_approval_and_reports(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    actions = home.write_plan([plan_row(iid, "stop", {"state": "stopped"})], plan_id="plan-7")
    config = {"mode": "apply", "approved_by": "erin", "approve_plan_id": "plan-7", "approve_all": True}
    result = dg.materialize(
        [executed_actions],
        partition_key=DAY.isoformat(),
        instance=home.instance,
        resources=resources(home, moto_url),
        run_config={"ops": {EXECUTED_ACTIONS_OP: {"config": config}}},
    )
    assert result.success
    metadata = result.asset_materializations_for_node(EXECUTED_ACTIONS_OP)[0].metadata
    assert metadata["outcome_applied"].value == 1 and metadata["plan_id"].value == "plan-7"
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.asset_key == EXECUTED_ACTIONS_KEY
    assert instance(ec2, iid)["State"]["Name"] == "stopped"
    (approval,) = home.paths.approvals().all()
    assert approval.source == "run_config" and approval.approved_by == "erin"
    (row,) = home.lake.read("executed_actions", day=DAY).to_pylist()
    assert row["action_id"] == actions[0].action_id and row["run_id"] == result.run_id
    assert row["approved_by"] == "erin" and row["outcome"] == "applied"


def test_asset_fails_clearly_without_a_plan_or_with_a_stale_run_config_approval(home, moto_url) -> None:
    result = dg.materialize(
        [executed_actions],
        partition_key=DAY.isoformat(),
        instance=home.instance,
        resources=resources(home, moto_url),
        raise_on_error=False,
    )
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error.message)
    assert f"no portfolio plan for {DAY}" in message and "plan/portfolio_plan" in message

    home.write_plan([plan_row("i-0abc", "stop", {})], plan_id="plan-2")
    config = {"mode": "apply", "approved_by": "erin", "approve_plan_id": "plan-1", "approve_all": True}
    result = dg.materialize(
        [executed_actions],
        partition_key=DAY.isoformat(),
        instance=home.instance,
        resources=resources(home, moto_url),
        run_config={"ops": {EXECUTED_ACTIONS_OP: {"config": config}}},
        raise_on_error=False,
    )
    message = str(result.get_step_failure_events()[0].step_failure_data.error.message)
    assert "names plan plan-1, but the plan of" in message and "plan-2" in message


def test_cli_approve_execute_rollback(home, ec2, moto_url, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDOPT_HOME", str(home.root))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("CLOUDOPT_EXECUTOR_ROLE", EXECUTOR_ROLE)
    iid = dev_instance(ec2)
    actions = home.write_plan([plan_row(iid, "resize", {"instance_type": "m5.large"})])
    app = typer.Typer()
    register_executor_commands(app)
    cli = CliRunner()

    listed = cli.invoke(app, ["approve", "--date", DAY.isoformat(), "--list"])
    assert listed.exit_code == 0 and actions[0].action_id in listed.output
    refused = cli.invoke(app, ["approve", "--date", DAY.isoformat(), "--all"])
    assert refused.exit_code == 2 and "--by NAME" in refused.output
    approved = cli.invoke(app, ["approve", "--date", DAY.isoformat(), "--actions", actions[0].action_id, "--by", "fay"])
    assert approved.exit_code == 0, approved.output

    dry = cli.invoke(app, ["execute", "--date", DAY.isoformat()])  # dry run unless told
    assert dry.exit_code == 0, dry.output
    assert "would_apply" in dry.output and instance(ec2, iid)["InstanceType"] == "m5.xlarge"
    applied = cli.invoke(app, ["execute", "--date", DAY.isoformat(), "--mode", "apply"])
    assert applied.exit_code == 0, applied.output
    assert "applied" in applied.output and instance(ec2, iid)["InstanceType"] == "m5.large"
    # Through Dagster, on the persistent instance under $CLOUDOPT_HOME/dagster.
    instance_dir = home.root / "dagster"
    with dg.DagsterInstance.from_config(str(instance_dir)) as persistent:
        assert len(persistent.get_runs()) == 2

    undone = cli.invoke(app, ["rollback", actions[0].action_id, "--by", "fay", "--mode", "apply"])
    assert undone.exit_code == 0, undone.output
    assert instance(ec2, iid)["InstanceType"] == "m5.xlarge"
    audit = [json.loads(line) for line in home.paths.audit().path.read_text().splitlines()]
    assert [r["outcome"] for r in audit if r["event"] == "decision"] == ["would_apply", "applied", "rolled_back"]
    bad = cli.invoke(app, ["execute", "--date", DAY.isoformat(), "--mode", "yolo"])
    assert bad.exit_code == 2 and "dry_run, apply" in bad.output


def test_the_documented_config_file_is_a_valid_run_config() -> None:
    import yaml

    from cloudopt_pipelines.assets.actions import ExecutedActionsConfig

    text = (Path(__file__).resolve().parents[2] / "docs" / "executor.md").read_text()
    start = text.index("```yaml\n") + len("```yaml\n")
    policy = ExecutedActionsConfig(**yaml.safe_load(text[start : text.index("```", start)])).policy()
    assert policy.schedule_method == "instance_scheduler_tag" and len(policy.change_windows) == 2
    assert policy.change_windows[0].is_open(datetime(2026, 11, 20, 22, 30, tzinfo=UTC))  # 23:30 in Paris
