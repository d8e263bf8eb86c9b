"""Actions stage: apply the approved portfolio plan of a day, safely, and record every decision."""

import dagster as dg
from pydantic import Field

from cloudopt_pipelines.assets.plan import plan_check_reader
from cloudopt_pipelines.executor.approvals import Approval, ApprovalError
from cloudopt_pipelines.executor.lock import ExecutorBusy, ExecutorLockLost
from cloudopt_pipelines.executor.model import Decision
from cloudopt_pipelines.executor.policy import (
    ENVIRONMENT_TAG_KEYS,
    K8S_PROTECTED_NAMESPACES,
    PRODUCTION_ALLOWED_ACTIONS,
    PRODUCTION_VALUES,
    PROTECT_TAG_KEY,
    PROTECT_TAG_VALUES,
    ChangeWindow,
    ExecutorPolicy,
    PolicyError,
)
from cloudopt_pipelines.executor.service import PlanNotFound, approve, execute_day
from cloudopt_pipelines.executor.targets import AwsTarget
from cloudopt_pipelines.partitions import daily_partitions
from cloudopt_pipelines.resources.executor import AwsExecutorResource, KubernetesExecutorResource
from cloudopt_pipelines.resources.storage import LakeResource

EXECUTED_ACTIONS_KEY = dg.AssetKey(["actions", "executed_actions"])
PORTFOLIO_PLAN_KEY = dg.AssetKey(["plan", "portfolio_plan"])
_DEFAULTS = ExecutorPolicy()


class ChangeWindowConfig(dg.Config):
    """A change window: opens at each cron time in ``timezone`` for ``duration_minutes``."""

    cron: str = Field(description="Five-field cron of the window's start, e.g. '0 22 * * 1-5'.")
    duration_minutes: int = Field(description="How long the window stays open.")
    timezone: str = Field(default="UTC", description="IANA time zone of the cron.")
    action_types: list[str] = Field(default=[], description="Actions it governs (empty: all).")
    environments: list[str] = Field(
        default=[], description="Environment tag values, or 'production'/'non-production', it governs (empty: all)."
    )
    name: str = Field(default="", description="A name shown in the audit.")


class ExecutedActionsConfig(dg.Config):
    """Run configuration of the executor: the mode, an optional approval, and the safety settings."""

    mode: str = Field(default="dry_run", description="'dry_run' (the default: report the calls) or 'apply'.")
    approved_by: str | None = Field(
        default=None, description="Approve through run config: the approver's name (recorded like `cloudopt approve`)."
    )
    approve_plan_id: str | None = Field(
        default=None, description="The plan id this run-config approval is for; required with approved_by."
    )
    approve_action_ids: list[str] = Field(default=[], description="Action ids approved through run config.")
    approve_all: bool = Field(default=False, description="Approve every action of the plan (never terminate).")
    protect_tag_key: str = Field(default=PROTECT_TAG_KEY, description="Tag that protects a resource.")
    protect_tag_values: list[str] = Field(default=list(PROTECT_TAG_VALUES), description="Values that protect.")
    environment_tag_keys: list[str] = Field(default=list(ENVIRONMENT_TAG_KEYS), description="Environment tags.")
    production_values: list[str] = Field(default=list(PRODUCTION_VALUES), description="Values meaning production.")
    untagged_is_production: bool = Field(default=True, description="Treat resources without environment tag as prod.")
    production_allowed_actions: list[str] = Field(
        default=list(PRODUCTION_ALLOWED_ACTIONS), description="Actions allowed on production resources."
    )
    max_actions_per_run: int = Field(default=_DEFAULTS.max_actions_per_run, description="Changes per run at most.")
    max_actions_per_day: int = Field(
        default=_DEFAULTS.max_actions_per_day,
        description="Changes per UTC day at most, every run of the day counted (from the audit).",
    )
    max_actions_per_account: int = Field(
        default=_DEFAULTS.max_actions_per_account,
        description="Changes per account and UTC day at most, every run of the day counted (from the audit).",
    )
    max_calls_per_second: float = Field(
        default=_DEFAULTS.max_calls_per_second, description="Mutating AWS calls per second at most (0: no limit)."
    )
    change_windows: list[ChangeWindowConfig] = Field(
        default=[], description="Change windows; none: approved actions run at once (the approval is the gate)."
    )
    schedule_method: str = Field(
        default=_DEFAULTS.schedule_method,
        description="How schedules are applied: custodian_tag, instance_scheduler_tag or stop_start.",
    )
    custodian_tag_key: str = Field(default=_DEFAULTS.custodian_tag_key, description="Cloud Custodian offhours tag.")
    instance_scheduler_tag_key: str = Field(
        default=_DEFAULTS.instance_scheduler_tag_key, description="AWS Instance Scheduler tag."
    )
    protected_namespaces: list[str] = Field(
        default=list(K8S_PROTECTED_NAMESPACES),
        description="Kubernetes namespaces never changed (kube-system, kube-public and kube-node-lease always).",
    )

    def policy(self) -> ExecutorPolicy:
        return ExecutorPolicy(
            protect_tag_key=self.protect_tag_key,
            protect_tag_values=tuple(v.lower() for v in self.protect_tag_values),
            environment_tag_keys=tuple(self.environment_tag_keys),
            production_values=tuple(v.lower() for v in self.production_values),
            untagged_is_production=self.untagged_is_production,
            production_allowed_actions=tuple(self.production_allowed_actions),
            max_actions_per_run=self.max_actions_per_run,
            max_actions_per_day=self.max_actions_per_day,
            max_actions_per_account=self.max_actions_per_account,
            max_calls_per_second=self.max_calls_per_second,
            change_windows=tuple(
                ChangeWindow(
                    cron=w.cron,
                    duration_minutes=w.duration_minutes,
                    timezone=w.timezone,
                    action_types=tuple(w.action_types),
                    environments=tuple(w.environments),
                    name=w.name,
                )
                for w in self.change_windows
            ),
            schedule_method=self.schedule_method,
            custodian_tag_key=self.custodian_tag_key,
            instance_scheduler_tag_key=self.instance_scheduler_tag_key,
            protected_namespaces=tuple(self.protected_namespaces),
        )


@dg.asset(
    key=EXECUTED_ACTIONS_KEY,
    partitions_def=daily_partitions,
    deps=[PORTFOLIO_PLAN_KEY],
    kinds={"python", "aws", "parquet"},
    group_name="actions",
    check_specs=[
        dg.AssetCheckSpec(
            "no_failed_actions",
            asset=EXECUTED_ACTIONS_KEY,
            description="No action of this run failed (a failed or interrupted action needs a look).",
        )
    ],
)
def executed_actions(
    context: dg.AssetExecutionContext,
    config: ExecutedActionsConfig,
    lake: LakeResource,
    aws_executor: AwsExecutorResource,
    k8s_executor: KubernetesExecutorResource,
) -> dg.MaterializeResult:
    """Applies the approved actions of the day's portfolio plan through the executor role, dry run by default.

    Only approved actions of the current plan id run; protected (live tag) resources are never touched;
    production gets only the allowed action types; blast radius, rate limit and change windows apply;
    re-runs change nothing already in its target state (checked live); every change is verified, and a
    resize that does not come back is rolled back. Commitments are exported as a purchase list. Every
    decision is a row here and a line of $CLOUDOPT_HOME/audit/actions.jsonl (see docs/executor.md). With
    CLOUDOPT_K8S_CLUSTERS set, Kubernetes rows are patched through the official client too (server-side
    dryRun=All in a dry run; protected namespaces and cloudopt.io/protect never touched)."""
    day = daily_partitions.time_window_for_partition_key(context.partition_key).start.date()
    store, paths = lake.get_lake(), aws_executor.get_paths()
    checks = plan_check_reader(context.instance)
    try:
        policy = config.policy()
        extra: list[Approval] = []
        if config.approved_by:
            if not config.approve_plan_id:
                raise ApprovalError(
                    "a run-config approval must name the plan it approves (approve_plan_id); "
                    "see `cloudopt approve --date D --list`"
                )
            extra.append(
                approve(
                    store,
                    paths,
                    day,
                    config.approved_by,
                    config.approve_action_ids,
                    config.approve_all,
                    source="run_config",
                    plan_id=config.approve_plan_id,
                    checks=checks,
                )
            )
        k8s = k8s_executor.get_target()
        result, path = execute_day(
            store,
            paths,
            day,
            config.mode,
            [AwsTarget(aws_executor.get_aws()), *([k8s] if k8s is not None else [])],
            policy,
            extra,
            run_id=context.run.run_id,
            checks=checks,
        )
    except (PlanNotFound, ApprovalError, PolicyError, ExecutorBusy, ExecutorLockLost, ValueError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    counts = result.counts()
    failed = result.by_outcome("failed")
    context.log.info(f"executor {config.mode} on plan {result.plan_id} of {day}: {counts}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(result.decisions),
            "path": dg.MetadataValue.path(str(path)),
            "mode": config.mode,
            "plan_id": result.plan_id,
            **{f"outcome_{o}": counts.get(o, 0) for o in ("would_apply", "applied", "skipped", "failed")},
            "outcome_rolled_back": counts.get("rolled_back", 0),
            "outcome_exported": counts.get("exported", 0),
            "applied_monthly_savings_usd": float(sum(d.monthly_savings_usd for d in result.by_outcome("applied"))),
            "exports": dg.MetadataValue.json([str(p) for p in result.exports]),
            "preview": dg.MetadataValue.md(_preview(result.decisions)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_failed_actions",
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "failed": len(failed),
                    "failed_action_ids": dg.MetadataValue.json([d.action_id for d in failed]),
                },
            )
        ],
    )


def _preview(decisions: list[Decision], rows: int = 15) -> str:
    if not decisions:
        return "_no actions in the plan_"
    lines = ["| action_id | resource | action | outcome | reason |", "|---|---|---|---|---|"]
    for d in decisions[:rows]:
        reason = d.reason.replace("|", "/")[:90]
        lines.append(f"| {d.action_id} | {d.resource_id} | {d.action} | {d.outcome} | {reason} |")
    return "\n".join(lines)
