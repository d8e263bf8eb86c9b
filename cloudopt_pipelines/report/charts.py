"""The report's charts as PNG bytes, drawn with matplotlib's object API (no pyplot: no global state)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cloudopt_pipelines.report.tables import BREAKDOWNS, ReportTables

BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
TITLES = {
    "savings_by_account": "by account",
    "savings_by_deployment_type": "by deployment type",
    "savings_by_team": "by team",
    "savings_by_action": "by action",
}


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def summary_chart(report: ReportTables) -> bytes:
    """The PNG summary: the headline and the four breakdowns of the plan's monthly savings."""
    fig = Figure(figsize=(11, 7.5))
    h = report.headline
    fig.suptitle(
        f"Savings report {h['date']}: {h['monthly_savings_usd']:,.2f} USD/month "
        f"({h['changes']} change(s) over {h['resources']} resource(s))",
        fontsize=13,
    )
    for i, name in enumerate(BREAKDOWNS):
        ax = fig.add_subplot(2, 2, i + 1)
        _bars(ax, report.tables[name], BREAKDOWNS[name][1], TITLES[name])
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return png(fig)


def breakdown_chart(rows: Sequence[Mapping[str, Any]], heading: str, title: str) -> bytes:
    fig = Figure(figsize=(7, max(2.2, 0.45 * len(rows) + 1.2)))
    _bars(fig.add_subplot(1, 1, 1), rows, heading, title)
    fig.tight_layout()
    return png(fig)


def _bars(ax: Any, rows: Sequence[Mapping[str, Any]], heading: str, title: str) -> None:
    ax.set_title(f"Monthly savings {title} (USD)", fontsize=10)
    if not rows:
        ax.text(0.5, 0.5, "nothing planned", ha="center", va="center", transform=ax.transAxes, color=GREY)
        ax.set_axis_off()
        return
    shown = list(rows)[:12][::-1]
    labels = [str(r[heading]) for r in shown]
    values = [r["monthly_savings_usd"] for r in shown]
    bars = ax.barh(labels, values, color=BLUE)
    ax.bar_label(bars, labels=[f"{v:,.2f}" for v in values], padding=3, fontsize=8)
    ax.margins(x=0.25)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", color="#eee")
    ax.set_axisbelow(True)


def utilisation_chart(trace: Mapping[str, Any]) -> bytes:
    """One top candidate's CPU over the trailing window by hour of week, in vCPUs used, with the capacity it
    has today and the capacity the plan proposes (as Compute Optimizer draws a recommendation)."""
    row, points = trace["row"], trace["points"]
    current = row["current_vcpu"] or 0.0
    proposed = row["proposed_vcpu"]
    fig = Figure(figsize=(7.5, 2.8))
    ax = fig.add_subplot(1, 1, 1)
    hours = [p["hour_of_week"] for p in points]

    def used(name: str) -> list[float]:
        return [(p[name] or 0.0) / 100.0 * current for p in points]

    ax.fill_between(hours, used("cpu_mean_pct"), step="mid", color=BLUE, alpha=0.25, label="mean")
    ax.step(hours, used("cpu_p95_pct"), where="mid", color=BLUE, lw=1.2, label="p95 of 5-min peaks")
    ax.step(hours, used("cpu_max_pct"), where="mid", color=BLUE, lw=0.6, ls=":", label="max")
    ax.axhline(current, color=GREY, lw=1.5, ls="--", label=f"today: {current:g} vCPU")
    if proposed is not None:
        ax.axhline(proposed, color=ORANGE, lw=2, label=f"proposed: {proposed:g} vCPU")
    window = points[0].get("window_days") if points else None
    ax.set_title(
        f"{row['resource_id']} ({row['account_id']}): {row['option_name']}, "
        f"saves {row['monthly_savings_usd']:,.2f} USD/month",
        fontsize=10,
    )
    ax.set_xlim(0, 168)
    ax.set_xticks([d * 24 for d in range(7)], DAYS)
    ax.set_ylabel("vCPU used")
    ax.set_xlabel(f"hour of week (local time), over the trailing {window or '?'} days")
    ax.set_ylim(0, max(current, proposed or 0.0) * 1.15 or 1.0)
    ax.legend(fontsize=7, loc="upper right", ncols=3)
    ax.grid(color="#eee")
    fig.tight_layout()
    return png(fig)


def history_chart(trace: Mapping[str, Any]) -> bytes:
    """One top candidate's CPU hour by hour over the trailing window (mean and highest 5-minute peak of each
    hour, from the 5-minute samples), in vCPUs used, with today's capacity and the proposed one drawn across
    it, as Compute Optimizer shows a recommendation's utilisation graph."""
    row, points = trace["row"], trace["history"]
    current = row["current_vcpu"] or 0.0
    proposed = row["proposed_vcpu"]
    fig = Figure(figsize=(7.5, 2.8))
    ax = fig.add_subplot(1, 1, 1)
    hours = [datetime.fromisoformat(p["hour"]) for p in points]

    def used(name: str) -> list[float]:
        return [float("nan") if p[name] is None else p[name] / 100.0 * current for p in points]

    ax.fill_between(hours, used("cpu_mean_pct"), step="post", color=BLUE, alpha=0.25, label="hourly mean")
    ax.step(hours, used("cpu_peak_max_pct"), where="post", color=BLUE, lw=0.9, label="highest 5-min peak")
    ax.axhline(current, color=GREY, lw=1.5, ls="--", label=f"today: {current:g} vCPU")
    if proposed is not None:
        ax.axhline(proposed, color=ORANGE, lw=2, label=f"proposed: {proposed:g} vCPU")
    ax.set_title(f"{row['resource_id']} ({row['account_id']}): CPU hour by hour, {row['option_name']}", fontsize=10)
    ax.set_ylabel("vCPU used")
    days = len({h.date() for h in hours})
    ax.set_xlabel(f"UTC, {days} days of 5-minute samples")
    ax.set_ylim(0, max(current, proposed or 0.0) * 1.15 or 1.0)
    ax.legend(fontsize=7, loc="upper right", ncols=4)
    ax.grid(color="#eee")
    fig.autofmt_xdate()
    fig.tight_layout()
    return png(fig)


def heatmap_chart(heatmap: Mapping[str, Any]) -> bytes:
    """A schedule candidate's active share by local hour of week (Monday first): the off-hours it would stop."""
    row, grid = heatmap["row"], heatmap["grid"]
    fig = Figure(figsize=(7.5, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    values = [[float("nan") if v is None else v for v in day] for day in grid]
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_yticks(range(7), DAYS)
    ax.set_xticks(range(0, 24, 3))
    ax.set_xlabel(f"local hour ({row.get('timezone') or 'UTC'})")
    stopped = row.get("stopped_hours_per_week")
    ax.set_title(
        f"{row['resource_id']} ({row['account_id']}): {row['option_name']}, "
        f"{stopped if stopped is not None else '?'} h/week stopped, saves {row['monthly_savings_usd']:,.2f} USD/month",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="active 5-min samples (%)")
    fig.tight_layout()
    return png(fig)


def budget_chart(row: Mapping[str, Any]) -> bytes:
    """Monthly cost today and under the plan, against the budget of the constraints file (if any)."""
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    labels = ["today", "plan"]
    values = [row["monthly_cost_current_usd"], row["monthly_cost_proposed_usd"]]
    bars = ax.barh(labels[::-1], values[::-1], color=[GREEN, GREY])
    ax.bar_label(bars, labels=[f"{v:,.2f}" for v in values[::-1]], padding=3, fontsize=8)
    budget = row["monthly_budget_usd"]
    if budget is not None:
        ax.axvline(budget, color=RED, lw=2, label=f"budget {budget:,.2f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("monthly cost (USD)")
    ax.set_title("Plan cost against budget" + ("" if budget is not None else " (no budget set)"), fontsize=10)
    ax.margins(x=0.2)
    fig.tight_layout()
    return png(fig)


def pareto_chart(points: Sequence[Mapping[str, Any]], plan_cost: float, plan_risk: float) -> bytes:
    """The plan's cost/risk trade-off: at each budget the lowest-risk plan; the chosen plan marked."""
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    xs = [p["total_monthly_cost_usd"] for p in points]
    ys = [p["average_performance_risk"] for p in points]
    ax.plot(xs, ys, marker="o", color=BLUE, label="lowest risk at each budget")
    ax.scatter([plan_cost], [plan_risk], s=90, marker="*", color=ORANGE, zorder=3, label="the plan (least cost)")
    ax.set_xlabel("monthly cost of the plan (USD)")
    ax.set_ylabel("average performance risk (0-4)")
    ax.set_title("Pareto curve: cost against risk", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(color="#eee")
    fig.tight_layout()
    return png(fig)


def realised_chart(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Monthly savings of the applied actions, as a running total over the days they were applied."""
    fig = Figure(figsize=(6.5, 2.8))
    ax = fig.add_subplot(1, 1, 1)
    days = [r["date"] for r in rows]
    ax.step(days, [r["cumulative_monthly_savings_usd"] for r in rows], where="post", color=GREEN, lw=2)
    ax.bar(days, [r["applied_monthly_savings_usd"] for r in rows], color=GREEN, alpha=0.3, label="applied that day")
    ax.set_ylabel("USD/month")
    ax.set_title("Realised savings (applied actions, running total)", fontsize=10)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.legend(fontsize=8)
    ax.grid(color="#eee")
    fig.tight_layout()
    return png(fig)
