"""The documentation stays true: every warehouse column is documented and every example query runs."""

import re
from pathlib import Path

import duckdb
import pytest

from cloudopt_pipelines.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def _table_columns(page: str) -> set[str]:
    """Column names documented as rows of markdown tables: | `name` | type | meaning |."""
    return set(re.findall(r"^\|\s*`([a-z_0-9]+)`\s*\|", (DOCS / page).read_text(), flags=re.MULTILINE))


def _quoted_names(page: str) -> set[str]:
    """Every identifier inside backticks, including comma-separated lists such as `a, b, c`."""
    prose = re.sub(r"```.*?```", "", (DOCS / page).read_text(), flags=re.DOTALL)
    spans = re.findall(r"`([^`]+)`", prose)
    return {name for span in spans for name in re.findall(r"[a-z_][a-z_0-9]*", span)}


def test_every_warehouse_column_is_documented(demo_home: Settings) -> None:
    documented = _table_columns("warehouse.md") | _quoted_names("features.md")
    with duckdb.connect(str(demo_home.warehouse_path), read_only=True) as con:
        views = [v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
        missing = {
            f"{view}.{column}"
            for view in views
            for (column, *_rest) in con.execute(f"DESCRIBE {view}").fetchall()
            if column not in documented
        }
    assert not missing, f"document these columns in docs/warehouse.md or docs/features.md: {sorted(missing)}"


def _sql_blocks(path: Path) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("query", _sql_blocks(DOCS / "warehouse.md"), ids=lambda q: q.split("\n")[0][:40])
def test_documented_query_runs_on_the_demo_warehouse(demo_home: Settings, query: str) -> None:
    """On the analysts' locked-down connection, as `cloudopt sql` runs it."""
    from cloudopt_pipelines.storage.warehouse import MAX_SQL_ROWS, analyst_query

    result = analyst_query(demo_home.warehouse_path, query, MAX_SQL_ROWS, lake_root=demo_home.lake_dir)
    assert result.rows, "a documented example should return rows on the demo data"


def test_readme_names_the_two_commands_and_every_cli_command() -> None:
    from typer.main import get_command

    from cloudopt_pipelines.cli import app

    text = README.read_text()
    assert "make demo" in text and "make test" in text and "make dev" in text
    command = get_command(app)
    for name in command.commands:
        assert f"cloudopt {name}" in text, f"README does not mention 'cloudopt {name}'"
