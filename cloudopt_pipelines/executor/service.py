"""The executor's file layout and its three operations (approve, execute a day, roll back), without Dagster.

Under ``$CLOUDOPT_HOME``: ``approvals/approvals.jsonl`` (append-only), ``audit/actions.jsonl``
(append-only), ``exports/purchases-<date>.csv|json``; with ``CLOUDOPT_EXECUTOR_STORE`` set, approvals, audit
and exports live in PostgreSQL or on S3 instead (``executor/store.py``), and so does the run lock
(``executor/lock.py``); the signing key stays under ``$CLOUDOPT_HOME/keys``, shared by every pod (a mounted
secret); the lake table ``executed_actions`` (one partition a day) is rebuilt from the audit file after every
run, so it holds every decision of every run of that day.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cloudopt_pipelines.executor.approvals import (
    PLAN_TABLE,
    Approval,
    ApprovalStore,
    PlanCheckReader,
    new_approval,
    plan_check_status,
)
from cloudopt_pipelines.executor.audit import AuditLog, decisions_table
from cloudopt_pipelines.executor.aws import ExecutorAws
from cloudopt_pipelines.executor.engine import Executor, RunResult
from cloudopt_pipelines.executor.lock import executor_lock
from cloudopt_pipelines.executor.model import Decision, PlanError, PlannedAction, actions_from_plan
from cloudopt_pipelines.executor.policy import ExecutorPolicy
from cloudopt_pipelines.executor.store import DocumentStore, PostgresStore, S3Store, open_store
from cloudopt_pipelines.executor.targets import ExecutionTarget
from cloudopt_pipelines.storage.digest import table_sha256
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import EXECUTED_ACTIONS

ACTIONS_TABLE = "executed_actions"


class PlanNotFound(FileNotFoundError):
    """The portfolio plan of a day was never materialised."""


@dataclass(frozen=True)
class ExecutorPaths:
    """Where the executor keeps its records under one home directory."""

    home: Path
    store: str | None = None
    """``CLOUDOPT_EXECUTOR_STORE``: None for the files under ``home``, else a PostgreSQL or S3 URL."""

    def _shared(self) -> PostgresStore | S3Store | None:
        return None if self.store is None else open_store(self.store)

    @property
    def approvals_dir(self) -> Path:
        return self.home / "approvals"

    @property
    def audit_dir(self) -> Path:
        return self.home / "audit"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def exports(self) -> Path | DocumentStore:
        """Where the purchase lists go: ``exports_dir``, or the shared store's documents."""
        shared = self._shared()
        return self.exports_dir if shared is None else shared

    def approvals(self) -> ApprovalStore:
        shared = self._shared()
        return ApprovalStore(self.approvals_dir, None if shared is None else shared.log("approvals"))

    @property
    def audit_key_file(self) -> Path:
        return self.home / "keys" / "audit.key"

    def audit(self) -> AuditLog:
        shared = self._shared()
        return AuditLog(self.audit_dir, self.audit_key_file, None if shared is None else shared.log("audit"))

    def lock(self, operation: str, **details: Any) -> AbstractContextManager[dict[str, Any]]:
        """The executor run lock of this store (file lock, PostgreSQL advisory lock or S3 lease) for a block."""
        return executor_lock(self.home, operation, self._shared(), **details)


def read_plan(lake: Lake, day: date, checks: PlanCheckReader) -> tuple[str, list[PlannedAction]]:
    """The plan id and actions of ``day``'s portfolio plan, whose constraint check (read by ``checks``) must
    have passed on these very rows; a clear error when that partition does not exist."""
    if lake.partition_file(PLAN_TABLE, day=day) is None:
        raise PlanNotFound(
            f"no portfolio plan for {day}: lake table '{PLAN_TABLE}' has no partition "
            f"{lake.partition_dir(PLAN_TABLE, day=day)}. Materialise plan/portfolio_plan for {day} first "
            "(the executor only applies a plan that exists and was approved)"
        )
    table = lake.read(PLAN_TABLE, day=day)
    plan_id, actions = actions_from_plan(table, day)
    require_passed_check(checks, day, plan_id, table_sha256(table))
    return plan_id, actions


def require_passed_check(checks: PlanCheckReader, day: date, plan_id: str, plan_sha256: str) -> None:
    """The plan's independent constraint check must have passed for this very plan id and these very rows
    (content hash): actions never run (nor get approved) on a plan that failed it, whose check was never
    recorded, or whose partition was edited after the check."""
    if not plan_id:
        return  # a plan of keeps only: nothing to act on
    status = plan_check_status(checks(day), day, plan_id, plan_sha256)
    if not status.passed:
        raise PlanError(status.reason)


def approve(
    lake: Lake,
    paths: ExecutorPaths,
    day: date,
    approved_by: str,
    action_ids: Sequence[str] = (),
    all_actions: bool = False,
    source: str = "cli",
    plan_id: str | None = None,
    now: datetime | None = None,
    *,
    checks: PlanCheckReader,
) -> Approval:
    """Record an approval of ``action_ids`` (or all) of ``day``'s current plan; ``plan_id``, when given, must match."""
    current, actions = read_plan(lake, day, checks)
    if plan_id is not None and plan_id != current:
        from cloudopt_pipelines.executor.approvals import ApprovalError

        raise ApprovalError(
            f"the approval names plan {plan_id}, but the plan of {day} is now {current} (re-materialised since): "
            "review the new plan and approve it"
        )
    approval = new_approval(current, day, actions, approved_by, action_ids, all_actions, source, now=now)
    paths.approvals().append(approval)
    return approval


def execute_day(
    lake: Lake,
    paths: ExecutorPaths,
    day: date,
    mode: str,
    aws: ExecutorAws | ExecutionTarget | Sequence[ExecutionTarget],
    policy: ExecutorPolicy | None = None,
    extra_approvals: Sequence[Approval] = (),
    run_id: str | None = None,
    now: Callable[[], datetime] | None = None,
    *,
    checks: PlanCheckReader,
) -> tuple[RunResult, Path]:
    """Run the executor on ``day``'s plan, then rebuild that day's ``executed_actions`` partition."""
    run_id = run_id or uuid.uuid4().hex
    with paths.lock(f"execute {day} --mode {mode}", run_id=run_id):
        plan_id, actions = read_plan(lake, day, checks)
        approvals = [*paths.approvals().for_day(day), *extra_approvals]
        executor = Executor(aws, paths.audit(), paths.exports, policy, now=now or (lambda: datetime.now(UTC)))
        result = executor.run(day, plan_id, actions, approvals, mode, run_id)
        return result, write_actions_partition(lake, paths.audit(), day)


def rollback(
    lake: Lake,
    paths: ExecutorPaths,
    action_id: str,
    mode: str,
    by: str,
    aws: ExecutorAws | ExecutionTarget | Sequence[ExecutionTarget],
    policy: ExecutorPolicy | None = None,
) -> Decision:
    """Undo one applied action (see ``Executor.rollback``) and refresh its day's partition, also on refusal."""
    audit = paths.audit()
    with paths.lock(f"rollback {action_id} --mode {mode}", by=by):
        try:
            planned = planned_action(lake, audit, action_id)
            return Executor(aws, audit, paths.exports, policy).rollback(action_id, mode, by, planned=planned)
        finally:
            days = {r.get("date") for r in audit.history(action_id) if r.get("date")}
            for day in days:
                write_actions_partition(lake, audit, date.fromisoformat(str(day)))


def planned_action(lake: Lake, audit: AuditLog, action_id: str) -> PlannedAction | None:
    """The plan row of ``action_id`` if the plan partition of its day still holds it (else None)."""
    for day in sorted({str(r["date"]) for r in audit.history(action_id) if r.get("date")}):
        try:
            _, actions = actions_from_plan(lake.read(PLAN_TABLE, day=date.fromisoformat(day)), date.fromisoformat(day))
        except (FileNotFoundError, PlanError, ValueError):
            continue
        found = next((a for a in actions if a.action_id == action_id), None)
        if found is not None:
            return found
    return None


def write_actions_partition(lake: Lake, audit: AuditLog, day: date) -> Path:
    """Rebuild the ``executed_actions`` partition of ``day`` from the audit file (every run, in order)."""
    return lake.write(ACTIONS_TABLE, decisions_table(audit.decisions(day), EXECUTED_ACTIONS), day=day)
