"""A small dbt-like runner: SQL model files, run by DuckDB over the Parquet lake, one partition at a time.

A model is one ``.sql`` file in ``dbt_like_sql/``. Its header is a block of ``-- key: value``
comment lines:

    -- description: What the model is, in a sentence or two (shown in the Dagster UI);
    --   further comment lines continue the field above them.
    -- grain: one row per (account_id, date, resource_id)
    -- partitioned_by: account_date      (account_date | date | none)
    -- group: features

Dependencies are the tables the SQL reads: ``{{ ref('name') }}`` declares one, and any bare table
name that is a known lake table or model is discovered by parsing the SQL with sqlglot. When a
partition runs, each dependency becomes a temporary view scoped to that partition, so the SQL reads
just the rows it needs and never names a path.
"""

from __future__ import annotations

import graphlib
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from cloudopt_pipelines.storage.lake import Lake

PARTITIONINGS = ("account_date", "date", "none")
_REF = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_VAR = re.compile(r"\{\{\s*var\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_HEADER = re.compile(r"^--\s*([a-z_]+)\s*:\s*(.*)$")
REQUIRED_HEADER = ("description", "grain", "partitioned_by")


class ModelError(ValueError):
    """A model file that cannot be parsed or run; the message names the file and the fix."""


@dataclass(frozen=True)
class SqlModel:
    """One SQL model: its name (the file stem), header fields, SQL body and dependencies."""

    name: str
    path: Path
    description: str
    grain: str
    partitioned_by: str
    group: str
    sql: str
    refs: tuple[str, ...]
    header: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        """The SQL with every ``ref()`` replaced by the dependency's view name."""
        return _REF.sub(lambda m: m.group(1), self.sql)

    def dependencies(self, known_tables: set[str]) -> tuple[str, ...]:
        """Declared refs plus bare table names in the SQL that are known lake tables or models."""
        found = set(self.refs)
        try:
            tree = sqlglot.parse(_VAR.sub("NULL", self.render()), read="duckdb")
        except sqlglot.errors.ParseError as exc:
            raise ModelError(f"model '{self.name}' ({self.path}) is not valid DuckDB SQL: {exc}") from exc
        ctes = {cte.alias_or_name for stmt in tree if stmt for cte in stmt.find_all(exp.CTE)}
        for stmt in tree:
            if stmt is None:
                continue
            for table in stmt.find_all(exp.Table):
                name = table.name
                if name in known_tables and name not in ctes and name != self.name:
                    found.add(name)
        return tuple(sorted(found))


def parse_model(path: Path) -> SqlModel:
    """Read one model file and check its header."""
    text = path.read_text()
    header: dict[str, str] = {}
    key = None
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if not line.startswith("--"):
            break
        match = _HEADER.match(line)
        if match:
            key, value = match.groups()
            header[key] = value.strip()
        elif key is not None:
            header[key] += " " + line.removeprefix("--").strip()
    missing = [k for k in REQUIRED_HEADER if k not in header]
    if missing:
        raise ModelError(
            f"model file {path} lacks header line(s) {', '.join(f'-- {k}: ...' for k in missing)}; "
            "every model starts with its description, grain and partitioned_by"
        )
    if header["partitioned_by"] not in PARTITIONINGS:
        raise ModelError(
            f"model file {path}: partitioned_by '{header['partitioned_by']}' is not one of {PARTITIONINGS}"
        )
    return SqlModel(
        name=path.stem,
        path=path,
        description=header["description"],
        grain=header["grain"],
        partitioned_by=header["partitioned_by"],
        group=header.get("group", "features"),
        sql=text,
        refs=tuple(sorted(set(_REF.findall(text)))),
        header=header,
    )


def load_models(models_dir: Path, source_tables: set[str]) -> list[SqlModel]:
    """Every model in ``models_dir``, in dependency order; unknown refs and cycles are errors."""
    models = {m.name: m for m in (parse_model(p) for p in sorted(models_dir.glob("*.sql")))}
    known = set(source_tables) | set(models)
    graph: dict[str, set[str]] = {}
    for model in models.values():
        unknown = [r for r in model.refs if r not in known]
        if unknown:
            raise ModelError(f"model '{model.name}' refs unknown table(s) {unknown}; known: {', '.join(sorted(known))}")
        graph[model.name] = {d for d in model.dependencies(known) if d in models}
    try:
        order = list(graph_order(graph))
    except graphlib.CycleError as exc:
        raise ModelError(f"models depend on each other in a cycle: {exc.args[1]}") from exc
    return [models[name] for name in order]


def graph_order(graph: dict[str, set[str]]) -> list[str]:
    """A deterministic topological order (ties broken by name)."""
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return order


def run_model(
    model: SqlModel,
    lake: Lake,
    known_tables: dict[str, str],
    account_id: str | None = None,
    day: date | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """Run ``model`` for one partition and write the result to the lake; returns the rows written.

    ``known_tables`` maps every table the model may read to its partitioning (account_date, date or
    none). A dependency partition that was never written is an error naming it, not an empty input.
    """
    _check_partition_args(model, account_id, day)
    con = connection or duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for dep in model.dependencies(set(known_tables)):
        partitioning = known_tables[dep]
        dep_account = account_id if partitioning == "account_date" else None
        dep_day = day if partitioning in ("account_date", "date") else None
        path = lake.partition_file(dep, dep_account, dep_day)
        if path is None:
            lake.read(dep, dep_account, dep_day)  # raises the error that names the missing partition
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {dep} AS SELECT * FROM read_parquet('{path}', hive_partitioning = false)"
        )
    sql = _VAR.sub(lambda m: _literal(m.group(1), account_id, day, model), model.render())
    try:
        result = con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise ModelError(f"model '{model.name}' ({model.path}) failed on DuckDB: {exc}") from exc
    if model.partitioned_by != "none":
        _check_partition_columns(model, result, account_id, day)
    lake.write(model.name, result, account_id, day, schema=result.schema)
    return result


def _literal(name: str, account_id: str | None, day: date | None, model: SqlModel) -> str:
    values = {"account_id": account_id, "date": day.isoformat() if day else None}
    if values.get(name) is None:
        raise ModelError(f"model '{model.name}' uses var('{name}'), which this partition does not define")
    return f"'{values[name]}'"


def _check_partition_args(model: SqlModel, account_id: str | None, day: date | None) -> None:
    needs_account = model.partitioned_by == "account_date"
    needs_day = model.partitioned_by in ("account_date", "date")
    if needs_account != (account_id is not None) or needs_day != (day is not None):
        raise ModelError(
            f"model '{model.name}' is partitioned by {model.partitioned_by}; "
            f"got account_id={account_id!r}, date={day!r}"
        )


def _check_partition_columns(model: SqlModel, result: pa.Table, account_id: str | None, day: date | None) -> None:
    expected = {"date": day} if model.partitioned_by == "date" else {"account_id": account_id, "date": day}
    for column, value in expected.items():
        if column not in result.column_names:
            raise ModelError(f"model '{model.name}' must select a '{column}' column (it is partitioned by it)")
        stray = {v for v in result.column(column).to_pylist() if v != value}
        if stray:
            raise ModelError(
                f"model '{model.name}' wrote rows for {column}={sorted(map(str, stray))[:3]} into the "
                f"partition {column}={value}; filter on the partition's own {column}"
            )
