"""The command line's output: money as money, JSON/CSV/Parquet rows, bad input as one line with exit 2."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cloudopt_pipelines.cli import app
from cloudopt_pipelines.output import csv_text, format_value, json_text, table_text
from cloudopt_pipelines.settings import Settings


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("monthly_savings_usd", 2382.1, "2,382.10"),
        ("total", 123456789.0, "123,456,789.00"),  # never 1.235e+08
        ("cost", 12.0, "12.00"),
        ("cpu_p95", 0.123456, "0.1235"),
        ("ratio", 3.0, "3.0"),
        ("n", 42, "42"),
        ("x", None, ""),
    ],
)
def test_numbers_print_in_plain_notation_and_money_with_two_decimals(column, value, shown) -> None:
    assert format_value(column, value) == shown


def test_json_and_csv_keep_full_values() -> None:
    columns, rows = ["account_id", "monthly_savings_usd"], [("012345678901", 2382.1049)]
    assert '"monthly_savings_usd": 2382.1049' in json_text(columns, rows)
    assert csv_text(columns, rows) == "account_id,monthly_savings_usd\n012345678901,2382.1049\n"
    assert "2,382.10" in table_text(columns, rows)


def _invoke(args: list[str], home: Path):
    return CliRunner().invoke(app, args, env={"CLOUDOPT_HOME": str(home), "CLOUDOPT_ENV": "demo"})


def test_sql_prints_money_as_money_and_writes_files(demo_home: Settings, tmp_path: Path) -> None:
    query = "SELECT account_id, sum(monthly_savings_usd) AS savings_usd FROM recommendations GROUP BY 1 ORDER BY 1"
    table = _invoke(["sql", query], demo_home.home)
    assert table.exit_code == 0, table.output
    import duckdb

    with duckdb.connect(str(demo_home.warehouse_path), read_only=True) as con:
        expected = con.execute(query).fetchall()
    for _, savings in expected:
        assert f"{savings:,.2f}" in table.output
    as_json = _invoke(["sql", "--json", query], demo_home.home)
    assert as_json.exit_code == 0 and '"savings_usd"' in as_json.output
    target = tmp_path / "savings.parquet"
    written = _invoke(["sql", "--output", str(target), query], demo_home.home)
    assert written.exit_code == 0, written.output
    assert pq.read_table(target).to_pylist() == [{"account_id": a, "savings_usd": s} for a, s in expected]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--start", "2026-13-01", "--end", "2026-11-17"], "--start '2026-13-01' is not a date"),
        (["run", "--start", "2026-11-17", "--end", "2026-11-16"], "--end 2026-11-16 is before --start 2026-11-17"),
        (
            ["run", "--start", "2026-11-16", "--end", "2026-11-16", "--accounts", "12345678901"],
            "--accounts has ['12345678901'], not 12-digit AWS account ids",
        ),
        (["run", "--start", "2026-11-10", "--end", "2026-11-16"], "before the first partition 2026-11-16"),
        (["sql", "--json", "--csv", "SELECT 1"], "give one of them"),
        (["sql", "--output", "x.xlsx", "SELECT 1"], "write a .csv, .parquet or .json file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = _invoke(args, tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "lake").exists()


def test_accounts_and_info_print_json(demo_home: Settings) -> None:
    import json

    accounts = _invoke(["accounts", "--json"], demo_home.home)
    assert accounts.exit_code == 0, accounts.output
    from tests.conftest import DEMO_ACCOUNTS

    assert json.loads(accounts.output) == [{"account_id": a, "status": "ACTIVE"} for a in DEMO_ACCOUNTS]
    info = json.loads(_invoke(["info", "--json"], demo_home.home).output)
    assert info["env"] == "demo" and info["partitions_by_table"]["resources"] == 4


def test_progress_bar_only_for_a_terminal_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cloudopt_pipelines import cli

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.delenv("CI", raising=False)
    assert cli._show_progress()
    monkeypatch.setenv("CI", "true")
    assert not cli._show_progress()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys, "stdout", open(__file__))  # a file, not a terminal
    assert not cli._show_progress()


def test_approve_lists_the_plan_as_json_and_refuses_a_bad_date_in_one_line(demo_home: Settings) -> None:
    import json

    import duckdb

    listed = _invoke(["approve", "--date", "2026-11-17", "--json"], demo_home.home)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    with duckdb.connect(str(demo_home.warehouse_path), read_only=True) as con:
        changes = con.execute(
            "SELECT count(*) FROM portfolio_plan WHERE date = '2026-11-17' AND action <> 'keep'"
        ).fetchone()[0]
    assert len(rows) == changes > 0 and all(r["action_id"].startswith("act-") for r in rows)
    bad = _invoke(["approve", "--date", "2026-11-31", "--list"], demo_home.home)
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == [
        "error: --date '2026-11-31' is not a date: give a UTC day as YYYY-MM-DD, e.g. 2026-11-16"
    ]
