"""Write the savings report of a day: one self-contained HTML page (charts embedded as PNG data), the PNG
summary beside it, and the same tables as CSV files and one JSON document.

The folder ``<root>/<day>/`` is written in a staging folder and swapped in whole, so a reader sees the
previous report or the new one, never a mix.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

from cloudopt_pipelines.report import charts
from cloudopt_pipelines.report.tables import BREAKDOWNS, ReportInputs, ReportTables, build_tables
from cloudopt_pipelines.storage.lake import _exchange

HTML_NAME = "savings_report.html"
PNG_NAME = "savings_summary.png"
JSON_NAME = "savings_report.json"
CSV_DIR = "csv"

#: Section id -> heading, in page order (the test checks every one is on the page).
SECTIONS = {
    "headline": "Headline",
    "by-account": "Savings by account",
    "by-deployment-type": "Savings by deployment type",
    "by-team": "Savings by team",
    "by-action": "Savings by action",
    "top-candidates": "Top candidates: utilisation and proposed capacity",
    "schedules": "Schedule candidates: activity by hour of week",
    "budget": "Plan cost against budget",
    "pareto": "Pareto curve of the plan",
    "realised": "Realised savings",
    "exports": "Exports",
}
BREAKDOWN_SECTIONS = dict(zip(BREAKDOWNS, ("by-account", "by-deployment-type", "by-team", "by-action"), strict=True))


@dataclass(frozen=True)
class ReportFiles:
    """Where the report of ``day`` was written, and its numbers."""

    day: date
    folder: Path
    html: Path
    png: Path
    json: Path
    csv: dict[str, Path]
    report: ReportTables

    @property
    def headline(self) -> dict[str, Any]:
        return self.report.headline


def write_report(inputs: ReportInputs, root: Path) -> ReportFiles:
    """Build the tables of ``inputs``, draw the charts and write the report into ``root/<day>/``."""
    report = build_tables(inputs)
    root.mkdir(parents=True, exist_ok=True)
    live = root / inputs.day.isoformat()
    stage = root / f".staging-{os.getpid()}-{uuid.uuid4().hex}"
    (stage / CSV_DIR).mkdir(parents=True)
    try:
        summary = charts.summary_chart(report)
        (stage / PNG_NAME).write_bytes(summary)
        csv_paths = {}
        for name, rows in report.tables.items():
            _write_csv(stage / CSV_DIR / f"{name}.csv", rows)
            csv_paths[name] = live / CSV_DIR / f"{name}.csv"
        document = {"headline": report.headline, "notes": report.notes, "tables": report.tables}
        (stage / JSON_NAME).write_text(json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n")
        (stage / HTML_NAME).write_text(render_html(report, inputs, summary))
        _swap_in(stage, live)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ReportFiles(inputs.day, live, live / HTML_NAME, live / PNG_NAME, live / JSON_NAME, csv_paths, report)


def _swap_in(stage: Path, live: Path) -> None:
    if not live.exists():
        os.rename(stage, live)
        return
    if _exchange(stage, live):
        return  # stage holds the old report now; the caller removes it
    hidden = stage.with_name(stage.name + ".old")
    os.rename(live, hidden)
    os.rename(stage, live)
    shutil.rmtree(hidden, ignore_errors=True)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(rows[0]) if rows else []
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------- page


def render_html(report: ReportTables, inputs: ReportInputs, summary_png: bytes) -> str:
    """The whole page: inline CSS, every chart as a data: URI, no script and nothing fetched."""
    h = report.headline
    body = [f"<h1>Savings report {escape(h['date'])}</h1>"]
    if report.notes:
        body.append('<div class="notes">' + "".join(f"<p>{escape(n)}</p>" for n in report.notes) + "</div>")
    body.append(_section("headline", _headline(h) + _img(summary_png, "summary of the savings")))
    for name, section in BREAKDOWN_SECTIONS.items():
        rows = report.tables[name]
        heading = BREAKDOWNS[name][1]
        content = (
            _img(charts.breakdown_chart(rows, heading, charts.TITLES[name]), SECTIONS[section]) + _table(rows)
            if rows
            else _empty(report, "no resource in the plan")
        )
        body.append(_section(section, content))
    body.append(_section("top-candidates", _top(report)))
    body.append(_section("schedules", _schedules(report)))
    budget = report.tables["budget"][0]
    body.append(
        _section(
            "budget",
            (_img(charts.budget_chart(budget), "plan cost against budget") if not report.empty else "")
            + _table([budget])
            + _budget_text(budget),
        )
    )
    body.append(_section("pareto", _pareto(report)))
    body.append(_section("realised", _realised(report, inputs)))
    body.append(_section("exports", _exports(report)))
    return PAGE.format(title=escape(f"Savings report {h['date']}"), body="\n".join(body))


def _section(section: str, content: str) -> str:
    return f'<section id="{section}"><h2>{escape(SECTIONS[section])}</h2>\n{content}\n</section>'


def _empty(report: ReportTables, why: str) -> str:
    return f'<p class="empty">{escape(report.notes[0] if report.empty and report.notes else why)}</p>'


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _headline(h: Mapping[str, Any]) -> str:
    budget = h["monthly_budget_usd"]
    items = [
        ("monthly savings", _money(h["monthly_savings_usd"]) + " USD"),
        ("monthly cost today", _money(h["monthly_cost_current_usd"]) + " USD"),
        ("monthly cost of the plan", _money(h["monthly_cost_proposed_usd"]) + " USD"),
        ("upfront (commitments)", _money(h["one_time_cost_usd"]) + " USD"),
        ("budget", "none set" if budget is None else _money(budget) + " USD"),
        ("changes / resources", f"{h['changes']} / {h['resources']}"),
        ("realised (applied actions)", _money(h["realised_monthly_savings_usd"]) + " USD/month"),
        ("plan id", h["plan_id"] or "-"),
    ]
    cells = "".join(f'<div class="kpi"><span>{escape(k)}</span><b>{escape(v)}</b></div>' for k, v in items)
    return f'<div class="kpis">{cells}</div>'


def _top(report: ReportTables) -> str:
    rows = report.tables["top_changes"]
    if not rows:
        return _empty(report, "no change in the plan")
    out = [
        "<p>CPU of each of the biggest changes, in vCPUs used at today's size, with today's capacity (dashed) "
        "and the capacity the plan proposes (orange): first hour by hour over the trailing days of 5-minute "
        "samples (the hour's mean and its highest 5-minute peak; table <code>utilisation_history</code> in the "
        "exports), then by hour of week over the trailing window (mean, p95 of the 5-minute peaks, max).</p>"
    ]
    for t in report.traces:
        rid = t["row"]["resource_id"]
        if t["history"]:
            out.append(_img(charts.history_chart(t), f"utilisation history of {rid}"))
        out.append(_img(charts.utilisation_chart(t), f"utilisation of {rid} by hour of week"))
    return "\n".join(out) + _table(rows)


def _schedules(report: ReportTables) -> str:
    rows = report.tables["schedule_candidates"]
    if not rows:
        return _empty(report, f"no schedule candidate on {report.day}: no resource has an off-hours schedule option")
    out = ["<p>Share of 5-minute samples with CPU at least 5 % by local hour of week (dark: idle).</p>"]
    for heat in report.heatmaps:
        if heat["grid"] is None:
            out.append(f"<p>{escape(heat['row']['resource_id'])}: no activity profile that day.</p>")
        else:
            out.append(_img(charts.heatmap_chart(heat), f"activity of {heat['row']['resource_id']}"))
    return "\n".join(out) + _table(rows)


def _budget_text(row: Mapping[str, Any]) -> str:
    where = escape(row["constraints_file"] or "the constraints file")
    if row["monthly_budget_usd"] is None:
        return f"<p>No monthly budget is set (portfolio.monthly_budget_usd is null in {where}).</p>"
    verdict = "within" if row["within_budget"] else "over"
    return f"<p>The plan is {verdict} the monthly budget of {where}.</p>"


def _pareto(report: ReportTables) -> str:
    rows = report.tables["pareto"]
    if not rows:
        return _empty(report, "no feasible point: the Pareto curve has nothing to show")
    h = report.headline
    chart = charts.pareto_chart(rows, h["monthly_cost_proposed_usd"], h["average_performance_risk"])
    return (
        "<p>At each monthly budget from the cheapest plan up to the least risky one, the plan of least average "
        "performance risk under the same constraints (cloudopt plan --date D --sweep budget).</p>"
        + _img(chart, "Pareto curve")
        + _table(rows)
    )


def _realised(report: ReportTables, inputs: ReportInputs) -> str:
    rows = report.tables["realised_savings"]
    if not rows:
        return _empty(
            report,
            f"no executed actions in the {inputs.executed_window_days} days up to {report.day} "
            "(cloudopt approve, then cloudopt execute --mode apply)",
        )
    return _img(charts.realised_chart(rows), "realised savings") + _table(rows)


def _exports(report: ReportTables) -> str:
    links = [f'<li><a href="{CSV_DIR}/{name}.csv">{CSV_DIR}/{name}.csv</a></li>' for name in report.tables]
    return (
        f'<p>The same tables: <a href="{JSON_NAME}">{JSON_NAME}</a> (all of them, with the headline), '
        f'<a href="{PNG_NAME}">{PNG_NAME}</a> (the summary), and one CSV file each:</p><ul>' + "".join(links) + "</ul>"
    )


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(c, r[c]) for c in columns) + "</tr>"
        for r in rows  # every row: the exports and the page show the same table
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "<td>-</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, float):
        text = _money(value) if column.endswith("_usd") else f"{value:,.3f}".rstrip("0").rstrip(".")
        return f'<td class="num">{text}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{escape(str(value))}</td>"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }}
h1 {{ font-size: 1.6rem; }} h2 {{ font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: .3rem; }}
section {{ margin-bottom: 2rem; }}
img {{ max-width: 100%; display: block; margin: .5rem 0; }}
table {{ border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }}
th, td {{ border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; }}
th {{ background: #f4f4f4; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.kpis {{ display: flex; flex-wrap: wrap; gap: .75rem; }}
.kpi {{ border: 1px solid #ddd; border-radius: 6px; padding: .5rem .8rem; min-width: 12rem; }}
.kpi span {{ display: block; color: #666; font-size: .8rem; }} .kpi b {{ font-size: 1.1rem; }}
.notes {{ background: #fff8e1; border: 1px solid #f0d98c; padding: .2rem 1rem; border-radius: 6px; }}
.empty {{ color: #666; font-style: italic; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
