"""Issue 11 item 9: plug-ins keyed by (resource kind, action), an execution-target interface, and AWS sessions
from the shared module (not by subclassing the collector)."""

from __future__ import annotations

import ast
from pathlib import Path

import cloudopt_pipelines.executor as executor_pkg
from cloudopt_pipelines.aws import AwsSessions
from cloudopt_pipelines.sources.aws import AwsCollector
from tests.executor.conftest import EXECUTOR_ROLE, MANAGEMENT_ACCOUNT, executor_aws


def test_executor_and_collector_share_the_aws_session_module(moto_url) -> None:
    aws = executor_aws(moto_url)
    assert isinstance(aws.sessions, AwsSessions) and not isinstance(aws.sessions, AwsCollector)
    assert isinstance(AwsCollector(aws.settings)._aws, AwsSessions)
    for path in Path(executor_pkg.__file__).parent.rglob("*.py"):
        imported = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert "cloudopt_pipelines.sources.aws" not in imported, f"{path.name} imports the collector"
    # The executor role is assumed in the base credentials' own account too, and cached.
    session = aws.sessions.session_for(MANAGEMENT_ACCOUNT)
    assert session is aws.sessions.session_for(MANAGEMENT_ACCOUNT)
    identity = aws.client(MANAGEMENT_ACCOUNT, "sts", "us-east-1").get_caller_identity()
    assert EXECUTOR_ROLE in identity["Arn"]
