"""Issue 11 item 9: plug-ins keyed by (resource kind, action), an execution-target interface, and AWS sessions
from the shared module (not by subclassing the collector)."""

from __future__ import annotations

import ast
from contextlib import contextmanager
from pathlib import Path

import pytest

import cloudopt_pipelines.executor as executor_pkg
from cloudopt_pipelines.aws import AwsSessions
from cloudopt_pipelines.executor import Executor, ExecutorError, ExecutorPolicy, read_plan
from cloudopt_pipelines.executor.actions import ActionPlugin, LiveState, Proposal, Verification, default_plugins
from cloudopt_pipelines.executor.model import ApiCall
from cloudopt_pipelines.executor.targets import AwsTarget, plugin_table
from cloudopt_pipelines.sources.aws import AwsCollector
from tests.executor.conftest import (
    DAY,
    EXECUTOR_ROLE,
    MANAGEMENT_ACCOUNT,
    NOW,
    dev_instance,
    executor_aws,
    instance,
    plan_row,
)


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


class InMemoryServiceTarget:
    """A second execution target, as an ECS or Kubernetes one will be: its services live in a dict."""

    name = "in-memory"

    def __init__(self) -> None:
        self.services = {"svc-web": {"desired_cpu": 1024}}
        self.calls: list[ApiCall] = []

    def plugins(self):
        return {("ecs_service", "resize"): ResizeService()}

    def default_region(self) -> str:
        return "local"

    def context(self, account_id, region, policy, now):
        return self

    def read_live(self, plugin, ctx, action):
        return plugin.read(ctx, action)

    @contextmanager
    def recording(self):
        yield self.calls

    def describe_error(self, exc, account_id, region, doing):
        return ExecutorError(f"{doing} failed in {account_id}: {exc}")

    def limit_rate(self, calls_per_second: float) -> None:
        return None


class ResizeService(ActionPlugin):
    actions = ("resize",)
    resource_kinds = ("ecs_service",)

    def read(self, ctx, action):
        return LiveState(True, {"env": "dev"}, dict(ctx.services[action.resource_id]))

    def plan(self, ctx, action, live, history):
        cpu = action.proposed_config["desired_cpu"]
        call = ApiCall("ecs:UpdateService", {"service": action.resource_id, "cpu": cpu})
        return Proposal("ready", f"cpu to {cpu}", [call], live.state, {"desired_cpu": cpu})

    def apply(self, ctx, action, proposal):
        ctx.services[action.resource_id]["desired_cpu"] = proposal.target["desired_cpu"]
        ctx.calls.append(ApiCall("ecs:UpdateService", proposal.calls[0].params, "ok"))
        return {}

    def verify(self, ctx, action, proposal, applied):
        return Verification(ctx.services[action.resource_id] == proposal.target, dict(ctx.services[action.resource_id]))

    def rollback(self, ctx, record):
        ctx.services[record["resource_id"]] = dict(record["state_before"])
        return dict(ctx.services[record["resource_id"]])


def test_plugins_are_keyed_by_resource_kind_and_action() -> None:
    plugins = default_plugins()
    assert ("ec2_instance", "resize") in plugins and ("ebs_volume", "delete_volume") in plugins
    assert all(isinstance(k, tuple) and len(k) == 2 for k in plugins)
    assert ("ecs_service", "resize") not in plugins
    with pytest.raises(ValueError, match="both act on ec2_instance 'resize'"):
        plugin_table([AwsTarget(executor_aws("http://unused")), AwsTarget(executor_aws("http://unused"))])


def test_an_ecs_resize_goes_to_its_own_target_and_never_collides_with_ec2(home, ec2, moto_url) -> None:
    iid = dev_instance(ec2)
    other = InMemoryServiceTarget()
    home.write_plan(
        [
            plan_row(iid, "resize", {"instance_type": "m5.large", "market": "on_demand"}),
            plan_row("svc-web", "resize", {"desired_cpu": 512}, resource_kind="ecs_service", current_config="{}"),
            plan_row("svc-api", "resize", {"desired_cpu": 512}, resource_kind="eks_nodegroup", current_config="{}"),
        ]
    )
    home.approve_all()
    plan_id, actions = read_plan(home.lake, DAY, home.checks)
    executor = Executor(
        [AwsTarget(executor_aws(moto_url)), other],
        home.paths.audit(),
        home.paths.exports_dir,
        ExecutorPolicy(max_calls_per_second=0),
        now=lambda: NOW,
    )
    result = executor.run(DAY, plan_id, actions, home.paths.approvals().for_day(DAY), "apply")
    by_resource = {d.resource_id: d for d in result.decisions}
    assert by_resource[iid].outcome == "applied" and instance(ec2, iid)["InstanceType"] == "m5.large"
    assert by_resource["svc-web"].outcome == "applied" and other.services["svc-web"] == {"desired_cpu": 512}
    assert [c.api for c in other.calls] == ["ecs:UpdateService"]
    assert by_resource["svc-api"].outcome == "skipped"
    assert "no plug-in for action 'resize' on eks_nodegroup resources" in by_resource["svc-api"].reason
