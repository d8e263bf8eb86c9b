"""The executor: applies an approved portfolio plan safely. Pure decisions, boto3 and Kubernetes plug-ins, no Dagster.

- ``model``: planned actions (from ``portfolio_plan`` rows), decisions, outcomes, action ids;
- ``policy``: protection, production, blast radius, rate limit, change windows (cron + time zone);
- ``approvals`` / ``audit``: append-only JSONL records under ``$CLOUDOPT_HOME``;
- ``aws``: the executor role's boto3 clients (sessions from the shared ``cloudopt_pipelines.aws``), calls recorded;
- ``actions``: one plug-in per (resource kind, action) (read, plan, apply, verify, roll back);
- ``targets``: ``ExecutionTarget``, where actions are applied (``AwsTarget``; ``kubernetes.KubernetesTarget``:
  the official client, patches with server-side ``dryRun=All``; ECS next);
- ``drift``, ``lock``: changed since the plan?; one executor at a time per store (file, PostgreSQL or S3 lock);
- ``engine``: the safety rules in order, and rollback; ``service``: approve / execute a day / roll back.
"""

from cloudopt_pipelines.executor.approvals import (
    Approval,
    ApprovalError,
    ApprovalStore,
    PlanCheckReader,
    PlanCheckRecord,
)
from cloudopt_pipelines.executor.audit import AuditLog
from cloudopt_pipelines.executor.aws import ExecutorAws, ExecutorError
from cloudopt_pipelines.executor.engine import Executor, RollbackError, RunResult
from cloudopt_pipelines.executor.kubernetes import KubernetesAccess, KubernetesTarget
from cloudopt_pipelines.executor.lock import ExecutorBusy, ExecutorLockLost, executor_lock
from cloudopt_pipelines.executor.model import MODES, OUTCOMES, Decision, PlanError, PlannedAction, actions_from_plan
from cloudopt_pipelines.executor.policy import ChangeWindow, ExecutorPolicy, PolicyError
from cloudopt_pipelines.executor.service import (
    ExecutorPaths,
    PlanNotFound,
    approve,
    execute_day,
    read_plan,
    rollback,
    write_actions_partition,
)
from cloudopt_pipelines.executor.targets import AwsTarget, ExecutionTarget

__all__ = [
    "MODES",
    "OUTCOMES",
    "Approval",
    "ApprovalError",
    "ApprovalStore",
    "AuditLog",
    "AwsTarget",
    "ChangeWindow",
    "Decision",
    "ExecutionTarget",
    "Executor",
    "ExecutorAws",
    "ExecutorBusy",
    "ExecutorError",
    "ExecutorLockLost",
    "ExecutorPaths",
    "ExecutorPolicy",
    "KubernetesAccess",
    "KubernetesTarget",
    "PlanCheckReader",
    "PlanCheckRecord",
    "PlanError",
    "PlanNotFound",
    "PlannedAction",
    "PolicyError",
    "RollbackError",
    "RunResult",
    "actions_from_plan",
    "approve",
    "execute_day",
    "executor_lock",
    "read_plan",
    "rollback",
    "write_actions_partition",
]
