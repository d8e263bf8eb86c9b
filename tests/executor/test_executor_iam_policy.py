"""docs/iam/executor-policy.json lists exactly the AWS actions the executor calls (read from its source)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import boto3
import pytest

import cloudopt_pipelines.aws.sessions as aws_sessions
import cloudopt_pipelines.executor as executor_pkg
from cloudopt_pipelines.executor.policy import PROTECT_TAG_KEY, PROTECT_TAG_VALUES, ExecutorPolicy, is_protected_value
from tests.executor.conftest import dev_instance, executor_aws, plan_row

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "docs" / "iam" / "executor-policy.json"
COLLECTOR_POLICY = ROOT / "docs" / "iam" / "collector-readonly-policy.json"


def statement(sid: str) -> dict:
    return next(s for s in json.loads(POLICY.read_text())["Statement"] if s["Sid"] == sid)


def calls_in(path: Path, only: set[str] | None = None) -> set[str]:
    """IAM actions of every client method called on a variable named after its service (``ec2 = ctx.client("ec2")``)."""
    tree = ast.parse(path.read_text())
    services: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr in ("client", "_base_client", "base_client"):
                names = [a.value for a in node.value.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                if not names:
                    continue  # the generic factory
                assert len(names) == 1 and isinstance(node.targets[0], ast.Name)
                assert node.targets[0].id == names[0], f"{path.name}: client of {names[0]} in '{node.targets[0].id}'"
                services.add(names[0])
    actions: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        if not (isinstance(target, ast.Name) and target.id in services) or (only and target.id not in only):
            continue
        client = boto3.client(target.id, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
        method = node.func.attr if node.func.attr != "get_paginator" else node.args[0].value
        # IAM names an action by the service's signing name (emr -> elasticmapreduce), as ExecutorAws records it.
        prefix = {"monitoring": "cloudwatch"}.get(
            client.meta.service_model.signing_name, client.meta.service_model.signing_name
        )
        actions.add(f"{prefix}:{client.meta.method_to_api_mapping[method]}")
    return actions


def executor_calls() -> set[str]:
    package = Path(executor_pkg.__file__).parent
    return set().union(*(calls_in(p) for p in sorted(package.rglob("*.py"))))


def test_policy_lists_exactly_the_actions_the_executor_calls() -> None:
    called = executor_calls()
    assert len(called) >= 14 and {a.split(":")[0] for a in called} == {"ec2", "ecs", "elasticmapreduce"}
    assert set(statement("CloudoptExecutorReadAndChange")["Action"]) == called
    # Reaching accounts: the shared session machinery (STS only), used by the collector and the executor.
    assert set(statement("CloudoptExecutorAssumeRole")["Action"]) == calls_in(Path(aws_sessions.__file__), {"sts"})
    deny = statement("CloudoptExecutorNeverTouchesProtected")
    assert set(deny["Action"]) <= called and deny["Effect"] == "Deny"
    assert deny["Condition"] == {
        "StringEqualsIgnoreCase": {f"aws:ResourceTag/{PROTECT_TAG_KEY}": list(PROTECT_TAG_VALUES)}
    }


def iam_denies(condition: dict, value: str) -> bool:
    """IAM's evaluation of the Deny's condition on a resource whose protect tag has ``value``."""
    ((operator, test),) = condition.items()
    ((_, wanted),) = test.items()
    wanted = [wanted] if isinstance(wanted, str) else wanted
    if operator == "StringEqualsIgnoreCase":
        return any(value.lower() == w.lower() for w in wanted)
    assert operator == "StringEquals", operator
    return value in wanted


@pytest.mark.parametrize(
    "value",
    ["true", "TRUE", "True", "tRUe", "1", "yes", "YES", "Yes", " true", "true ", "false", "0", "no", "", "yes!", "2"],
)
def test_the_deny_backstop_matches_every_value_the_code_treats_as_protected(value: str) -> None:
    condition = statement("CloudoptExecutorNeverTouchesProtected")["Condition"]
    assert iam_denies(condition, value) == is_protected_value(value)
    assert ExecutorPolicy().protection({PROTECT_TAG_KEY: value})[0] == is_protected_value(value)


def test_the_executor_role_writes_and_the_collector_role_never_does() -> None:
    collector = {a for s in json.loads(COLLECTOR_POLICY.read_text())["Statement"] for a in s["Action"]}
    writes = {a for a in executor_calls() if not a.split(":")[1].startswith(("Describe", "List", "Get"))}
    assert writes and not writes & collector


def test_actions_seen_at_run_time_are_in_the_policy(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    home.write_plan([plan_row(iid, "resize", {"instance_type": "m5.large"}), plan_row(volume, "delete_volume", {})])
    home.approve_all()
    aws = executor_aws(moto_url, max_attempts=3)  # its own clients, so that it sees every call
    assert {d.outcome for d in home.run(aws).decisions} == {"applied"}
    assert aws.seen_actions <= set(statement("CloudoptExecutorReadAndChange")["Action"])
    assert {"ec2:StopInstances", "ec2:CreateSnapshot", "ec2:DeleteVolume"} <= aws.seen_actions


def test_docs_show_the_same_policy() -> None:
    text = (ROOT / "docs" / "executor.md").read_text()
    start = text.index("```json\n", text.index("## IAM write policy")) + len("```json\n")
    assert json.loads(text[start : text.index("```", start)]) == json.loads(POLICY.read_text())


def test_registering_a_task_definition_brings_tag_on_create_and_pass_role() -> None:
    # Not client methods, so not found in the source: what AWS also checks when RegisterTaskDefinition runs.
    assert "ecs:RegisterTaskDefinition" in executor_calls()
    tag = statement("CloudoptExecutorTagsNewTaskDefinitions")
    assert tag["Action"] == ["ecs:TagResource"]
    assert tag["Condition"] == {"StringEquals": {"ecs:CreateAction": "RegisterTaskDefinition"}}
    passing = statement("CloudoptExecutorPassesTaskRoles")
    assert passing["Action"] == ["iam:PassRole"]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    sids = {s["Sid"] for s in json.loads(POLICY.read_text())["Statement"]}
    assert sids == {
        "CloudoptExecutorReadAndChange",
        "CloudoptExecutorTagsNewTaskDefinitions",
        "CloudoptExecutorPassesTaskRoles",
        "CloudoptExecutorNeverTouchesProtected",
        "CloudoptExecutorAssumeRole",
    }
