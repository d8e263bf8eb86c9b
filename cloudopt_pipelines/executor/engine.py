"""The executor's decisions: which approved actions run, in which mode, and what is recorded. No Dagster.

For every action of the plan, in order of savings: plug-in found? approved (for this very plan id)?
the live resource protected? production allowed? inside its change window? already in the target state
(live)? changed since the plan? within the blast radius? Then a dry run reports the exact calls, and an
apply records its intent, calls, verifies the live state and rolls back at once where the plug-in asks for
it. Every decision is one ``Decision``, appended to the audit file as it is made.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cloudopt_pipelines.executor.actions import ActionPlugin, PluginKey, Proposal, RollbackRefused
from cloudopt_pipelines.executor.approvals import Approval, find_approval
from cloudopt_pipelines.executor.audit import AuditLog
from cloudopt_pipelines.executor.aws import ExecutorAws, ExecutorError
from cloudopt_pipelines.executor.exports import purchase_rows, write_purchase_list
from cloudopt_pipelines.executor.model import MODES, Decision, PlannedAction
from cloudopt_pipelines.executor.policy import BlastRadius, ExecutorPolicy
from cloudopt_pipelines.executor.store import DocumentStore
from cloudopt_pipelines.executor.targets import (
    ANY_ACTION,
    AwsTarget,
    ExecutionTarget,
    as_targets,
    find_plugin,
    plugin_table,
)


class RollbackError(ExecutorError):
    """A rollback that cannot start (unknown action id, nothing applied, already rolled back)."""


@dataclass
class RunResult:
    """What one executor run decided."""

    run_id: str
    mode: str
    plan_id: str
    day: date
    decisions: list[Decision] = field(default_factory=list)
    exports: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(d.outcome for d in self.decisions))

    def by_outcome(self, outcome: str) -> list[Decision]:
        return [d for d in self.decisions if d.outcome == outcome]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Executor:
    """Applies (or dry-runs) the approved actions of one plan through the plug-ins."""

    def __init__(
        self,
        targets: ExecutorAws | ExecutionTarget | Sequence[ExecutionTarget],
        audit: AuditLog,
        exports_dir: Path | DocumentStore,
        policy: ExecutorPolicy | None = None,
        plugins: Mapping[PluginKey, ActionPlugin] | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        """``targets``: where actions are applied (an ``ExecutorAws`` is the AWS target); ``plugins`` replaces
        the AWS target's plug-ins (``(resource kind, action)`` -> plug-in)."""
        if plugins is not None and isinstance(targets, ExecutorAws):
            targets = AwsTarget(targets, plugins)
        self.targets = as_targets(targets)
        self.audit = audit
        self.exports_dir = exports_dir if hasattr(exports_dir, "put") else Path(exports_dir)  # a shared store
        self.policy = policy or ExecutorPolicy()
        self.plugins = plugin_table(self.targets)
        self.now = now
        for target in self.targets:
            target.limit_rate(self.policy.max_calls_per_second)

    # ---------------------------------------------------------------------------------------- run

    def run(
        self,
        day: date,
        plan_id: str,
        actions: Sequence[PlannedAction],
        approvals: Sequence[Approval],
        mode: str,
        run_id: str | None = None,
    ) -> RunResult:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}; the mode is always explicit")
        result = RunResult(run_id=run_id or uuid.uuid4().hex, mode=mode, plan_id=plan_id, day=day)
        today = self.now().astimezone(UTC).date()
        blast = BlastRadius(
            self.policy.max_actions_per_run,
            self.policy.max_actions_per_account,
            self.policy.max_actions_per_day,
            before=self.audit.changes_on(today),
            day=f"{today} (UTC)",
        )
        unreachable: dict[str, str] = {}
        commitments = [a for a in actions if a.is_commitment]
        if commitments:
            approved = {a.action_id: (find_approval(a, approvals)[0] or _NoApproval).approved_by for a in commitments}
            paths = write_purchase_list(self.exports_dir, day, purchase_rows(commitments, approved))
            result.exports.extend(paths)
        for action in actions:
            decision = self._decide(action, approvals, mode, result.run_id, blast, unreachable, result.exports)
            self.audit.decision(decision)
            result.decisions.append(decision)
        return result

    def _decision(self, action: PlannedAction, mode: str, run_id: str, started: datetime, **fields: Any) -> Decision:
        return Decision(
            date=action.date,
            plan_id=action.plan_id,
            action_id=action.action_id,
            run_id=run_id,
            account_id=action.account_id,
            region=action.region,
            resource_id=action.resource_id,
            resource_kind=action.resource_kind,
            action=action.action,
            option_name=action.option_name,
            mode=mode,
            started_at=started,
            finished_at=self.now(),
            monthly_savings_usd=action.monthly_savings_usd,
            plan_config={"current": action.current_config, "proposed": action.proposed_config},
            policy=self.policy.in_force(),
            **fields,
        )

    def _decide(
        self,
        action: PlannedAction,
        approvals: Sequence[Approval],
        mode: str,
        run_id: str,
        blast: BlastRadius,
        unreachable: dict[str, str],
        exports: Sequence[Path],
    ) -> Decision:
        started = self.now()

        def skipped(reason: str, **extra: Any) -> Decision:
            return self._decision(action, mode, run_id, started, outcome="skipped", reason=reason, **extra)

        approval, why = find_approval(action, approvals)
        who = {"approved_by": approval.approved_by, "approval_id": approval.approval_id} if approval else {}
        if action.is_commitment:
            where = next((p for p in exports if p.suffix == ".csv"), None)
            return self._decision(
                action,
                mode,
                run_id,
                started,
                outcome="exported",
                **who,
                reason=f"commitment purchases are never executed: listed in {where} for a person to buy",
            )
        found = find_plugin(self.plugins, action.resource_kind, action.action)
        if found is None:
            return skipped(self._no_plugin(action.resource_kind, action.action))
        target, plugin = found
        if plugin.advisory:
            return skipped(f"not applicable: advisory, never executed; {plugin.advice(action)}", **who)
        if approval is None:
            return skipped(why)
        if action.account_id in unreachable:
            return skipped(f"not attempted: {unreachable[action.account_id]}", **who)
        region = action.region or target.default_region()
        try:
            ctx = target.context(action.account_id, region, self.policy, self.now)
            live = target.read_live(plugin, ctx, action)
        except Exception as exc:
            return self._failed(
                target, action, mode, run_id, started, exc, region, unreachable, "reading its live state", who
            )
        state_now = {**live.state, "tags": live.tags} if live.exists else {"exists": False}
        if live.exists:
            protected, because = self.policy.protection(live.tags, live.namespace)
            if protected:
                return skipped(because, state_before=state_now, **who)
            if action.plan_protected:
                return skipped("protected: the plan marks it protected", state_before=state_now, **who)
            ok, because = self.policy.production_check(action.action, live.tags)
            if not ok:
                return skipped(because, state_before=state_now, **who)
            ok, because = self.policy.window_check(action.action, live.tags, self.now())
            if not ok:
                return skipped(because, state_before=state_now, **who)
        try:
            proposal = plugin.plan(ctx, action, live, self.audit.history(action.action_id))
        except Exception as exc:
            return self._failed(target, action, mode, run_id, started, exc, region, unreachable, "planning", who)
        if proposal.status != "ready":
            return skipped(proposal.reason, state_before=proposal.before or state_now, **who)
        # The state the action starts from (an interrupted earlier attempt's, if any) against the plan's.
        changed = plugin.changes_since_plan(action, {**live.state, **proposal.before})
        if changed:
            return skipped(
                f"changed since the plan ({'; '.join(changed)}): left as it is; re-plan to act on it",
                state_before=proposal.before or state_now,
                **who,
            )
        admitted, because = blast.admit(action.account_id)
        if not admitted:
            return skipped(because, state_before=proposal.before, **who)
        planned = [c.to_dict() for c in proposal.calls]
        if mode == "dry_run":
            try:
                checked = plugin.validate(ctx, action, proposal)
            except Exception as exc:
                error = target.describe_error(exc, action.account_id, region, "validating the calls (server dry run)")
                return self._decision(
                    action,
                    mode,
                    run_id,
                    started,
                    outcome="failed",
                    reason="the server's dry run refused the calls an apply would make",
                    state_before=proposal.before,
                    api_calls=planned,
                    error=str(error),
                    **who,
                )
            return self._decision(
                action,
                mode,
                run_id,
                started,
                outcome="would_apply",
                reason=f"{proposal.reason}; accepted by the server's dry run" if checked else proposal.reason,
                state_before=proposal.before,
                state_after={**proposal.target, **checked},
                api_calls=planned,
                **who,
            )
        return self._apply(target, action, plugin, ctx, region, proposal, run_id, started, unreachable, who)

    def _apply(
        self,
        target: ExecutionTarget,
        action: PlannedAction,
        plugin: ActionPlugin,
        ctx: Any,
        region: str,
        proposal: Proposal,
        run_id: str,
        started: datetime,
        unreachable: dict[str, str],
        who: dict[str, Any],
    ) -> Decision:
        mode = "apply"
        self.audit.intent(
            {
                "date": action.date.isoformat(),
                "plan_id": action.plan_id,
                "action_id": action.action_id,
                "run_id": run_id,
                "account_id": action.account_id,
                "region": action.region,
                "resource_id": action.resource_id,
                "resource_kind": action.resource_kind,
                "action": action.action,
                "option_name": action.option_name,
                "mode": mode,
                "state_before": proposal.before,
                "api_calls": [c.to_dict() for c in proposal.calls],
                **who,
            },
            at=self.now(),
        )
        with target.recording() as calls:
            try:
                applied = plugin.apply(ctx, action, proposal)
                check = plugin.verify(ctx, action, proposal, applied)
                if check.ok:
                    return self._decision(
                        action,
                        mode,
                        run_id,
                        started,
                        outcome="applied",
                        reason=f"{proposal.reason}; verified",
                        state_before=proposal.before,
                        state_after={**check.observed, **applied},
                        api_calls=[c.to_dict() for c in calls],
                        **who,
                    )
                error = ExecutorError(f"verification failed: {check.reason}")
            except Exception as exc:
                error = target.describe_error(exc, action.account_id, region, f"applying {action.action}")
            if error.unreachable:
                unreachable[action.account_id] = f"account {action.account_id} unreachable after {error}"
            if plugin.rollback_on_failure and not error.unreachable:
                record = {
                    "resource_id": action.resource_id,
                    "resource_kind": action.resource_kind,
                    "action_id": action.action_id,
                    "account_id": action.account_id,
                    "action": action.action,
                    "date": action.date.isoformat(),
                    "plan_config": {"current": action.current_config, "proposed": action.proposed_config},
                    "state_before": proposal.before,
                }
                try:
                    after = plugin.rollback(ctx, record)
                except Exception as exc:
                    second = target.describe_error(exc, action.account_id, region, "rolling back")
                    return self._decision(
                        action,
                        mode,
                        run_id,
                        started,
                        outcome="failed",
                        reason="apply failed and the automatic rollback failed too: check the resource",
                        state_before=proposal.before,
                        api_calls=[c.to_dict() for c in calls],
                        error=f"{error}; rollback: {second}",
                        **who,
                    )
                return self._decision(
                    action,
                    mode,
                    run_id,
                    started,
                    outcome="rolled_back",
                    reason="apply failed; rolled back automatically to the recorded state",
                    state_before=proposal.before,
                    state_after=after,
                    api_calls=[c.to_dict() for c in calls],
                    error=str(error),
                    **who,
                )
            return self._decision(
                action,
                mode,
                run_id,
                started,
                outcome="failed",
                reason=f"failed while applying: {proposal.reason}",
                state_before=proposal.before,
                api_calls=[c.to_dict() for c in calls],
                error=str(error),
                **who,
            )

    def _failed(
        self,
        target: ExecutionTarget,
        action: PlannedAction,
        mode: str,
        run_id: str,
        started: datetime,
        exc: BaseException,
        region: str,
        unreachable: dict[str, str],
        doing: str,
        who: dict[str, Any],
    ) -> Decision:
        error = target.describe_error(exc, action.account_id, region, doing)
        if error.unreachable:
            unreachable[action.account_id] = f"account {action.account_id} unreachable after {error}"
        return self._decision(
            action, mode, run_id, started, outcome="failed", reason=f"failed while {doing}", error=str(error), **who
        )

    # ----------------------------------------------------------------------------------- rollback

    def rollback(
        self,
        action_id: str,
        mode: str,
        by: str,
        run_id: str | None = None,
        planned: PlannedAction | None = None,
    ) -> Decision:
        """Undo an applied action from its recorded state; refuses clearly where that is impossible: a record
        that fails its signature, or a state to restore the plan (``planned``, else the record's copy of the
        plan row) never held."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if not by.strip():
            raise ValueError("a rollback needs the name of who rolls back (--by NAME), not an empty one")
        by = by.strip()
        history = [r for r in self.audit.history(action_id) if r.get("event") == "decision"]
        if not history:
            raise RollbackError(f"no audit record of action {action_id} in {self.audit.log.location}")
        applied_at = [i for i, r in enumerate(history) if r.get("outcome") == "applied" and r.get("mode") == "apply"]
        if not applied_at:
            raise RollbackError(f"action {action_id} was never applied (outcomes: {[r['outcome'] for r in history]})")
        record = history[applied_at[-1]]
        later = [
            r for r in history[applied_at[-1] + 1 :] if r.get("outcome") == "rolled_back" and r.get("mode") == "apply"
        ]
        if later:
            raise RollbackError(f"action {action_id} was already rolled back at {later[-1].get('finished_at')}")
        found = find_plugin(self.plugins, str(record.get("resource_kind") or ""), str(record["action"]))
        if found is None:
            no_plugin = self._no_plugin(str(record.get("resource_kind") or ""), str(record["action"]))
            raise RollbackError(f"{no_plugin}: cannot roll back {action_id}")
        target, plugin = found
        action = _action_of(record)
        started = self.now()
        run_id = run_id or uuid.uuid4().hex
        region = action.region or target.default_region()
        ctx = target.context(action.account_id, region, self.policy, self.now)
        base = {"approved_by": by, "approval_id": None, "state_before": record.get("state_after")}

        def decision(outcome: str, reason: str, **fields: Any) -> Decision:
            d = self._decision(action, mode, run_id, started, outcome=outcome, reason=reason, **{**base, **fields})
            self.audit.decision(d)
            return d

        refusal = self._untrusted(action_id, record, plugin, planned) or plugin.rollback_refusal(record)
        if refusal:
            decision("skipped", f"rollback refused: {refusal}")
            raise RollbackRefused(refusal)
        try:
            live = target.read_live(plugin, ctx, action)
            if live.exists:
                protected, because = self.policy.protection(live.tags, live.namespace)
                if protected:
                    return decision("skipped", f"rollback refused: {because}")
            if mode == "dry_run":
                calls = [c.to_dict() for c in plugin.rollback_plan(record)]
                return decision("would_apply", f"rollback of {action_id} by {by}", api_calls=calls)
            self.audit.intent({**record, "run_id": run_id, "event": "intent", "mode": mode}, at=self.now())
            with target.recording() as calls:
                after = plugin.rollback(ctx, record)
                return decision(
                    "rolled_back",
                    f"rolled back by {by} (cloudopt rollback)",
                    state_after=after,
                    api_calls=[c.to_dict() for c in calls],
                )
        except RollbackRefused as exc:
            decision("skipped", f"rollback refused: {exc}")
            raise
        except Exception as exc:
            error = target.describe_error(exc, action.account_id, region, f"rolling back {action.action}")
            decision("failed", "rollback failed", error=str(error))
            raise error from None

    def _no_plugin(self, kind: str, action: str) -> str:
        kinds = sorted(k for k, a in self.plugins if a == action)
        applied = sorted({a for _, a in self.plugins if a != ANY_ACTION})
        if kinds:
            return (
                f"no plug-in for action '{action}' on {kind or 'unknown'} resources "
                f"(its plug-ins act on {', '.join(kinds)})"
            )
        return f"no plug-in for action '{action}' (only {', '.join(applied)} are applied)"

    def _untrusted(
        self, action_id: str, record: Mapping[str, Any], plugin: ActionPlugin, planned: PlannedAction | None
    ) -> str | None:
        """Why the audit cannot be trusted to roll ``action_id`` back: an edited or unsigned record of it, or a
        type to restore that the plan never held."""
        for r in self.audit.history(action_id):
            problem = self.audit.verification_error(r)
            if problem:
                return f"{problem}; nothing is rolled back from it: check the audit file and roll back by hand"
        configs = (
            (planned.current_config, planned.proposed_config)
            if planned is not None
            else (
                (record.get("plan_config") or {}).get("current") or {},
                (record.get("plan_config") or {}).get("proposed") or {},
            )
        )
        refusal = plugin.restore_refusal(record, *configs)
        if refusal or not plugin.restores_instance_type:
            return refusal
        held = sorted({str(c["instance_type"]) for c in configs if c.get("instance_type")})
        wanted = (record.get("state_before") or {}).get("instance_type")
        if wanted and wanted not in held:
            return (
                f"the audit record of {action_id} would restore {record.get('resource_id')} to type {wanted}, a "
                f"type the plan of {record.get('date')} never held ({', '.join(held) or 'none recorded'}); "
                "refusing to resize to it: check the audit file and the instance by hand"
            )
        return None


class _NoApproval:
    approved_by = None


def _action_of(record: Mapping[str, Any]) -> PlannedAction:
    return PlannedAction(
        action_id=str(record["action_id"]),
        plan_id=str(record.get("plan_id") or ""),
        date=date.fromisoformat(str(record["date"])),
        account_id=str(record["account_id"]),
        region=str(record.get("region") or ""),
        zone=None,
        resource_id=str(record["resource_id"]),
        resource_kind=str(record.get("resource_kind") or ""),
        action=str(record["action"]),
        option_name=str(record.get("option_name") or record["action"]),
        proposed_config=dict((record.get("plan_config") or {}).get("proposed") or {}),
        current_config=dict((record.get("plan_config") or {}).get("current") or {}),
        monthly_savings_usd=float(record.get("monthly_savings_usd") or 0.0),
    )
