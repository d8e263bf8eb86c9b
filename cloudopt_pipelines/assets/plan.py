"""Plan stage: the portfolio plan across every account of a day, and the job that materialises it."""

import json
from datetime import UTC, date, datetime

import dagster as dg
import pyarrow as pa
from pydantic import Field

from cloudopt_pipelines.optimizers.portfolio import (
    NoAccountsError,
    changes_markdown,
    config_path,
    explanation_text,
    has_plan,
    plan_summary,
    plan_table,
    problem_for_day,
    solve_problem,
    verify_plan,
)
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, daily_partitions
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.storage.schemas import PORTFOLIO_PLAN_CHECKS

PLAN_PREFIX = "plan"
PLAN_JOB = "portfolio_plan_job"
PLAN_CHECK = "plan_satisfies_constraints"
RECOMMENDATIONS_KEY = dg.AssetKey(["recommendations", "recommendations"])


class PortfolioPlanConfig(dg.Config):
    """Run configuration of the portfolio plan."""

    constraints_path: str | None = Field(
        default=None,
        description="Constraints file (YAML); default: $CLOUDOPT_PLAN_CONSTRAINTS, else config/constraints.yaml.",
    )
    time_limit_s: float = Field(default=60.0, description="Wall-clock limit of the solve, seconds.")
    mip_gap: float = Field(default=1e-4, description="Relative optimality gap the solver may stop at.")


@dg.asset(
    key=[PLAN_PREFIX, "portfolio_plan"],
    partitions_def=daily_partitions,
    deps=[
        dg.AssetDep(
            RECOMMENDATIONS_KEY,
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="date"),
        )
    ],
    kinds={"python", "parquet"},
    group_name=PLAN_PREFIX,
    check_specs=[
        dg.AssetCheckSpec(
            PLAN_CHECK,
            asset=[PLAN_PREFIX, "portfolio_plan"],
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
    recommender's options, the cheapest plan under the constraints file (per group and environment,
    see docs/portfolio_plan.md). Keeps are rows too, each with its reason. Without a feasible plan every
    row is a keep, the reason says what to relax, and the blocking check fails."""
    day = date.fromisoformat(context.partition_key)
    store = lake.get_lake()
    path, chosen_by = config_path(config.constraints_path)
    try:
        accounts, problem = problem_for_day(store, day, config.constraints_path)
    except NoAccountsError as exc:
        raise dg.Failure(str(exc)) from None
    registered = sorted(context.instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME))
    missing = [a for a in registered if a not in accounts]
    if missing:
        context.log.warning(f"no recommendations for {day} in account(s) {', '.join(missing)}: planned without them")

    solution = solve_problem(problem, time_limit_s=config.time_limit_s, mip_gap=config.mip_gap)
    written = store.write("portfolio_plan", plan_table(problem, solution), day=day)
    plan = store.read("portfolio_plan", day=day)  # the check reads what was written, not what was meant
    violations = verify_plan(plan, problem)
    summary = plan_summary(problem, solution, plan)
    store.write("portfolio_plan_checks", plan_check_row(day, summary, violations), day=day)
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
            "accounts": dg.MetadataValue.json(accounts),
            "missing_accounts": dg.MetadataValue.json(missing),
            "constraints_file": f"{path} ({chosen_by})",
            "config_notes": dg.MetadataValue.json(problem.notes),
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
                    "violations": dg.MetadataValue.json(violations[:50]),
                    "violation_count": len(violations),
                    "plan_id": summary["plan_id"],
                    **({"explanation": summary["explanation"]} if summary["explanation"] else {}),
                },
            )
        ],
    )


def plan_check_row(day: date, summary: dict, violations: list[str]) -> pa.Table:
    """The check's verdict as the one-row ``portfolio_plan_checks`` partition the executor reads."""
    return pa.Table.from_pylist(
        [
            {
                "date": day,
                "plan_id": summary["plan_id"],
                "passed": not violations,
                "solver_status": summary["solver_status"],
                "violation_count": len(violations),
                "violations": json.dumps(violations[:200]),
                "checked_at": datetime.now(UTC),
            }
        ],
        schema=PORTFOLIO_PLAN_CHECKS,
    )


portfolio_plan_job = dg.define_asset_job(
    PLAN_JOB,
    selection=dg.AssetSelection.assets(portfolio_plan),
    description="The portfolio plan of one UTC day across every account (after the accounts' daily runs).",
)
