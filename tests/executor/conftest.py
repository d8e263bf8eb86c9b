"""A real moto server over HTTP for the executor, a fault proxy in front of it, and plan-writing helpers.

The moto server, dummy credentials and seeding helpers are the ones of ``tests/aws``; this server is the
executor tests' own (they change what they create, so they do not share the collector's seeded world).
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from cloudopt_pipelines.assets.plan import PLAN_CHECK, PLAN_KEY, plan_check_metadata, plan_check_reader
from cloudopt_pipelines.executor import ExecutorAws, ExecutorPaths, ExecutorPolicy, execute_day
from cloudopt_pipelines.executor.approvals import PlanCheckReader, new_approval
from cloudopt_pipelines.executor.model import actions_from_plan
from cloudopt_pipelines.orchestration import ensure_instance
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.sources.aws import AwsSettings
from cloudopt_pipelines.storage.digest import table_sha256
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import PORTFOLIO_PLAN
from cloudopt_pipelines.testing.aws_api import forward, send, serve
from tests.aws.conftest import (
    LINUX_AMI,
    MANAGEMENT_ACCOUNT,
    aws_env,
    client,
    run_instance,
    running_moto_server,
)

__all__ = ["LINUX_AMI", "MANAGEMENT_ACCOUNT", "aws_env", "client", "run_instance"]

EXECUTOR_ROLE = "CloudoptExecutor"
DAY = date(2026, 11, 20)
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a Friday, noon UTC


@pytest.fixture(scope="session")
def moto_url(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server of the executor tests, for the session."""
    with running_moto_server(tmp_path_factory.mktemp("moto-executor") / "moto_server.log") as url:
        yield url


@pytest.fixture(scope="session")
def ec2(moto_url: str) -> Any:
    """A plain boto3 EC2 client on the server, to seed and to read the state back."""
    return client(moto_url, "ec2")


# ------------------------------------------------------------------------------------------ proxy

EC2_ERROR = (
    "<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
    "<RequestID>fault-proxy</RequestID></Response>"
)


@dataclass
class FaultProxy:
    """Forwards to moto; fails the first ``fail_once`` calls of an EC2 action with an error, or goes down for
    good (every request dropped, as if the server stopped) at the first call of ``down_on``."""

    upstream: str
    fail_once: dict[str, tuple[str, str]] = field(default_factory=dict)
    down_on: str | None = None
    down: bool = False
    actions: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, body: bytes) -> tuple[int, str] | str | None:
        action = (urllib.parse.parse_qs(body.decode(errors="replace")).get("Action") or [""])[0]
        with self.lock:
            self.actions.append(action)
            if self.down or (self.down_on and action == self.down_on):
                self.down = True
                return "drop"
            if action in self.fail_once:
                code, message = self.fail_once.pop(action)
                return 400, EC2_ERROR.format(code=code, message=message)
        return None

    def mutating(self) -> list[str]:
        return [a for a in self.actions if a and not a.startswith(("Describe", "List", "Get", "AssumeRole"))]

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        decision = self.decide(body)
        if decision == "drop":
            handler.close_connection = True
            handler.connection.close()
            return
        if decision is not None:
            status, text = decision
            send(handler, status, text.encode(), [("Content-Type", "text/xml")])
            return
        forward(handler, urllib.parse.urlsplit(self.upstream), body)

    def serve(self) -> contextlib.AbstractContextManager[str]:
        return serve(self.handle)


# --------------------------------------------------------------------------------------- helpers


_SHARED: dict[str, ExecutorAws] = {}


def executor_aws(endpoint: str, **overrides: Any) -> ExecutorAws:
    """The executor's AWS access against ``endpoint``, through the executor role, with short waits
    (shared per endpoint: building boto3 clients is the slow part of these tests)."""
    if not overrides and endpoint in _SHARED:
        return _SHARED[endpoint]
    settings = AwsSettings(
        **{
            "regions": ("us-east-1",),
            "endpoint_url": endpoint,
            "assume_role": EXECUTOR_ROLE,
            "role_session_name": "cloudopt-executor",
            "max_attempts": 2,
            "connect_timeout_seconds": 1,
            "read_timeout_seconds": 60,
            **overrides,
        }
    )
    aws = ExecutorAws(settings, poll_seconds=0.01, wait_timeout_seconds=120)  # bounds only: a busy machine is slow
    if not overrides:
        _SHARED[endpoint] = aws
    return aws


def plan_row(resource_id: str, action: str, proposed: dict[str, Any], **extra: Any) -> dict[str, Any]:
    kind = (
        "ebs_volume" if action == "delete_volume" else "elastic_ip" if action == "release_address" else "ec2_instance"
    )
    row = {
        "account_id": MANAGEMENT_ACCOUNT,
        "resource_id": resource_id,
        "resource_kind": kind,
        "deployment_type": "standalone",
        "region": "us-east-1",
        "zone": "us-east-1a",
        "group_name": None,
        "env": "dev",
        "option_name": action if ":" not in json.dumps(proposed) else f"{action}:{proposed.get('instance_type')}",
        "action": action,
        "market": "on_demand",
        "current_config": json.dumps({"instance_type": "m5.xlarge", "market": "on_demand"}),
        "proposed_config": json.dumps(proposed),
        "monthly_cost_current_usd": 140.0,
        "monthly_cost_proposed_usd": 70.0,
        "monthly_savings_usd": 70.0,
        "one_time_cost_usd": 0.0,
        "performance_risk": 1.0,
        "confidence": 1.0,
        "is_estimate": False,
        "protected": False,
        "reason": "test plan",
        "solver_status": "Optimal",
    }
    row.update(extra)
    return row


@dataclass
class Home:
    """A temporary CLOUDOPT_HOME: the lake, the Dagster instance and the executor's records."""

    root: Path
    _instance: dg.DagsterInstance | None = field(default=None, init=False, repr=False)

    @property
    def lake(self) -> Lake:
        return Lake(self.root / "lake")

    @property
    def paths(self) -> ExecutorPaths:
        return ExecutorPaths(self.root)

    def write_plan(self, rows: list[dict[str, Any]], plan_id: str = "plan-1", day: date = DAY) -> list[Any]:
        """Write the portfolio plan of ``day`` (a keep row included) and return its planned actions."""
        keep = plan_row("i-keepkeepkeep0000", "keep", {"instance_type": "m5.large"}, option_name="keep")
        full = [{**r, "date": day, "plan_id": plan_id} for r in [*rows, keep]]
        self.lake.write("portfolio_plan", pa.Table.from_pylist(full, schema=PORTFOLIO_PLAN), day=day)
        self.write_check(plan_id, passed=True, day=day)
        return actions_from_plan(self.lake.read("portfolio_plan", day=day), day)[1]

    @property
    def instance(self) -> dg.DagsterInstance:
        """The Dagster instance under this home (where the plan's asset check is recorded)."""
        if self._instance is None:
            self._instance = ensure_instance(Settings(home=self.root, env="demo"))
        return self._instance

    @property
    def checks(self) -> PlanCheckReader:
        return plan_check_reader(self.instance)

    def write_check(self, plan_id: str, passed: bool, day: date = DAY) -> None:
        """The plan's constraint check, as the portfolio_plan asset records it (on the partition's rows)."""
        violations = [] if passed else ["monthly_budget_usd: 120.00 > 100.00"]
        sha = table_sha256(self.lake.read("portfolio_plan", day=day))
        self.instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=PLAN_KEY,
                check_name=PLAN_CHECK,
                passed=passed,
                metadata=plan_check_metadata(day, plan_id, sha, "optimal", violations),
            )
        )

    def approve_all(self, day: date = DAY, ids: tuple[str, ...] = (), by: str = "alice") -> None:
        plan_id, actions = actions_from_plan(self.lake.read("portfolio_plan", day=day), day)
        self.paths.approvals().append(new_approval(plan_id, day, actions, by, ids, all_actions=not ids))

    def run(self, aws: ExecutorAws, mode: str = "apply", day: date = DAY, **policy: Any) -> Any:
        policy.setdefault("max_calls_per_second", 0)  # tests that want the rate limit set it
        result, _ = execute_day(
            self.lake, self.paths, day, mode, aws, ExecutorPolicy(**policy), now=lambda: NOW, checks=self.checks
        )
        return result


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "cloudopt")


def instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def dev_instance(ec2: Any, instance_type: str = "m5.xlarge", **extra_tags: str) -> str:
    return run_instance(ec2, {"Name": "batch", "env": "dev", **extra_tags}, instance_type)
