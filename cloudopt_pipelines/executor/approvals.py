"""Approvals: who approved which actions of which plan, when. Append-only JSONL under $CLOUDOPT_HOME/approvals/.

An approval names the plan id it was given for. When the plan of that day has been re-materialised since
(a new plan id), the approval is stale and approves nothing: the executor never acts on a stale approval.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from cloudopt_pipelines.executor.model import PlannedAction
from cloudopt_pipelines.executor.policy import EXPLICIT_APPROVAL_ACTIONS
from cloudopt_pipelines.executor.store import JsonlLog, RecordLog

APPROVALS_FILE = "approvals.jsonl"
PLAN_TABLE = "portfolio_plan"
PLAN_CHECK_NAME = "plan_satisfies_constraints"
log = logging.getLogger(__name__)


class ApprovalError(ValueError):
    """An approval that cannot be recorded (unknown action ids, no approver, nothing to approve)."""


@dataclass(frozen=True)
class Approval:
    """One approval record."""

    approval_id: str
    approved_by: str
    approved_at: str
    plan_id: str
    date: str
    action_ids: tuple[str, ...] = ()
    all_actions: bool = False
    source: str = "cli"
    note: str = ""
    #: content hash of the plan partition that was approved: an edited partition approves nothing
    plan_sha256: str = ""

    def covers(self, action: PlannedAction, explicit: Sequence[str] = EXPLICIT_APPROVAL_ACTIONS) -> bool:
        """True when this approval names the action, or approves all and the action needs no explicit approval."""
        if action.action_id in self.action_ids:
            return True
        return self.all_actions and action.action not in explicit

    def to_record(self) -> dict[str, object]:
        record = asdict(self)
        record["action_ids"] = list(self.action_ids)
        return record

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Approval:
        return cls(
            approval_id=str(record["approval_id"]),
            approved_by=str(record["approved_by"]),
            approved_at=str(record["approved_at"]),
            plan_id=str(record["plan_id"]),
            date=str(record["date"]),
            action_ids=tuple(str(a) for a in record.get("action_ids") or ()),  # type: ignore[union-attr]
            all_actions=bool(record.get("all_actions")),
            source=str(record.get("source") or "cli"),
            note=str(record.get("note") or ""),
            plan_sha256=str(record.get("plan_sha256") or ""),
        )


class ApprovalStore:
    """The append-only approvals: the file ``<directory>/approvals.jsonl``, or a shared ``log`` (PostgreSQL,
    S3: ``executor/store.py``) when several pods approve and execute."""

    def __init__(self, directory: Path | str, log: RecordLog | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / APPROVALS_FILE
        self.log: RecordLog = log if log is not None else JsonlLog(self.path)

    def append(self, approval: Approval, expected: int | None = None) -> None:
        """Record ``approval``; with ``expected`` (how many approvals were read before deciding), only if
        none was added since (compare-and-set), else ``StoreConflict``."""
        if expected is None:
            self.log.append([approval.to_record()])
        else:
            self.log.append_if([approval.to_record()], expected)

    def for_day(self, day: date) -> list[Approval]:
        return [a for a in self.all() if a.date == day.isoformat()]

    def all(self) -> list[Approval]:
        return [Approval.from_record(r) for r in self.log.read()]


def new_approval(
    plan_id: str,
    day: date,
    actions: Sequence[PlannedAction],
    approved_by: str,
    action_ids: Iterable[str] = (),
    all_actions: bool = False,
    source: str = "cli",
    note: str = "",
    now: datetime | None = None,
) -> Approval:
    """Validate and build an approval of ``action_ids`` (or all) of plan ``plan_id``."""
    if not approved_by.strip():
        raise ApprovalError("an approval needs the approver's name (--by NAME)")
    if not plan_id:
        raise ApprovalError(f"the portfolio plan of {day} has no plan id; nothing can be approved")
    ids = tuple(dict.fromkeys(a.strip() for a in action_ids if a.strip()))
    if not ids and not all_actions:
        raise ApprovalError("name the actions to approve (--actions ID,ID,...) or approve them all (--all)")
    known = {a.action_id for a in actions}
    unknown = [a for a in ids if a not in known]
    if unknown:
        raise ApprovalError(
            f"action id(s) {unknown} are not actions of plan {plan_id} of {day}; "
            "list them with `cloudopt approve --date D --list`"
        )
    return Approval(
        approval_id=f"apr-{uuid.uuid4().hex[:12]}",
        approved_by=approved_by.strip(),
        approved_at=(now or datetime.now(UTC)).astimezone(UTC).isoformat(),
        plan_id=plan_id,
        date=day.isoformat(),
        action_ids=ids,
        all_actions=all_actions,
        source=source,
        note=note,
        plan_sha256=next((a.plan_sha256 for a in actions), ""),
    )


def find_approval(action: PlannedAction, approvals: Sequence[Approval]) -> tuple[Approval | None, str]:
    """The first valid approval covering ``action``, or None and why not (stale, terminate not named, none)."""
    stale: list[Approval] = []
    edited: list[Approval] = []
    for approval in approvals:
        if approval.date != action.date.isoformat():
            continue
        if approval.plan_id != action.plan_id:
            if approval.all_actions or action.action_id in approval.action_ids:
                stale.append(approval)
            continue
        if approval.covers(action):
            if approval.plan_sha256 != action.plan_sha256:
                edited.append(approval)
                continue
            return approval, ""
    if edited:
        e = edited[-1]
        return None, (
            f"approval {e.approval_id} (by {e.approved_by}) was given for plan {e.plan_id} with rows of sha256 "
            f"{e.plan_sha256[:12] or '(none recorded)'}, but the plan partition of {action.date} now hashes to "
            f"{action.plan_sha256[:12]} (its rows changed since, under the same plan id): review it and approve again"
        )
    if any(a.all_actions and a.plan_id == action.plan_id for a in approvals):
        return None, (
            f"not approved: '{action.action}' needs its own action id in an approval (--actions {action.action_id}); "
            "--all does not cover it"
        )
    if stale:
        s = stale[-1]
        return None, (
            f"stale approval {s.approval_id} (by {s.approved_by}) was given for plan {s.plan_id}, but the plan of "
            f"{action.date} is now {action.plan_id} (re-materialised since): approve again"
        )
    return None, f"not approved: no approval of plan {action.plan_id} names {action.action_id}"


@dataclass(frozen=True)
class PlanCheckStatus:
    """The verdict of the plan's constraint check for one plan partition: ``passed``, else why not."""

    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class PlanCheckRecord:
    """One evaluation of the plan's constraint check (the Dagster asset check ``plan_satisfies_constraints``
    of ``plan/portfolio_plan``), as the executor needs it."""

    day: date
    plan_id: str
    passed: bool
    plan_sha256: str
    solver_status: str = ""
    violation_count: int = 0
    violations: str = ""


PlanCheckReader = Callable[[date], "PlanCheckRecord | None"]
"""The latest check evaluation of a day's plan, or None: the asset layer reads it from the Dagster instance."""


def plan_check_status(record: PlanCheckRecord | None, day: date, plan_id: str, plan_sha256: str) -> PlanCheckStatus:
    """Did the independent constraint check pass on exactly these plan rows (plan id and content hash)?

    ``record`` is the latest evaluation of the day's plan check (``PlanCheckReader``)."""
    if record is None:
        return PlanCheckStatus(
            False,
            f"the portfolio plan of {day} ({plan_id}) has no recorded constraint check "
            f"(asset check {PLAN_CHECK_NAME} of plan/portfolio_plan); "
            "re-materialise plan/portfolio_plan for that day so that its check runs",
        )
    if record.plan_id != plan_id:
        return PlanCheckStatus(
            False,
            f"the constraint check of {day} is for plan {record.plan_id}, not {plan_id}; "
            "re-materialise plan/portfolio_plan",
        )
    if not record.passed:
        return PlanCheckStatus(
            False,
            f"the portfolio plan of {day} ({plan_id}) failed its constraint check "
            f"({record.violation_count} violation(s), solver {record.solver_status}: {record.violations[:300]}); "
            "the executor never acts on it: fix the constraints (config/constraints.yaml) and re-plan",
        )
    if record.plan_sha256 != plan_sha256:
        recorded = record.plan_sha256[:12] or "no content hash (an older check)"
        return PlanCheckStatus(
            False,
            f"the plan partition of {day} ({plan_id}) is not the one its constraint check passed on: its rows "
            f"hash to {plan_sha256[:12]}, the check recorded {recorded}. The partition was edited after it was "
            "written (the plan id alone does not show it); the executor never acts on it: re-materialise "
            f"plan/portfolio_plan for {day}",
        )
    return PlanCheckStatus(True)


def append_jsonl(path: Path, records: Iterable[dict[str, object]]) -> None:
    """Append whole lines and fsync. The first starts on a new line even after a torn last line (a crash
    mid-write), so a torn line is never glued to the next record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records).encode()
    with open(path, "a+b") as handle:
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                payload = b"\n" + payload
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, object]]:
    """Every complete record of a JSONL file. A line that is not a whole JSON object (torn by a crash
    mid-write) is skipped with a warning naming the file and the line."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                log.warning(
                    "%s line %d is not a complete JSON record (a write cut off by a crash?): skipped; "
                    "the records before and after it are read as usual",
                    path,
                    number,
                )
                continue
            records.append(record)
    return records
