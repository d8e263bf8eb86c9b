"""What the executor works on and what it records: planned actions, decisions, outcomes. No Dagster."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from cloudopt_pipelines.storage.digest import table_sha256

MODES = ("dry_run", "apply")
# would_apply: what a dry run would do; skipped: not done, and why; failed: the error; rolled_back: applied,
# then undone (automatically after a failed verification, or by `cloudopt rollback`); exported: a
# commitment written to the purchase list; interrupted: an intent with no outcome (the run died mid-action).
OUTCOMES = ("would_apply", "applied", "skipped", "failed", "rolled_back", "exported", "interrupted")
NO_OP_ACTIONS = ("keep",)
COMMITMENT_ACTIONS = ("reserve", "savings_plan")


class PlanError(ValueError):
    """The plan cannot be executed as it is (several plan ids, a missing column, bad JSON)."""


@dataclass(frozen=True)
class PlannedAction:
    """One row of the approved portfolio plan that asks for a change."""

    action_id: str
    plan_id: str
    date: date
    account_id: str
    region: str
    zone: str | None
    resource_id: str
    resource_kind: str
    action: str
    option_name: str
    proposed_config: dict[str, Any]
    current_config: dict[str, Any]
    env: str | None = None
    monthly_savings_usd: float = 0.0
    plan_protected: bool = False
    #: content hash of the whole plan partition the action was read from (approvals are bound to it)
    plan_sha256: str = ""

    @property
    def is_commitment(self) -> bool:
        return self.action in COMMITMENT_ACTIONS


@dataclass(frozen=True)
class ApiCall:
    """One AWS call: IAM-style name (``ec2:StopInstances``) and the exact parameters."""

    api: str
    params: dict[str, Any]
    status: str = "planned"

    def to_dict(self) -> dict[str, Any]:
        return {"api": self.api, "params": self.params, "status": self.status}


@dataclass
class Decision:
    """One audited decision of the executor: a row of ``executed_actions`` and a line of the audit file."""

    date: date
    plan_id: str
    action_id: str
    run_id: str
    account_id: str
    region: str
    resource_id: str
    resource_kind: str
    action: str
    option_name: str
    mode: str
    outcome: str
    reason: str
    started_at: datetime
    finished_at: datetime
    approved_by: str | None = None
    approval_id: str | None = None
    state_before: dict[str, Any] | None = None
    state_after: dict[str, Any] | None = None
    api_calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    monthly_savings_usd: float = 0.0
    #: the plan row's configurations (``current`` and ``proposed``), kept with the signed record
    plan_config: dict[str, Any] | None = None
    #: the safety policy in force for this decision (``ExecutorPolicy.in_force()``)
    policy: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")

    def to_record(self) -> dict[str, Any]:
        """The JSON-able audit record (one line of audit/actions.jsonl)."""
        record = asdict(self)
        record["event"] = "decision"
        record["date"] = self.date.isoformat()
        record["started_at"] = self.started_at.astimezone(UTC).isoformat()
        record["finished_at"] = self.finished_at.astimezone(UTC).isoformat()
        return record


def action_id_for(plan_id: str, account_id: str, resource_id: str, option_name: str) -> str:
    """A short id, stable for one plan: the same row of the same plan always has the same id."""
    digest = hashlib.sha256(f"{plan_id}|{account_id}|{resource_id}|{option_name}".encode()).hexdigest()
    return f"act-{digest[:12]}"


def actions_from_plan(plan: pa.Table, day: date) -> tuple[str, list[PlannedAction]]:
    """The plan id and every row of the plan that asks for a change (``keep`` rows are not actions)."""
    needed = ("plan_id", "account_id", "resource_id", "action", "option_name", "proposed_config")
    missing = [c for c in needed if c not in plan.column_names]
    if missing:
        raise PlanError(f"portfolio_plan of {day} has no column(s) {missing}; it does not follow PORTFOLIO_PLAN")
    rows = plan.to_pylist()
    plan_ids = sorted({str(r["plan_id"]) for r in rows if r.get("plan_id")})
    if len(plan_ids) > 1:
        raise PlanError(f"portfolio_plan of {day} holds several plan ids {plan_ids}; one partition is one plan")
    if not plan_ids:
        return "", []
    plan_id, content = plan_ids[0], table_sha256(plan)
    actions = []
    for r in rows:
        if (r.get("action") or "keep") in NO_OP_ACTIONS:
            continue
        actions.append(
            PlannedAction(
                action_id=action_id_for(plan_id, r["account_id"], r["resource_id"], r["option_name"]),
                plan_id=plan_id,
                date=day,
                account_id=str(r["account_id"]),
                region=str(r.get("region") or ""),
                zone=r.get("zone"),
                resource_id=str(r["resource_id"]),
                resource_kind=str(r.get("resource_kind") or ""),
                action=str(r["action"]),
                option_name=str(r["option_name"]),
                proposed_config=_json_object(r.get("proposed_config"), "proposed_config", r["resource_id"], day),
                current_config=_json_object(r.get("current_config"), "current_config", r["resource_id"], day),
                env=r.get("env"),
                monthly_savings_usd=float(r.get("monthly_savings_usd") or 0.0),
                plan_protected=bool(r.get("protected") or False),
                plan_sha256=content,
            )
        )
    actions.sort(key=lambda a: (-a.monthly_savings_usd, a.account_id, a.action_id))
    return plan_id, actions


def _json_object(raw: Any, column: str, resource_id: str, day: date) -> dict[str, Any]:
    if raw in (None, ""):
        return {}
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise PlanError(f"portfolio_plan of {day}: {column} of {resource_id} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise PlanError(f"portfolio_plan of {day}: {column} of {resource_id} is not a JSON object")
    return value


def dumps(value: Any) -> str:
    """Compact, sorted JSON (datetimes as ISO strings) for the audit columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
