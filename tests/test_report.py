"""The savings report: written by the plan job on the demo, its numbers equal to the plan's, every section on a
self-contained page, the exports equal to the page's tables, and a day without a plan that says so."""

import csv
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from cloudopt_pipelines.assets.plan import PLAN_KEY
from cloudopt_pipelines.assets.report import REPORT_KEY
from cloudopt_pipelines.orchestration import ensure_instance
from cloudopt_pipelines.report import ReportInputs, build_tables, write_report
from cloudopt_pipelines.report.render import BREAKDOWN_SECTIONS, CSV_DIR, HTML_NAME, JSON_NAME, PNG_NAME, SECTIONS
from cloudopt_pipelines.report.tables import BREAKDOWNS, realised_savings
from cloudopt_pipelines.report_cli import report_command
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import EXECUTED_ACTIONS
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS

DAY = DEMO_DAYS[-1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def folder(settings: Settings, day: date) -> Path:
    return settings.reports_dir / day.isoformat()


def document(settings: Settings, day: date) -> dict:
    return json.loads((folder(settings, day) / JSON_NAME).read_text())


def latest_metadata(settings: Settings, key: dg.AssetKey, day: date) -> dict:
    instance = ensure_instance(settings)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day.isoformat()]), limit=1
    ).records
    assert records, f"no materialisation of {key.to_user_string()} for {day}"
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


@pytest.mark.parametrize("day", DEMO_DAYS)
def test_the_plan_job_writes_the_report_of_each_planned_day(demo_home: Settings, day: date) -> None:
    out = folder(demo_home, day)
    assert (out / HTML_NAME).is_file() and (out / JSON_NAME).is_file()
    assert (out / PNG_NAME).read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in demo_home.reports_dir.iterdir() if p.name.startswith(".staging")]


def test_breakdowns_equal_the_plan_rows(demo_home: Settings) -> None:
    plan_file = Lake(demo_home.lake_dir).partition_file("portfolio_plan", day=DAY)
    tables = document(demo_home, DAY)["tables"]
    con = duckdb.connect()
    for name, (column, heading) in BREAKDOWNS.items():
        expected = con.execute(
            f"SELECT coalesce(nullif({column}, ''), '(none)'), count(*), "
            "count(*) FILTER (WHERE option_name <> 'keep'), "
            "sum(monthly_cost_current_usd), sum(monthly_cost_proposed_usd), sum(monthly_savings_usd), "
            f"sum(one_time_cost_usd) FROM read_parquet('{plan_file}') GROUP BY 1"
        ).fetchall()
        got = {r[heading]: r for r in tables[name]}
        assert sorted(got) == sorted(e[0] for e in expected), name
        for value, resources, changes, current, proposed, savings, upfront in expected:
            row = got[value]
            assert (row["resources"], row["changes"]) == (resources, changes), (name, value)
            for column_name, amount in zip(
                ("monthly_cost_current_usd", "monthly_cost_proposed_usd", "monthly_savings_usd", "one_time_cost_usd"),
                (current, proposed, savings, upfront),
                strict=True,
            ):
                assert row[column_name] == pytest.approx(amount, abs=1e-6), (name, value, column_name)
        savings = [r["monthly_savings_usd"] for r in tables[name]]
        assert savings == sorted(savings, reverse=True), f"{name} is not biggest savings first"
    assert {r["account"] for r in tables["savings_by_account"]} == set(DEMO_ACCOUNTS)


def test_headline_and_metadata_equal_the_plan_asset(demo_home: Settings) -> None:
    plan_meta = latest_metadata(demo_home, PLAN_KEY, DAY)
    report_meta = latest_metadata(demo_home, REPORT_KEY, DAY)
    headline = document(demo_home, DAY)["headline"]
    assert headline["plan_id"] == plan_meta["plan_id"] == report_meta["plan_id"]
    assert headline["resources"] == plan_meta["resources"] == report_meta["resources"]
    assert headline["changes"] == plan_meta["changes"] == report_meta["changes"] > 0
    assert headline["monthly_savings_usd"] == pytest.approx(plan_meta["total_monthly_savings_usd"], abs=1e-3)
    assert report_meta["monthly_savings_usd"] == pytest.approx(headline["monthly_savings_usd"])
    assert headline["monthly_cost_current_usd"] == pytest.approx(plan_meta["baseline_monthly_cost_usd"], abs=1e-3)
    html = folder(demo_home, DAY) / HTML_NAME
    assert report_meta["report"] == html.as_uri()
    assert report_meta["path"] == str(html)


def test_every_section_is_on_a_self_contained_page(demo_home: Settings) -> None:
    page = (folder(demo_home, DAY) / HTML_NAME).read_text()
    for section, heading in SECTIONS.items():
        assert f'<section id="{section}"><h2>{heading}</h2>' in page, section
    for section in (*BREAKDOWN_SECTIONS.values(), "headline", "top-candidates", "budget", "pareto"):
        body = page.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert 'src="data:image/png;base64,' in body, f"section {section} has no chart"
    # nothing fetched: no script, no stylesheet link, no remote URL anywhere
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "no schedule candidate on" in page  # the demo's two days give no schedule option
    assert "no executed actions in the 90 days" in page


def test_top_candidates_carry_the_plans_capacities(demo_home: Settings) -> None:
    tables = document(demo_home, DAY)["tables"]
    plan = Lake(demo_home.lake_dir).read("portfolio_plan", day=DAY).to_pylist()
    changed = sorted((r for r in plan if r["option_name"] != "keep"), key=lambda r: -r["monthly_savings_usd"])
    top = tables["top_changes"]
    assert [(r["account_id"], r["resource_id"]) for r in top] == [
        (r["account_id"], r["resource_id"]) for r in changed[: len(top)]
    ]
    lake = Lake(demo_home.lake_dir)
    recommendations = {
        (r["account_id"], r["resource_id"], r["option_name"]): r["vcpu"]
        for a in DEMO_ACCOUNTS
        for r in lake.read("recommendations_standalone_ec2", a, DAY).to_pylist()
    }
    for r in top:
        if r["resource_kind"] == "ec2_instance":
            key = (r["account_id"], r["resource_id"])
            assert r["current_vcpu"] == recommendations[(*key, "keep")] > 0
            assert r["proposed_vcpu"] == recommendations[(*key, r["option_name"])] > 0
    page = (folder(demo_home, DAY) / HTML_NAME).read_text()
    top_section = page.split('<section id="top-candidates">', 1)[1].split("</section>", 1)[0]
    instances = [r for r in top if r["resource_kind"] == "ec2_instance"]
    assert top_section.count("<img ") == 2 * len(instances)  # hour by hour, and by hour of week


def test_each_top_candidates_history_is_its_5_minute_series_with_the_proposed_capacity(demo_home: Settings) -> None:
    """The report's hour-by-hour history of each top change is computed from the lake's 5-minute samples of
    the window (recomputed here with DuckDB), and drawn with today's and the proposed capacity."""
    doc = document(demo_home, DAY)
    top = [r for r in doc["tables"]["top_changes"] if r["resource_kind"] == "ec2_instance"]
    history = doc["tables"]["utilisation_history"]
    assert top and history
    lake = Lake(demo_home.lake_dir)
    con = duckdb.connect()
    for row in top:
        mine = [h for h in history if (h["account_id"], h["resource_id"]) == (row["account_id"], row["resource_id"])]
        want = con.execute(
            f"""
            SELECT strftime(date_trunc('hour', ts AT TIME ZONE 'UTC'), '%Y-%m-%dT%H:00:00') AS hour,
                   avg(cpu_pct), max(coalesce(cpu_peak_pct, cpu_pct)), count(*)
            FROM read_parquet('{lake.glob("stg_utilization_5m")}', hive_partitioning = false)
            WHERE account_id = ? AND resource_id = ? AND date <= ?
            GROUP BY 1 ORDER BY 1
            """,
            [row["account_id"], row["resource_id"], DAY],
        ).fetchall()
        assert len(want) == 24 * len(DEMO_DAYS)  # every hour of the demo's days has samples
        assert [h["hour"][:19] for h in mine] == [w[0] for w in want]
        for got, (_, mean, peak, samples) in zip(mine, want, strict=True):
            assert got["cpu_mean_pct"] == pytest.approx(mean)
            assert got["cpu_peak_max_pct"] == pytest.approx(peak)
            assert got["samples"] == samples
            assert (got["current_vcpu"], got["proposed_vcpu"]) == (row["current_vcpu"], row["proposed_vcpu"])
    page = (folder(demo_home, DAY) / HTML_NAME).read_text()
    for row in top:
        assert f'alt="utilisation history of {row["resource_id"]}"' in page


def test_the_pareto_curve_starts_at_the_plan(demo_home: Settings) -> None:
    doc = document(demo_home, DAY)
    points = doc["tables"]["pareto"]
    assert len(points) >= 2
    costs = [p["total_monthly_cost_usd"] for p in points]
    risks = [p["average_performance_risk"] for p in points]
    assert costs == sorted(costs)
    # the plan is the least-cost plan: the sweep's cheapest point, within the solver's optimality gap
    assert costs[0] == pytest.approx(doc["headline"]["monthly_cost_proposed_usd"], rel=1e-3)
    # more budget never buys more risk (each point is the least risky plan within its budget)
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(risks))


def test_csv_exports_equal_the_json_tables(demo_home: Settings) -> None:
    doc = document(demo_home, DAY)
    for name, rows in doc["tables"].items():
        with open(folder(demo_home, DAY) / CSV_DIR / f"{name}.csv", newline="") as handle:
            read = list(csv.DictReader(handle))
        assert len(read) == len(rows), name
        for got, want in zip(read, rows, strict=True):
            assert list(got) == list(want), name
            for column, value in want.items():
                if isinstance(value, float):
                    assert float(got[column]) == pytest.approx(value), (name, column)
                elif value is not None and not isinstance(value, bool):
                    assert got[column] == str(value), (name, column)


@pytest.fixture
def empty_home(fresh_home: Settings) -> Iterator[Settings]:
    yield fresh_home
    shutil.rmtree(fresh_home.home, ignore_errors=True)


def test_a_day_without_a_plan_gets_a_report_that_says_so(empty_home: Settings) -> None:
    lines: list[tuple[str, bool]] = []
    opened: list[str] = []
    code = report_command(
        "2026-11-10",
        open_it=True,
        settings=empty_home,
        echo=lambda text, err=False: lines.append((text, err)),
        opener=opened.append,
    )
    assert code == 0
    html = folder(empty_home, date(2026, 11, 10)) / HTML_NAME
    assert opened == [html.as_uri()]
    message = (
        "no portfolio plan for 2026-11-10: materialise it first (cloudopt run --start 2026-11-10 --end 2026-11-10)"
    )
    assert (message, True) in [(t.removeprefix("note: "), e) for t, e in lines]
    page = html.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    for section in BREAKDOWN_SECTIONS.values():
        body = page.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert message in body and "<img " not in body
    doc = document(empty_home, date(2026, 11, 10))
    assert doc["headline"]["resources"] == 0 and doc["headline"]["plan_id"] is None
    assert all(rows == [] for name, rows in doc["tables"].items() if name != "budget")


@pytest.mark.parametrize(
    ("day", "message"),
    [
        ("2026-11-31", "is not a date as YYYY-MM-DD"),
        ("2025-12-31", "outside the daily partitions"),
        ("2999-01-01", "outside the daily partitions"),
    ],
)
def test_a_bad_day_is_one_line_and_exit_2(empty_home: Settings, day: str, message: str) -> None:
    lines: list[tuple[str, bool]] = []
    assert report_command(day, settings=empty_home, echo=lambda t, err=False: lines.append((t, err))) == 2
    assert len(lines) == 1 and lines[0][1] and message in lines[0][0]
    assert not empty_home.reports_dir.exists()


def test_rewriting_a_report_replaces_the_whole_folder(tmp_path: Path) -> None:
    day = date(2026, 11, 17)
    first = write_report(ReportInputs(day=day, plan=None), tmp_path)
    (first.folder / "stray.txt").write_text("left from an older report")
    second = write_report(ReportInputs(day=day, plan=None), tmp_path)
    assert second.folder == first.folder and not (second.folder / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [day.isoformat()]


def executed(rows: list[dict]) -> pa.Table:
    base = {f.name: None for f in EXECUTED_ACTIONS}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=EXECUTED_ACTIONS)


def test_realised_savings_count_applied_actions_only() -> None:
    table = executed(
        [
            {"date": date(2026, 11, 2), "outcome": "applied", "monthly_savings_usd": 30.0},
            {"date": date(2026, 11, 1), "outcome": "applied", "monthly_savings_usd": 10.0},
            {"date": date(2026, 11, 1), "outcome": "would_apply", "monthly_savings_usd": 99.0},
            {"date": date(2026, 11, 1), "outcome": "rolled_back", "monthly_savings_usd": 50.0},
            {"date": date(2026, 11, 2), "outcome": "exported", "monthly_savings_usd": 7.0},
            {"date": date(2026, 11, 3), "outcome": "failed", "monthly_savings_usd": 20.0},
        ]
    )
    rows = realised_savings(table)
    assert [r["date"] for r in rows] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert [r["applied_monthly_savings_usd"] for r in rows] == [10.0, 30.0, 0.0]
    assert [r["cumulative_monthly_savings_usd"] for r in rows] == [10.0, 40.0, 40.0]
    assert rows[0]["rolled_back_actions"] == 1 and rows[0]["dry_run_monthly_savings_usd"] == 99.0
    assert rows[1]["exported_monthly_savings_usd"] == 7.0


def test_schedule_candidates_get_an_hour_of_week_heatmap(tmp_path: Path) -> None:
    """A schedule option (the demo's two days have none) is listed with the plan's choice and drawn as 7 x 24."""
    from cloudopt_pipelines.storage.schemas import PORTFOLIO_PLAN, RECOMMENDATIONS

    day = date(2026, 11, 17)
    rec = {f.name: None for f in RECOMMENDATIONS}
    recommendations = pa.Table.from_pylist(
        [
            {**rec, "account_id": "123456789012", "resource_id": "i-1", "action": "schedule",
             "option_name": "schedule:m5.large", "monthly_savings_usd": 40.0,
             "details": json.dumps({"stopped_hours_per_week": 108, "timezone": "Europe/Paris"})},
            {**rec, "account_id": "123456789012", "resource_id": "i-1", "action": "resize+schedule",
             "option_name": "schedule:m5.medium", "monthly_savings_usd": 55.0, "details": "{}"},
            {**rec, "account_id": "123456789012", "resource_id": "i-2", "action": "resize",
             "option_name": "resize:m5.medium", "monthly_savings_usd": 70.0},
        ],
        schema=RECOMMENDATIONS,
    )  # fmt: skip
    plan_row = {f.name: None for f in PORTFOLIO_PLAN}
    plan = pa.Table.from_pylist(
        [
            {**plan_row, "date": day, "plan_id": "p", "account_id": "123456789012", "resource_id": "i-1",
             "resource_kind": "ec2_instance", "deployment_type": "standalone", "group_name": "web", "env": "dev",
             "option_name": "schedule:m5.medium", "action": "resize+schedule", "monthly_cost_current_usd": 70.0,
             "monthly_cost_proposed_usd": 15.0, "monthly_savings_usd": 55.0, "one_time_cost_usd": 0.0,
             "performance_risk": 1.0, "solver_status": "optimal"},
        ],
        schema=PORTFOLIO_PLAN,
    )  # fmt: skip
    activity = pa.Table.from_pylist(
        [
            {"account_id": "123456789012", "resource_id": "i-1", "hour_of_week": h, "cpu_mean_pct": 20.0,
             "cpu_p95_pct": 40.0, "cpu_max_pct": 60.0, "active_share_pct": 100.0 if 8 <= h % 24 < 18 else 0.0,
             "window_days": 14}
            for h in range(0, 120)
        ]
    )  # fmt: skip
    inputs = ReportInputs(day=day, plan=plan, activity=activity, recommendations=recommendations)
    report = build_tables(inputs)
    [candidate] = report.tables["schedule_candidates"]
    assert candidate["option_name"] == "schedule:m5.medium" and candidate["monthly_savings_usd"] == 55.0
    assert candidate["plan_option"] == "schedule:m5.medium"
    [heat] = report.heatmaps
    assert heat["grid"][0][9] == 100.0 and heat["grid"][0][3] == 0.0 and heat["grid"][6][9] is None
    page = write_report(inputs, tmp_path).html.read_text()
    body = page.split('<section id="schedules">', 1)[1].split("</section>", 1)[0]
    assert body.count("<img ") == 1 and "i-1" in body and "i-2" not in body


def test_the_report_package_never_imports_dagster() -> None:
    code = "import sys, cloudopt_pipelines.report; sys.exit(1 if 'dagster' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
