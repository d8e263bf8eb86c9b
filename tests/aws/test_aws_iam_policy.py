"""The IAM policy in docs lists exactly the AWS actions the collector calls (read from its source)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import boto3
from conftest import FIRST_DAY, MANAGEMENT_ACCOUNT

import cloudopt_pipelines.aws.sessions as aws_sessions
import cloudopt_pipelines.sources.aws as aws_source

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "docs" / "iam" / "collector-readonly-policy.json"
IAM_PREFIX = {"cloudwatch": "cloudwatch", "emr": "elasticmapreduce"}


def policy_actions() -> set[str]:
    policy = json.loads(POLICY.read_text())
    return {action for statement in policy["Statement"] for action in statement["Action"]}


def called_actions() -> set[str]:
    """IAM actions of every boto3 client method and paginator used in sources/aws.py and in the shared
    session module it builds its clients with (aws/sessions.py: STS).

    Clients are held in variables named after their service (``ec2 = self.client(account, "ec2", region)``);
    the test checks that convention too, so every call on such a variable is a call of that service.
    """
    return _called_in(Path(aws_source.__file__)) | _called_in(Path(aws_sessions.__file__))


def _called_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    services: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr in ("client", "_base_client", "base_client"):
                names = [a.value for a in node.value.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                if not names:
                    continue  # the generic factory itself (session.client(service, ...))
                assert len(names) == 1 and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                assert node.targets[0].id == names[0], f"client of {names[0]} held in '{node.targets[0].id}'"
                services[names[0]] = names[0]
    actions: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        if not (isinstance(target, ast.Name) and target.id in services):
            continue
        client = boto3.client(target.id, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
        method = node.func.attr
        if method == "get_paginator":
            method = node.args[0].value
        operation = client.meta.method_to_api_mapping[method]
        actions.add(f"{IAM_PREFIX.get(target.id, target.id)}:{operation}")
    return actions


def test_policy_lists_exactly_the_actions_the_collector_calls() -> None:
    called = called_actions()
    assert len(called) >= 20
    assert called == policy_actions()


def test_actions_seen_at_run_time_are_in_the_policy(collector) -> None:
    allowed = policy_actions()
    seen: set[str] = set()
    for collected in (
        collector.collect_inventory(MANAGEMENT_ACCOUNT, FIRST_DAY),
        collector.collect_cluster_metrics(MANAGEMENT_ACCOUNT, FIRST_DAY),
    ):
        seen |= set(collected.metadata["api_calls"])
    assert seen and seen <= allowed


def test_docs_show_the_same_policy() -> None:
    text = (ROOT / "docs" / "aws.md").read_text()
    start = text.index("```json\n", text.index("## IAM read-only policy")) + len("```json\n")
    assert json.loads(text[start : text.index("```", start)]) == json.loads(POLICY.read_text())
