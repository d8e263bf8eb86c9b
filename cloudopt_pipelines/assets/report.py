"""Reports stage: the savings report of a day, after its portfolio plan (HTML, PNG summary, CSV and JSON)."""

from collections.abc import Sequence
from datetime import date, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from cloudopt_pipelines.assets.plan import ACROSS_ACCOUNTS, PLAN_KEY, SAVINGS_REPORT_KEY, plan_problem
from cloudopt_pipelines.assets.recommendations import RESOURCES_KEY, recommendation_key
from cloudopt_pipelines.optimizers.base import DeploymentOptimizer
from cloudopt_pipelines.optimizers.linear import pareto_sweep
from cloudopt_pipelines.optimizers.portfolio import NoAccountsError, config_path
from cloudopt_pipelines.partitions import daily_partitions
from cloudopt_pipelines.report import CapacityView, ReportInputs, write_report
from cloudopt_pipelines.report.tables import HISTORY_WINDOW_DAYS, top_changes
from cloudopt_pipelines.resources.reports import ReportsResource
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.storage.lake import Lake

REPORTS_PREFIX = "reports"
REPORT_KEY = SAVINGS_REPORT_KEY
ACTIVITY_KEY = dg.AssetKey(["features", "activity_profile"])
SAMPLES_KEY = dg.AssetKey(["features", "stg_utilization_5m"])
EXECUTED_ACTIONS_KEY = dg.AssetKey(["actions", "executed_actions"])
#: Days of executed actions the realised-savings chart covers, up to the report's day.
EXECUTED_WINDOW_DAYS = 90


class SavingsReportConfig(dg.Config):
    """Run configuration of the savings report."""

    constraints_path: str | None = Field(
        default=None,
        description="Constraints file of the budget and the Pareto curve; default as the plan's "
        "($CLOUDOPT_PLAN_CONSTRAINTS, else config/constraints.yaml).",
    )
    pareto_steps: int = Field(default=8, ge=2, le=50, description="Budgets of the Pareto sweep.")
    time_limit_s: float = Field(default=30.0, gt=0, description="Wall-clock limit of each solve of the sweep, s.")


def read_report_inputs(
    lake: Lake,
    day: date,
    optimizers: Sequence[DeploymentOptimizer],
    constraints_path: str | None = None,
    pareto_steps: int = 8,
    time_limit_s: float = 30.0,
) -> ReportInputs:
    """Everything the report of ``day`` shows, read from the lake: the plan, its problem (the candidates'
    vCPUs, the budget and the Pareto sweep), the recommendations and activity profiles of the accounts
    planned, and the executed actions of the trailing window."""
    plan = lake.read("portfolio_plan", day=day) if lake.partition_file("portfolio_plan", day=day) else None
    path, chosen_by = config_path(constraints_path)
    notes: list[str] = []
    try:
        accounts, problem = plan_problem(lake, day, optimizers, constraints_path)
    except NoAccountsError:
        accounts, problem = [], None
    capacities: dict[str, CapacityView] = {}
    pareto: list[dict] = []
    if problem is not None and plan is not None and plan.num_rows:
        by_key = problem.by_key
        for row in plan.select(["account_id", "resource_id", "option_name"]).to_pylist():
            cand = by_key.get(f"{row['account_id']}/{row['resource_id']}")
            if cand is not None:
                option = cand.option(row["option_name"]) or cand.keep
                capacities[cand.key] = CapacityView(cand.keep.vcpu, option.vcpu)
        plan_id = plan.column("plan_id")[0].as_py()
        if plan_id != problem.plan_id:
            notes.append(
                f"the inputs of {day} changed since plan {plan_id} was written (they now make plan "
                f"{problem.plan_id}): the Pareto curve and capacities are of the current inputs; "
                f"re-materialise plan/portfolio_plan for {day}"
            )
        pareto = pareto_sweep(
            problem.instances, problem.constraints, sweep="budget", steps=pareto_steps, time_limit_s=time_limit_s
        )
    portfolio = problem.config.portfolio if problem is not None else {}
    top = top_changes(plan.to_pylist(), capacities) if plan is not None else []
    return ReportInputs(
        day=day,
        plan=plan,
        capacities=capacities,
        activity=_concat(
            [lake.read("activity_profile", a, day) for a in accounts if _has(lake, "activity_profile", a, day)]
        ),
        recommendations=_concat(
            [lake.read(o.table_name, a, day) for o in optimizers for a in accounts if _has(lake, o.table_name, a, day)]
        ),
        budget_usd=portfolio.get("monthly_budget_usd"),
        max_one_time_cost_usd=portfolio.get("max_one_time_cost_usd"),
        constraints_file=f"{path} ({chosen_by})",
        pareto=pareto,
        executed=_concat(
            [
                lake.read("executed_actions", day=d)
                for n in range(EXECUTED_WINDOW_DAYS)
                if lake.partition_file("executed_actions", day=(d := day - timedelta(days=n)))
            ]
        ),
        executed_window_days=EXECUTED_WINDOW_DAYS,
        history=read_history(lake, day, [(r["account_id"], r["resource_id"]) for r in top]),
        history_window_days=HISTORY_WINDOW_DAYS,
        notes=notes,
    )


def read_history(lake: Lake, day: date, resources: Sequence[tuple[str, str]]) -> pa.Table | None:
    """The 5-minute samples (``stg_utilization_5m``) of ``resources`` (account, resource) over the trailing
    ``HISTORY_WINDOW_DAYS`` days ending with ``day``, the days that exist."""
    wanted: dict[str, set[str]] = {}
    for account, resource in resources:
        wanted.setdefault(account, set()).add(resource)
    parts = []
    columns = ["account_id", "resource_id", "ts", "cpu_pct", "cpu_peak_pct"]
    for account, ids in sorted(wanted.items()):
        for n in range(HISTORY_WINDOW_DAYS - 1, -1, -1):
            d = day - timedelta(days=n)
            if _has(lake, "stg_utilization_5m", account, d):
                rows = lake.read("stg_utilization_5m", account, d).select(columns)
                parts.append(rows.filter(pc.is_in(rows["resource_id"], pa.array(sorted(ids)))))
    return _concat(parts)


def _has(lake: Lake, table: str, account: str, day: date) -> bool:
    return lake.partition_file(table, account, day) is not None


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def build_savings_report_asset(optimizers: Sequence[DeploymentOptimizer]) -> dg.AssetsDefinition:
    """The report asset, reading the plan of the day and what the plan was made of."""
    deps = [
        dg.AssetDep(PLAN_KEY),
        *(dg.AssetDep(recommendation_key(o), partition_mapping=ACROSS_ACCOUNTS) for o in optimizers),
        dg.AssetDep(RESOURCES_KEY, partition_mapping=ACROSS_ACCOUNTS),
        dg.AssetDep(ACTIVITY_KEY, partition_mapping=ACROSS_ACCOUNTS),
        # The day's samples of every account; the report also reads the trailing days that exist (a
        # window across accounts is no partition mapping Dagster has).
        dg.AssetDep(SAMPLES_KEY, partition_mapping=ACROSS_ACCOUNTS),
        dg.AssetDep(
            EXECUTED_ACTIONS_KEY,
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-(EXECUTED_WINDOW_DAYS - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
            ),
        ),
    ]

    @dg.asset(
        key=REPORT_KEY,
        partitions_def=daily_partitions,
        deps=deps,
        kinds={"python", "html"},
        group_name=REPORTS_PREFIX,
    )
    def savings_report(
        context: dg.AssetExecutionContext, config: SavingsReportConfig, lake: LakeResource, reports: ReportsResource
    ) -> dg.MaterializeResult:
        """The day's savings report, a static HTML page with its charts embedded ($CLOUDOPT_HOME/reports/DAY/):
        the plan's savings by account, deployment type, team and action; the top changes' CPU over the trailing
        14 days, hour by hour from the 5-minute samples, and by hour of week, with today's and the proposed
        capacity; hour-of-week activity of the schedule candidates; plan cost
        against the budget; the plan's cost/risk Pareto curve; realised savings of the applied actions over
        the last 90 days. Beside it: a PNG summary, and every table as CSV and in one JSON file."""
        day = date.fromisoformat(context.partition_key)
        inputs = read_report_inputs(
            lake.get_lake(), day, optimizers, config.constraints_path, config.pareto_steps, config.time_limit_s
        )
        files = write_report(inputs, reports.get_root())
        h = files.headline
        for note in files.report.notes:
            context.log.info(note)
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.url(files.html.as_uri()),
                "path": dg.MetadataValue.path(str(files.html)),
                "summary_png": dg.MetadataValue.path(str(files.png)),
                "json": dg.MetadataValue.path(str(files.json)),
                "plan_id": h["plan_id"] or "",
                "monthly_savings_usd": float(h["monthly_savings_usd"]),
                "monthly_cost_current_usd": float(h["monthly_cost_current_usd"]),
                "monthly_cost_proposed_usd": float(h["monthly_cost_proposed_usd"]),
                "one_time_cost_usd": float(h["one_time_cost_usd"]),
                "realised_monthly_savings_usd": float(h["realised_monthly_savings_usd"]),
                "changes": int(h["changes"]),
                "resources": int(h["resources"]),
                "schedule_candidates": int(h["schedule_candidates"]),
                **({"note": files.report.notes[0]} if files.report.notes else {}),
            }
        )

    return savings_report
