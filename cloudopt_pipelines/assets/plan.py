"""Plan stage: the portfolio plan across every account of a day, and the job that materialises it."""

import json
from collections.abc import Sequence
from datetime import date, timedelta

import dagster as dg
import pyarrow as pa
from pydantic import Field

from cloudopt_pipelines.assets.recommendations import RESOURCES_KEY, recommendation_key
from cloudopt_pipelines.executor.approvals import PLAN_CHECK_NAME, PlanCheckReader, PlanCheckRecord
from cloudopt_pipelines.optimizers.base import DeploymentOptimizer
from cloudopt_pipelines.optimizers.portfolio import (
    Candidate,
    NoAccountsError,
    PlanProblem,
    Unpriced,
    changes_markdown,
    config_path,
    explanation_text,
    has_plan,
    plan_summary,
    plan_table,
    problem_for_day,
    solve_problem,
    verify_plan,
    warm_start_from_plan,
    warm_start_offered,
)
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, daily_partitions
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.storage.digest import table_sha256
from cloudopt_pipelines.storage.lake import Lake

PLAN_PREFIX = "plan"
PLAN_JOB = "portfolio_plan_job"
PLAN_CHECK = PLAN_CHECK_NAME
PLAN_KEY = dg.AssetKey([PLAN_PREFIX, "portfolio_plan"])
SAVINGS_REPORT_KEY = dg.AssetKey(["reports", "savings_report"])  # assets/report.py, run by the plan job
ACROSS_ACCOUNTS = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="date")
#: The plan of day D reads the plan of D - 1 (its warm start); the first day has none.
YESTERDAY = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)


class PortfolioPlanConfig(dg.Config):
    """Run configuration of the portfolio plan."""

    constraints_path: str | None = Field(
        default=None,
        description="Constraints file (YAML); default: $CLOUDOPT_PLAN_CONSTRAINTS, else config/constraints.yaml.",
    )
    time_limit_s: float = Field(default=60.0, description="Wall-clock limit of the solve, seconds.")
    mip_gap: float = Field(default=1e-4, description="Relative optimality gap the solver may stop at.")
    warm_start: bool = Field(
        default=True,
        description="Start the solve from the previous day's plan when it exists (same gap and check either way).",
    )


def read_plan_inputs(
    lake: Lake, day: date, optimizers: Sequence[DeploymentOptimizer]
) -> tuple[list[str], list[list[Candidate]], list[Unpriced], pa.Table | None]:
    """The accounts with recommendations on ``day`` (from any optimiser), each optimiser's candidates, the
    resources the optimisers could not price (left out of the candidates, with their reasons) and those
    accounts' ``resources`` rows."""
    accounts: set[str] = set()
    candidate_sets: list[list[Candidate]] = []
    unpriced: list[Unpriced] = []
    for optimizer in optimizers:
        present = sorted({a for a, d in lake.partitions(optimizer.table_name) if a and d == day.isoformat()})
        accounts.update(present)
        tables = [lake.read(optimizer.table_name, a, day) for a in present]
        if tables:
            table = pa.concat_tables(tables)
            candidate_sets.append(optimizer.candidates(table))
            unpriced.extend(optimizer.unpriced(table))
        else:
            candidate_sets.append([])
    if not accounts:
        tables = ", ".join(o.table_name for o in optimizers)
        raise NoAccountsError(
            f"no account has a recommendations partition for {day} in {tables} under {lake.root}; "
            f"materialise the daily pipeline for that day first (cloudopt run --start {day} --end {day})"
        )
    resources = [lake.read("resources", a, day) for a in sorted(accounts) if lake.partition_file("resources", a, day)]
    return (
        sorted(accounts),
        candidate_sets,
        unpriced,
        pa.concat_tables(resources, promote_options="permissive") if resources else None,
    )


def plan_problem(
    lake: Lake, day: date, optimizers: Sequence[DeploymentOptimizer], constraints_path: str | None = None
) -> tuple[list[str], PlanProblem]:
    """The accounts present and the plan problem of ``day`` as the asset builds it (also ``cloudopt plan --date``)."""
    accounts, candidate_sets, unpriced, resources = read_plan_inputs(lake, day, optimizers)
    return accounts, problem_for_day(day, candidate_sets, resources, constraints_path, unpriced=unpriced)


def build_portfolio_plan_asset(optimizers: Sequence[DeploymentOptimizer]) -> dg.AssetsDefinition:
    """The plan asset, reading every selected optimiser's recommendations and the inventory of the day."""
    deps = [dg.AssetDep(recommendation_key(o), partition_mapping=ACROSS_ACCOUNTS) for o in optimizers]
    deps.append(dg.AssetDep(RESOURCES_KEY, partition_mapping=ACROSS_ACCOUNTS))
    deps.append(dg.AssetDep(PLAN_KEY, partition_mapping=YESTERDAY))

    @dg.asset(
        key=[PLAN_PREFIX, "portfolio_plan"],
        partitions_def=daily_partitions,
        deps=deps,
        kinds={"python", "parquet"},
        group_name=PLAN_PREFIX,
        check_specs=[
            dg.AssetCheckSpec(
                PLAN_CHECK,
                asset=PLAN_KEY,
                description="The written plan rows satisfy every constraint, recomputed without the solver; "
                "fails (and blocks what follows) when the constraints have no feasible plan.",
                blocking=True,
            )
        ],
    )
    def portfolio_plan(
        context: dg.AssetExecutionContext, config: PortfolioPlanConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        """One decision per resource across every account of the day: the LP (HiGHS) picks, among every
        selected optimiser's options, the cheapest plan under the constraints file (per group and environment,
        see docs/portfolio_plan.md). Keeps are rows too, each with its reason. Without a feasible plan every
        row is a keep, the reason says what to relax, and the blocking check fails. The solve starts from
        the previous day's plan (a declared input of this asset) when it exists."""
        day = date.fromisoformat(context.partition_key)
        store = lake.get_lake()
        path, chosen_by = config_path(config.constraints_path)
        try:
            accounts, problem = plan_problem(store, day, optimizers, config.constraints_path)
        except NoAccountsError as exc:
            raise dg.Failure(str(exc)) from None
        registered = sorted(context.instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME))
        missing = [a for a in registered if a not in accounts]
        if missing:
            context.log.warning(
                f"no recommendations for {day} in account(s) {', '.join(missing)}: planned without them"
            )

        previous = day - timedelta(days=1)
        warm_start = None
        if config.warm_start and store.partition_file("portfolio_plan", day=previous) is not None:
            warm_start = warm_start_from_plan(store.read("portfolio_plan", day=previous))
        solution = solve_problem(
            problem, time_limit_s=config.time_limit_s, mip_gap=config.mip_gap, warm_start=warm_start
        )
        written = store.write("portfolio_plan", plan_table(problem, solution), day=day)
        plan = store.read("portfolio_plan", day=day)  # the check reads what was written, not what was meant
        violations = verify_plan(plan, problem)
        summary = plan_summary(problem, solution, plan)
        if not has_plan(solution):
            context.log.error(f"no feasible portfolio plan for {day}: {explanation_text(solution)}")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": plan.num_rows,
                "path": dg.MetadataValue.path(str(written)),
                "plan_id": summary["plan_id"],
                "solver_status": summary["solver_status"],
                "total_monthly_savings_usd": summary["total_monthly_savings_usd"],
                "baseline_monthly_cost_usd": summary["baseline_monthly_cost_usd"],
                "total_one_time_cost_usd": summary["total_one_time_cost_usd"],
                "resources": summary["resources"],
                "changes": summary["changes"],
                "binding_constraints": dg.MetadataValue.json(summary["binding_constraints"]),
                "solve_seconds": summary["solve_seconds"],
                "build_seconds": summary["build_seconds"],
                "solve_method": solution.method or solution.solver,
                "warm_start": dg.MetadataValue.json(
                    {
                        "from": previous.isoformat() if warm_start is not None else None,
                        "offered": warm_start_offered(problem, warm_start) if warm_start else 0,
                        "resources": solution.warm_start_resources,
                    }
                ),
                "accounts": dg.MetadataValue.json(accounts),
                "missing_accounts": dg.MetadataValue.json(missing),
                "constraints_file": f"{path} ({chosen_by})",
                "config_notes": dg.MetadataValue.json(problem.notes),
                "unpriced_resources": dg.MetadataValue.json(problem.unpriced),
                "top_changes": dg.MetadataValue.md(changes_markdown(plan)),
                **({"explanation": summary["explanation"]} if summary["explanation"] else {}),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=PLAN_CHECK,
                    passed=not violations,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=None if not violations else violations[0],
                    metadata={
                        **plan_check_metadata(
                            day, summary["plan_id"], table_sha256(plan), summary["solver_status"], violations
                        ),
                        **({"explanation": summary["explanation"]} if summary["explanation"] else {}),
                    },
                )
            ],
        )

    return portfolio_plan


def plan_check_metadata(
    day: date, plan_id: str, plan_sha256: str, solver_status: str, violations: list[str]
) -> dict[str, dg.MetadataValue]:
    """What the check records beside its verdict: the day, plan id and content hash of the rows it checked
    (the executor acts only on exactly those rows), and the violations."""
    return {
        "date": dg.MetadataValue.text(day.isoformat()),
        "plan_id": dg.MetadataValue.text(plan_id),
        "plan_sha256": dg.MetadataValue.text(plan_sha256),
        "solver_status": dg.MetadataValue.text(solver_status),
        "violation_count": dg.MetadataValue.int(len(violations)),
        "violations": dg.MetadataValue.json(violations[:50]),
    }


def latest_plan_check(instance: dg.DagsterInstance, day: date, page: int = 100) -> PlanCheckRecord | None:
    """The latest evaluation of the plan check for ``day`` recorded in the Dagster instance, or None.

    Dagster 1.13 records a partitioned asset's check evaluation without its partition key, so the day is
    matched on the ``date`` the check writes into its metadata."""
    check_key = dg.AssetCheckKey(PLAN_KEY, PLAN_CHECK)
    cursor = None
    while True:
        records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=page, cursor=cursor)
        for record in records:
            evaluation = record.evaluation
            if not isinstance(evaluation, dg.AssetCheckEvaluation):
                continue  # planned, not evaluated yet
            meta = {k: v.value for k, v in evaluation.metadata.items()}
            if meta.get("date") != day.isoformat():
                continue
            return PlanCheckRecord(
                day=day,
                plan_id=str(meta.get("plan_id") or ""),
                passed=evaluation.passed,
                plan_sha256=str(meta.get("plan_sha256") or ""),
                solver_status=str(meta.get("solver_status") or ""),
                violation_count=int(meta.get("violation_count") or 0),
                violations=json.dumps(meta.get("violations") or []),
            )
        if len(records) < page:
            return None
        cursor = records[-1].id


def plan_check_reader(instance: dg.DagsterInstance) -> PlanCheckReader:
    """The executor's view of the plan check: the asset check's latest evaluation per day, in ``instance``."""
    return lambda day: latest_plan_check(instance, day)


portfolio_plan_job = dg.define_asset_job(
    PLAN_JOB,
    selection=dg.AssetSelection.assets(PLAN_KEY, SAVINGS_REPORT_KEY),
    description="The portfolio plan of one UTC day across every account (after the accounts' daily runs), "
    "then its savings report.",
)
