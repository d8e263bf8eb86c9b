"""The tables of the savings report, computed from what the asset read (pure: tables in, rows out).

Every table is a list of plain rows (``dict``), so that the HTML page, the CSV files and the JSON export
show the same numbers. Money stays unrounded here; only the page formats it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa

KEEP = "keep"
SCHEDULE_ACTIONS = ("schedule", "resize+schedule")
TOP_CANDIDATES = 6
TOP_SCHEDULES = 4
#: Trailing days of 5-minute samples the utilisation history of a top candidate covers (the window of
#: utilization_window and activity_profile), ending with the report's day.
HISTORY_WINDOW_DAYS = 14

#: The breakdowns of the plan's savings: report table name -> (plan column, heading).
BREAKDOWNS = {
    "savings_by_account": ("account_id", "account"),
    "savings_by_deployment_type": ("deployment_type", "deployment type"),
    "savings_by_team": ("group_name", "team"),
    "savings_by_action": ("action", "action"),
}
MONEY = (
    "monthly_cost_current_usd",
    "monthly_cost_proposed_usd",
    "monthly_savings_usd",
    "one_time_cost_usd",
)


@dataclass(frozen=True)
class CapacityView:
    """The vCPUs of a planned resource today and under the option the plan chose."""

    current_vcpu: float
    proposed_vcpu: float


@dataclass(frozen=True)
class ReportInputs:
    """What the report of ``day`` is made of; ``None`` for a table the lake does not have."""

    day: date
    plan: pa.Table | None
    capacities: Mapping[str, CapacityView] = field(default_factory=dict)  # "account/resource" -> vCPUs
    activity: pa.Table | None = None  # activity_profile rows of the day, every account
    recommendations: pa.Table | None = None  # every optimiser's rows of the day (the schedule options)
    budget_usd: float | None = None  # monthly_budget_usd of the constraints file (None: no budget)
    max_one_time_cost_usd: float | None = None
    constraints_file: str = ""
    pareto: Sequence[Mapping[str, Any]] = ()  # budget sweep points (linear.pareto_sweep)
    executed: pa.Table | None = None  # executed_actions over the trailing window
    executed_window_days: int = 90
    history: pa.Table | None = None  # stg_utilization_5m rows (account_id, resource_id, ts, cpu_pct, cpu_peak_pct)
    history_window_days: int = HISTORY_WINDOW_DAYS
    notes: Sequence[str] = ()


@dataclass
class ReportTables:
    """Every table of the report, its headline numbers, the utilisation traces and the notes."""

    day: date
    headline: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    traces: list[dict[str, Any]]  # per top candidate: its row, 168 hour-of-week points and its hourly history
    heatmaps: list[dict[str, Any]]  # per schedule candidate: its row and a 7 x 24 grid (None: no samples)
    notes: list[str]

    @property
    def empty(self) -> bool:
        """No plan rows: the report says so instead of showing empty charts."""
        return not self.headline["resources"]


def build_tables(inputs: ReportInputs) -> ReportTables:
    """The report's tables for ``inputs`` (see :class:`ReportTables`)."""
    plan = inputs.plan.to_pylist() if inputs.plan is not None else []
    notes = list(inputs.notes)
    if inputs.plan is None:
        notes.insert(
            0,
            f"no portfolio plan for {inputs.day}: materialise it first "
            f"(cloudopt run --start {inputs.day} --end {inputs.day})",
        )
    elif not plan:
        notes.insert(0, f"the portfolio plan of {inputs.day} has no resources: nothing to save that day")
    statuses = sorted({r["solver_status"] for r in plan})
    if plan and not set(statuses) <= {"optimal", "time_limit"}:
        notes.append(f"no feasible plan (solver status {', '.join(statuses)}): every resource keeps its state")
    tables: dict[str, list[dict[str, Any]]] = {
        name: breakdown(plan, column, heading) for name, (column, heading) in BREAKDOWNS.items()
    }
    top = top_changes(plan, inputs.capacities)
    tables["top_changes"] = top
    schedules = schedule_candidates(inputs.recommendations, plan)
    tables["schedule_candidates"] = schedules
    tables["budget"] = [budget_row(plan, inputs)]
    tables["pareto"] = pareto_rows(inputs.pareto)
    tables["realised_savings"] = realised_savings(inputs.executed)
    profiles = _profiles(inputs.activity)
    histories = hourly_history(inputs.history)
    traces = [
        {"row": row, "points": profiles[key], "history": histories.get(key, [])}
        for row in top
        if row["resource_kind"] == "ec2_instance" and (key := f"{row['account_id']}/{row['resource_id']}") in profiles
    ]
    tables["utilisation_history"] = [
        {
            "account_id": t["row"]["account_id"],
            "resource_id": t["row"]["resource_id"],
            **point,
            "current_vcpu": t["row"]["current_vcpu"],
            "proposed_vcpu": t["row"]["proposed_vcpu"],
        }
        for t in traces
        for point in t["history"]
    ]
    if traces and not tables["utilisation_history"]:
        notes.append("no 5-minute samples for the top changes: their utilisation history is not drawn")
    if top and not traces:
        notes.append("no activity profile for the top changes: their utilisation is not drawn")
    heatmaps = [
        {"row": row, "grid": _grid(profiles.get(f"{row['account_id']}/{row['resource_id']}", []))}
        for row in schedules[:TOP_SCHEDULES]
    ]
    current = sum(r["monthly_cost_current_usd"] for r in plan)
    proposed = sum(r["monthly_cost_proposed_usd"] for r in plan)
    realised = tables["realised_savings"]
    headline = {
        "date": inputs.day.isoformat(),
        "plan_id": plan[0]["plan_id"] if plan else None,
        "solver_status": ", ".join(statuses) or None,
        "resources": len(plan),
        "changes": sum(1 for r in plan if r["option_name"] != KEEP),
        "monthly_cost_current_usd": current,
        "monthly_cost_proposed_usd": proposed,
        "monthly_savings_usd": sum(r["monthly_savings_usd"] for r in plan),
        "one_time_cost_usd": sum(r["one_time_cost_usd"] for r in plan),
        "average_performance_risk": sum(r["performance_risk"] for r in plan) / len(plan) if plan else 0.0,
        "monthly_budget_usd": inputs.budget_usd,
        "schedule_candidates": len(schedules),
        "realised_monthly_savings_usd": realised[-1]["cumulative_monthly_savings_usd"] if realised else 0.0,
    }
    return ReportTables(inputs.day, headline, tables, traces, heatmaps, notes)


def breakdown(plan: Sequence[Mapping[str, Any]], column: str, heading: str) -> list[dict[str, Any]]:
    """The plan's rows summed per value of ``column`` (an empty value is '(none)'), biggest savings first."""
    out: dict[str, dict[str, Any]] = {}
    for r in plan:
        value = r[column] if r[column] not in (None, "") else "(none)"
        row = out.setdefault(value, {heading: value, "resources": 0, "changes": 0, **dict.fromkeys(MONEY, 0.0)})
        row["resources"] += 1
        row["changes"] += r["option_name"] != KEEP
        for money in MONEY:
            row[money] += r[money] or 0.0
    return sorted(out.values(), key=lambda row: (-row["monthly_savings_usd"], str(row[heading])))


def top_changes(
    plan: Sequence[Mapping[str, Any]], capacities: Mapping[str, CapacityView], n: int = TOP_CANDIDATES
) -> list[dict[str, Any]]:
    """The ``n`` changes with the biggest monthly savings, with their vCPUs today and as planned."""
    changed = sorted(
        (r for r in plan if r["option_name"] != KEEP),
        key=lambda r: (-r["monthly_savings_usd"], r["account_id"], r["resource_id"]),
    )
    out = []
    for r in changed[:n]:
        view = capacities.get(f"{r['account_id']}/{r['resource_id']}")
        out.append(
            {
                "account_id": r["account_id"],
                "resource_id": r["resource_id"],
                "resource_kind": r["resource_kind"],
                "action": r["action"],
                "option_name": r["option_name"],
                "current_vcpu": view.current_vcpu if view else None,
                "proposed_vcpu": view.proposed_vcpu if view else None,
                "monthly_savings_usd": r["monthly_savings_usd"],
                "one_time_cost_usd": r["one_time_cost_usd"],
                "performance_risk": r["performance_risk"],
            }
        )
    return out


def schedule_candidates(recommendations: pa.Table | None, plan: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Resources with an off-hours schedule option, its best saving, and whether the plan took it."""
    if recommendations is None or not recommendations.num_rows:
        return []
    chosen = {f"{r['account_id']}/{r['resource_id']}": r["option_name"] for r in plan}
    best: dict[str, dict[str, Any]] = {}
    for r in recommendations.to_pylist():
        if r["action"] not in SCHEDULE_ACTIONS:
            continue
        key = f"{r['account_id']}/{r['resource_id']}"
        if key in best and best[key]["monthly_savings_usd"] >= r["monthly_savings_usd"]:
            continue
        details = _json(r.get("details"))
        best[key] = {
            "account_id": r["account_id"],
            "resource_id": r["resource_id"],
            "option_name": r["option_name"],
            "monthly_savings_usd": r["monthly_savings_usd"],
            "stopped_hours_per_week": details.get("stopped_hours_per_week"),
            "timezone": details.get("timezone"),
            "plan_option": chosen.get(key),
        }
    return sorted(best.values(), key=lambda r: (-r["monthly_savings_usd"], r["account_id"], r["resource_id"]))


def budget_row(plan: Sequence[Mapping[str, Any]], inputs: ReportInputs) -> dict[str, Any]:
    """Today's cost, the plan's cost and upfront, against the constraints file's budget and cash limit."""
    proposed = sum(r["monthly_cost_proposed_usd"] for r in plan)
    one_time = sum(r["one_time_cost_usd"] for r in plan)
    return {
        "monthly_cost_current_usd": sum(r["monthly_cost_current_usd"] for r in plan),
        "monthly_cost_proposed_usd": proposed,
        "monthly_budget_usd": inputs.budget_usd,
        "within_budget": None if inputs.budget_usd is None else proposed <= inputs.budget_usd + 1e-6,
        "one_time_cost_usd": one_time,
        "max_one_time_cost_usd": inputs.max_one_time_cost_usd,
        "constraints_file": inputs.constraints_file,
    }


def pareto_rows(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The budget sweep's feasible points, cheapest first (an infeasible point has no cost)."""
    rows = [
        {
            "monthly_budget_usd": p.get("monthly_budget_usd"),
            "status": p.get("status"),
            "total_monthly_cost_usd": p["total_monthly_cost_usd"],
            "monthly_savings_usd": p.get("monthly_savings_usd"),
            "average_performance_risk": p.get("average_performance_risk"),
            "changes": p.get("changes"),
        }
        for p in points
        if _finite(p.get("total_monthly_cost_usd")) and _finite(p.get("average_performance_risk"))
    ]
    return sorted(rows, key=lambda r: (r["total_monthly_cost_usd"], r["average_performance_risk"]))


def realised_savings(executed: pa.Table | None) -> list[dict[str, Any]]:
    """Per day with executor decisions: the monthly savings of the actions applied that day (still applied:
    a rolled-back action is not counted), their running total, and what dry runs and exports would add."""
    if executed is None or not executed.num_rows:
        return []
    days: dict[date, dict[str, Any]] = {}
    for r in executed.to_pylist():
        row = days.setdefault(
            r["date"],
            {
                "date": r["date"],
                "applied_actions": 0,
                "applied_monthly_savings_usd": 0.0,
                "rolled_back_actions": 0,
                "dry_run_monthly_savings_usd": 0.0,
                "exported_monthly_savings_usd": 0.0,
            },
        )
        savings = r["monthly_savings_usd"] or 0.0
        if r["outcome"] == "applied":
            row["applied_actions"] += 1
            row["applied_monthly_savings_usd"] += savings
        elif r["outcome"] == "rolled_back":
            row["rolled_back_actions"] += 1
        elif r["outcome"] == "would_apply":
            row["dry_run_monthly_savings_usd"] += savings
        elif r["outcome"] == "exported":
            row["exported_monthly_savings_usd"] += savings
    total = 0.0
    out = []
    for day in sorted(days):
        row = days[day]
        total += row["applied_monthly_savings_usd"]
        out.append({**row, "date": day.isoformat(), "cumulative_monthly_savings_usd": total})
    return out


def hourly_history(samples: pa.Table | None) -> dict[str, list[dict[str, Any]]]:
    """Each resource's ("account/resource") 5-minute samples by UTC hour, in time order: the mean CPU and
    the highest 5-minute peak of the hour, and how many samples it had (a gap in the data is a missing hour,
    never a zero)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if samples is None or samples.num_rows == 0:
        return out
    hours: dict[tuple[str, Any], dict[str, Any]] = {}
    for r in samples.select(["account_id", "resource_id", "ts", "cpu_pct", "cpu_peak_pct"]).to_pylist():
        hour = r["ts"].replace(minute=0, second=0, microsecond=0)
        key = f"{r['account_id']}/{r['resource_id']}"
        acc = hours.setdefault((key, hour), {"sum": 0.0, "n": 0, "peak": None, "samples": 0})
        acc["samples"] += 1
        if _finite(r["cpu_pct"]):
            acc["sum"] += r["cpu_pct"]
            acc["n"] += 1
        peak = r["cpu_peak_pct"] if _finite(r["cpu_peak_pct"]) else r["cpu_pct"] if _finite(r["cpu_pct"]) else None
        if peak is not None and (acc["peak"] is None or peak > acc["peak"]):
            acc["peak"] = peak
    for (key, hour), acc in sorted(hours.items(), key=lambda item: (item[0][0], item[0][1])):
        out.setdefault(key, []).append(
            {
                "hour": hour.isoformat(),
                "cpu_mean_pct": acc["sum"] / acc["n"] if acc["n"] else None,
                "cpu_peak_max_pct": acc["peak"],
                "samples": acc["samples"],
            }
        )
    return out


def _profiles(activity: pa.Table | None) -> dict[str, list[dict[str, Any]]]:
    """The hour-of-week points of each resource ("account/resource"), in hour order."""
    out: dict[str, list[dict[str, Any]]] = {}
    if activity is None:
        return out
    wanted = ("hour_of_week", "cpu_mean_pct", "cpu_p95_pct", "cpu_max_pct", "active_share_pct", "window_days")
    for r in activity.select(["account_id", "resource_id", *wanted]).to_pylist():
        out.setdefault(f"{r['account_id']}/{r['resource_id']}", []).append({k: r[k] for k in wanted})
    for points in out.values():
        points.sort(key=lambda p: p["hour_of_week"])
    return out


def _grid(points: Sequence[Mapping[str, Any]]) -> list[list[float | None]] | None:
    """7 x 24 (Monday first, local hours) of the active share (% of 5-minute samples with CPU >= 5 %)."""
    if not points:
        return None
    grid: list[list[float | None]] = [[None] * 24 for _ in range(7)]
    for p in points:
        hour = int(p["hour_of_week"])
        grid[hour // 24][hour % 24] = p["active_share_pct"]
    return grid


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
