"""A small dbt-like runner: SQL model files, run by DuckDB over the Parquet lake, one partition at a time.

A model is one ``.sql`` file in ``dbt_like_sql/``. Its header is a block of ``-- key: value``
comment lines:

    -- description: What the model is, in a sentence or two (shown in the Dagster UI);
    --   further comment lines continue the field above them.
    -- grain: one row per (account_id, date, resource_id)
    -- partitioned_by: account_date      (account_date | date | none)
    -- group: features
    -- window_days: 14                   (optional: read a trailing window of days, see below)
    -- window_over: stg_utilization_5m   (the dependencies read over the window)
    -- optional_sources: cluster_metrics_5m   (dependencies that may be absent: read as empty)
    -- file_row_number: utilization_5m   (dependencies whose view has a file_row_number column)
    -- batch: true                       (optional: one statement may compute many partitions, below)

Dependencies are the tables the SQL reads: ``{{ ref('name') }}`` declares one, and any bare table
name that is a known lake table or model is discovered by parsing the SQL with sqlglot. When a
partition runs, each dependency becomes a temporary view scoped to that partition, so the SQL reads
just the rows it needs and never names a path.

Windows. A model with ``window_days: N`` and ``window_over: a, b`` is still written one partition
(account x day) at a time, but its ``window_over`` dependencies are views over the N days ending
with the partition's day (the partition and the N-1 days before it). Days of the window that were
never written are skipped and counted (``ModelRun.inputs``; the SQL shows them through
coverage); a window with no partition at all is a ``ModelError`` naming the partitions it
looked for. ``{{ var('window_days') }}`` and ``{{ var('window_start') }}`` give the window to the
SQL, and ``run_model(..., window_days=...)`` overrides the header (7, 14, 32 or 93 days, the
look-back periods of AWS Compute Optimizer, or any 1-366).

Missing sources. A dependency named in ``optional_sources`` whose partition was never written (for
example a table whose collector is not deployed yet) becomes an empty view with the table's schema
(``source_schemas``), so the model runs and writes an empty partition instead of failing. Every
other missing dependency partition is an error naming it.

Row order. A dependency named in ``file_row_number`` gets a ``file_row_number`` column (BIGINT,
DuckDB's ``read_parquet(..., file_row_number = true)``): the row's position in its partition file,
0 first. "The later-listed raw row wins" is ``arg_max_null(x, file_row_number)``; unlike
``row_number() OVER ()`` it costs no ordered single-threaded pass. Within a window the numbers
restart with every day's file.

Batches. A model with ``-- batch: true`` computes any number of partitions in one statement: its
SQL never uses ``var('account_id')`` or ``var('date')``; it takes ``account_id`` and ``date`` from
its inputs and keys every aggregate by them. ``execute_model_batch`` then builds each dependency view
over the files of every partition of the batch, with ``account_id`` and ``date`` read from the
partition path (DuckDB hive partitioning, so a file's own columns can never move a row to another
partition), runs the statement once per chunk of at most ``max_batch_rows`` input rows, splits the
result by (account_id, date) and writes each partition as ``execute_model`` would. One statement over
many partitions spreads the work over every core (one partition file has a single large row group)
and pays the fixed cost of a run (connection, views, planning) once. A single-run backfill runs this
way; a single partition is a batch of one.
"""

from __future__ import annotations

import functools
import graphlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from cloudopt_pipelines.storage.lake import Lake

PARTITIONINGS = ("account_date", "date", "none")
_REF = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_VAR = re.compile(r"\{\{\s*var\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_HEADER = re.compile(r"^--\s*([a-z_]+)\s*:\s*(.*)$")
REQUIRED_HEADER = ("description", "grain", "partitioned_by")
MAX_WINDOW_DAYS = 366
# Input rows per batch statement: at about 40 bytes per sample held by the exact quantiles, 64 M rows
# stay under 3 GB (the features benchmark measures the peak).
DEFAULT_MAX_BATCH_ROWS = 64_000_000
_PARTITION_VARS = ("account_id", "date")


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
    window_days: int | None = None
    window_over: tuple[str, ...] = ()
    optional_sources: tuple[str, ...] = ()
    file_row_number: tuple[str, ...] = ()
    batch: bool = False

    def render(self) -> str:
        """The SQL with every ``ref()`` replaced by the dependency's view name."""
        return _REF.sub(lambda m: m.group(1), self.sql)

    def dependencies(self, known_tables: set[str]) -> tuple[str, ...]:
        """Declared refs plus bare table names in the SQL that are known lake tables or models."""
        found = set(self.refs)
        tables, ctes = _table_names(self.name, str(self.path), self.render())
        found.update(t for t in tables if t in known_tables and t not in ctes and t != self.name)
        return tuple(sorted(found))


@functools.lru_cache(maxsize=256)
def _table_names(name: str, path: str, sql: str) -> tuple[frozenset[str], frozenset[str]]:
    """The table names and CTE names of a model's SQL (parsed once per text: sqlglot takes ~0.1 s)."""
    try:
        tree = sqlglot.parse(_VAR.sub("NULL", sql), read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise ModelError(f"model '{name}' ({path}) is not valid DuckDB SQL: {exc}") from exc
    ctes = {cte.alias_or_name for stmt in tree if stmt for cte in stmt.find_all(exp.CTE)}
    tables = {table.name for stmt in tree if stmt for table in stmt.find_all(exp.Table)}
    return frozenset(tables), frozenset(ctes)


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
    window_days = None
    if "window_days" in header:
        window_days = _window_days(header["window_days"], f"model file {path}")
        if model_partitioning(header) != "account_date":
            raise ModelError(f"model file {path}: a window model must be partitioned_by account_date")
    window_over = _names(header.get("window_over", ""))
    if window_over and window_days is None:
        raise ModelError(f"model file {path}: window_over needs a '-- window_days: N' header line")
    batch = header.get("batch", "false").lower()
    if batch not in ("true", "false"):
        raise ModelError(f"model file {path}: batch '{header['batch']}' is not true or false")
    if batch == "true":
        if window_days is not None or header["partitioned_by"] == "none":
            raise ModelError(f"model file {path}: batch: true needs a partitioned model without window_days")
        used = sorted(set(_VAR.findall(text)) & set(_PARTITION_VARS))
        if used:
            raise ModelError(
                f"model file {path}: a batch model computes many partitions at once, so it cannot use "
                f"var({', '.join(repr(v) for v in used)}); select account_id and date from the inputs instead"
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
        window_days=window_days,
        window_over=window_over,
        optional_sources=_names(header.get("optional_sources", "")),
        file_row_number=_names(header.get("file_row_number", "")),
        batch=batch == "true",
    )


def model_partitioning(header: dict[str, str]) -> str:
    return header["partitioned_by"]


def _names(raw: str) -> tuple[str, ...]:
    return tuple(sorted({n.strip() for n in raw.replace(" ", ",").split(",") if n.strip()}))


def _window_days(raw: object, where: str) -> int:
    try:
        days = int(str(raw).split()[0])
    except (ValueError, IndexError):
        raise ModelError(f"{where}: window_days {raw!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise ModelError(f"{where}: window_days {days} is outside 1-{MAX_WINDOW_DAYS}")
    return days


def load_models(models_dir: Path, source_tables: set[str]) -> list[SqlModel]:
    """Every model in ``models_dir``, in dependency order; unknown refs and cycles are errors."""
    models = {m.name: m for m in (parse_model(p) for p in sorted(models_dir.glob("*.sql")))}
    known = set(source_tables) | set(models)
    graph: dict[str, set[str]] = {}
    for model in models.values():
        named = (*model.refs, *model.window_over, *model.optional_sources, *model.file_row_number)
        unknown = [r for r in named if r not in known]
        if unknown:
            raise ModelError(
                f"model '{model.name}' names unknown table(s) {unknown}; known: {', '.join(sorted(known))}"
            )
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


@dataclass
class InputRead:
    """What one dependency view of a run held: the partitions read, those missing, and its rows."""

    table: str
    partitions: list[str]
    missing: list[str]
    rows: int
    absent_source: bool = False


@dataclass
class ModelRun:
    """The result of one partition run: the rows written and what each input held."""

    table: pa.Table
    inputs: dict[str, InputRead]
    window_days: int | None = None
    window_start: date | None = None

    @property
    def input_rows(self) -> int:
        return sum(i.rows for i in self.inputs.values())


def run_model(
    model: SqlModel,
    lake: Lake,
    known_tables: dict[str, str],
    account_id: str | None = None,
    day: date | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
    window_days: int | None = None,
    source_schemas: dict[str, pa.Schema] | None = None,
) -> pa.Table:
    """Run ``model`` for one partition and write the result to the lake; returns the rows written.

    ``known_tables`` maps every table the model may read to its partitioning (account_date, date or
    none). A dependency partition that was never written is an error naming it, not an empty input
    (except for ``optional_sources``, and days missing inside a window: see the module docstring).
    """
    return execute_model(model, lake, known_tables, account_id, day, connection, window_days, source_schemas).table


def execute_model(
    model: SqlModel,
    lake: Lake,
    known_tables: dict[str, str],
    account_id: str | None = None,
    day: date | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
    window_days: int | None = None,
    source_schemas: dict[str, pa.Schema] | None = None,
) -> ModelRun:
    """``run_model``, returning the written rows together with what each input view held."""
    _check_partition_args(model, account_id, day)
    if model.batch:
        return execute_model_batch(
            model, lake, known_tables, [(account_id, day)], connection, window_days, source_schemas
        )[0]
    window = None
    if model.window_days is not None:
        window = _window_days(window_days or model.window_days, f"model '{model.name}'")
    elif window_days is not None:
        raise ModelError(f"model '{model.name}' has no window_days header; it cannot run over a window")
    window_start = day - timedelta(days=window - 1) if window and day else None
    con = lake.attach(connection or duckdb.connect())
    _use_utc(con)
    inputs: dict[str, InputRead] = {}
    for dep in model.dependencies(set(known_tables)):
        partitioning = known_tables[dep]
        dep_account = account_id if partitioning == "account_date" else None
        if window and dep in model.window_over and partitioning in ("account_date", "date"):
            days = [window_start + timedelta(days=i) for i in range(window)]
        else:
            days = [day if partitioning in ("account_date", "date") else None]
        found: list[tuple[str, Path | str]] = []
        missing: list[str] = []
        for d in days:
            path = lake.verified_file(dep, dep_account, d)
            label = _partition_label(dep_account, d)
            if path is None:
                missing.append(label)
            else:
                found.append((label, path))
        if not found and dep in model.optional_sources:
            _empty_view(con, model, dep, source_schemas)
            inputs[dep] = InputRead(dep, [], missing, 0, absent_source=True)
            continue
        if not found:
            if len(days) == 1:
                lake.read(dep, dep_account, days[0])  # raises the error that names the missing partition
            raise ModelError(
                f"model '{model.name}' for partition {_partition_label(account_id, day)}: its {window}-day "
                f"window has no partition of '{dep}' at all ({_partition_label(dep_account, days[0])} to "
                f"{days[-1].isoformat()}); materialise '{dep}' for those days first"
            )
        files = ", ".join(f"'{path}'" for _, path in found)
        row_number = ", file_row_number = true" if dep in model.file_row_number else ""
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {dep} AS "
            f"SELECT * FROM read_parquet([{files}], hive_partitioning = false{row_number})"
        )
        rows = int(con.execute(f"SELECT count(*) FROM {dep}").fetchall()[0][0])
        inputs[dep] = InputRead(dep, [label for label, _ in found], missing, rows)
    values = {
        "account_id": account_id,
        "date": day.isoformat() if day else None,
        "window_days": str(window) if window else None,
        "window_start": window_start.isoformat() if window_start else None,
    }
    sql = _VAR.sub(lambda m: _literal(m.group(1), values, model), model.render())
    try:
        result = con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise ModelError(f"model '{model.name}' ({model.path}) failed on DuckDB: {exc}") from exc
    if model.partitioned_by != "none":
        _check_partition_columns(model, result, account_id, day)
    lake.write(model.name, result, account_id, day, schema=result.schema)
    return ModelRun(result, inputs, window, window_start)


def execute_model_batch(*args, **kwargs) -> list[ModelRun]:
    """``iter_model_batch`` (the same arguments) as a list: one ModelRun per partition, each written."""
    return list(iter_model_batch(*args, **kwargs))


def iter_model_batch(
    model: SqlModel,
    lake: Lake,
    known_tables: dict[str, str],
    partitions: list[tuple[str | None, date | None]],
    connection: duckdb.DuckDBPyConnection | None = None,
    window_days: int | None = None,
    source_schemas: dict[str, pa.Schema] | None = None,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
) -> Iterator[ModelRun]:
    """Run ``model`` for every partition of ``partitions`` and write each, yielding a ModelRun per partition.

    A ``batch: true`` model runs one statement per chunk of partitions (see the module docstring);
    any other model runs partition by partition on one connection. Every dependency partition is
    looked up before anything runs: a missing one is an error naming it, and nothing is written.
    Runs come as each chunk is written, so a caller need not hold every partition's rows at once.
    """
    partitions = list(dict.fromkeys(partitions))
    con = lake.attach(connection or duckdb.connect())
    if not model.batch:
        for account_id, day in partitions:
            yield execute_model(model, lake, known_tables, account_id, day, con, window_days, source_schemas)
        return
    if window_days is not None:
        raise ModelError(f"model '{model.name}' has no window_days header; it cannot run over a window")
    if not partitions:
        return
    for account_id, day in partitions:
        _check_partition_args(model, account_id, day)
    _check_lake_root(model, lake)
    _use_utc(con)
    deps = model.dependencies(set(known_tables))
    files = {p: _partition_inputs(model, lake, known_tables, deps, *p) for p in partitions}
    for index, chunk in enumerate(_chunks(partitions, files, max_batch_rows)):
        if index:
            # Listed again before a later chunk runs: an upstream partition rewritten meanwhile has
            # a new file name (the lake never rewrites a file in place).
            files.update({p: _partition_inputs(model, lake, known_tables, deps, *p) for p in chunk})
        yield from _run_batch(model, lake, known_tables, deps, chunk, files, con, source_schemas)


def _use_utc(con: duckdb.DuckDBPyConnection) -> None:
    if con.execute("SELECT current_setting('TimeZone')").fetchall()[0][0] != "UTC":
        con.execute("SET TimeZone = 'UTC'")  # ICU: a few ms, worth skipping on a reused connection


def _check_lake_root(model: SqlModel, lake: Lake) -> None:
    """Batch views read account_id and date from the path: DuckDB parses every ``k=v`` folder of it."""
    root = lake.root.resolve() if lake.is_local else lake.url
    if any("=" in part for part in str(root).split("/")):
        raise ModelError(
            f"model '{model.name}' is a batch model, which reads each row's account_id and date from its "
            f"partition path, and the lake root {root} has a folder with '=' in its name, which DuckDB would "
            "read as a partition value; put the lake (CLOUDOPT_HOME) under a path without '='"
        )


def _partition_inputs(
    model: SqlModel, lake: Lake, known_tables: dict[str, str], deps: tuple[str, ...], account_id, day
) -> dict[str, tuple[Path | str | None, int, str]]:
    """Each dependency's file for one partition (None: absent optional source), row count and label."""
    found: dict[str, tuple[Path | str | None, int, str]] = {}
    for dep in deps:
        partitioning = known_tables[dep]
        dep_account = account_id if partitioning == "account_date" else None
        dep_day = day if partitioning in ("account_date", "date") else None
        path = lake.verified_file(dep, dep_account, dep_day)
        if path is None:
            if dep not in model.optional_sources:
                lake.read(dep, dep_account, dep_day)  # raises the error that names the missing partition
            found[dep] = (None, 0, _partition_label(dep_account, dep_day))
        else:
            found[dep] = (path, lake.num_rows(path), _partition_label(dep_account, dep_day))
    return found


def _chunks(partitions: list, files: dict, max_rows: int) -> list[list]:
    """Consecutive runs of partitions whose input rows add up to at most ``max_rows`` (at least one each)."""
    chunks: list[list] = [[]]
    rows = 0
    for partition in partitions:
        size = sum(n for _, n, _ in files[partition].values())
        if chunks[-1] and rows + size > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(partition)
        rows += size
    return chunks


_HIVE_TYPES = {"account_date": "{'account_id': VARCHAR, 'date': DATE}", "date": "{'date': DATE}"}


def _run_batch(
    model: SqlModel,
    lake: Lake,
    known_tables: dict[str, str],
    deps: tuple[str, ...],
    chunk: list[tuple[str | None, date | None]],
    files: dict,
    con: duckdb.DuckDBPyConnection,
    source_schemas: dict[str, pa.Schema] | None,
) -> list[ModelRun]:
    for dep in deps:
        paths = list(dict.fromkeys(str(files[p][dep][0]) for p in chunk if files[p][dep][0] is not None))
        if not paths:
            _empty_view(con, model, dep, source_schemas)
            continue
        listing = ", ".join(f"'{p}'" for p in paths)
        row_number = ", file_row_number = true" if dep in model.file_row_number else ""
        hive_types = _HIVE_TYPES.get(known_tables[dep])
        if hive_types is None:
            options = "hive_partitioning = false"
        else:
            options = f"hive_partitioning = true, hive_types = {hive_types}, hive_types_autocast = false"
        try:
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW {dep} AS SELECT * FROM read_parquet([{listing}], {options}{row_number})"
            )
        except duckdb.Error as exc:
            raise ModelError(f"model '{model.name}': cannot read the partitions of '{dep}': {exc}") from exc
    sql = _VAR.sub(lambda m: _literal(m.group(1), {}, model), model.render())
    try:
        result = con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise ModelError(f"model '{model.name}' ({model.path}) failed on DuckDB: {exc}") from exc
    parts = _split_by_partition(model, result, chunk)
    tables = [parts.get(p, result.schema.empty_table()) for p in chunk]
    # Parquet encoding releases the GIL: a few writers at once keep every core busy.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda p, t: lake.write(model.name, t, p[0], p[1], schema=result.schema), chunk, tables))
    runs = []
    for (account_id, day), table in zip(chunk, tables, strict=True):
        inputs = {
            dep: InputRead(dep, [] if path is None else [label], [] if path else [label], rows, path is None)
            for dep, (path, rows, label) in files[(account_id, day)].items()
        }
        runs.append(ModelRun(table, inputs))
    return runs


def _split_by_partition(
    model: SqlModel, result: pa.Table, chunk: list[tuple[str | None, date | None]]
) -> dict[tuple[str | None, date | None], pa.Table]:
    """The result's rows per (account_id, date), in the statement's order; rows of another partition are an error."""
    by_account = model.partitioned_by == "account_date"
    for column in ("account_id", "date") if by_account else ("date",):
        if column not in result.column_names:
            raise ModelError(f"model '{model.name}' must select a '{column}' column (it is partitioned by it)")
        if result.column(column).null_count:
            raise ModelError(
                f"model '{model.name}' wrote {result.column(column).null_count} row(s) with a NULL {column}; "
                f"every row must carry its partition's {column} (select it from the inputs)"
            )
    if result.num_rows == 0:
        return {}
    if by_account:
        codes = pc.dictionary_encode(result.column("account_id")).combine_chunks()
        account_code = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        account_values: list[str | None] = codes.dictionary.to_pylist()
    else:
        account_code, account_values = np.zeros(result.num_rows, dtype=np.int64), [None]
    days = result.column("date").cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    key = account_code << 32 | (days - days.min())
    # Accounts are coded in order of first appearance, so a statement ordered by account_id, date
    # gives a sorted key and each partition is one zero-copy slice; otherwise a stable sort.
    order = None if bool(np.all(key[1:] >= key[:-1])) else np.argsort(key, kind="stable")
    if order is not None:
        key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    wanted = set(chunk)
    out = {}
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        row = int(start if order is None else order[start])
        partition = (account_values[account_code[row]], date(1970, 1, 1) + timedelta(days=int(days[row])))
        if partition not in wanted:
            raise ModelError(
                f"model '{model.name}' wrote rows for account_id={partition[0]}, date={partition[1]}, which is "
                "not a partition of this run; filter on the partitions' own account_id and date"
            )
        out[partition] = result.slice(start, end - start) if order is None else result.take(order[start:end])
    return out


def _empty_view(
    con: duckdb.DuckDBPyConnection, model: SqlModel, dep: str, source_schemas: dict[str, pa.Schema] | None
) -> None:
    """The view of an absent optional source: an empty table with the source's schema."""
    schema = (source_schemas or {}).get(dep)
    if schema is None:
        raise ModelError(
            f"model '{model.name}' lists '{dep}' in optional_sources but no schema is known for it; "
            "pass source_schemas={'" + dep + "': schema}"
        )
    con.register(f"__empty_{dep}", schema.empty_table())
    row_number = ", CAST(NULL AS BIGINT) AS file_row_number" if dep in model.file_row_number else ""
    con.execute(f"CREATE OR REPLACE TEMP VIEW {dep} AS SELECT *{row_number} FROM __empty_{dep}")


def _partition_label(account_id: str | None, day: date | None) -> str:
    parts = [p for p in (account_id and f"account {account_id}", day and f"date {day.isoformat()}") if p]
    return ", ".join(parts) or "the whole table"


def _literal(name: str, values: dict[str, str | None], model: SqlModel) -> str:
    if name == "window_days" and values.get(name) is not None:
        return str(int(values[name]))  # a number, usable in arithmetic as it is
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
        # Distinct values first: to_pylist() of a million-row column alone takes seconds.
        stray = {v for v in pc.unique(result.column(column)).to_pylist() if v != value}
        if stray:
            raise ModelError(
                f"model '{model.name}' wrote rows for {column}={sorted(map(str, stray))[:3]} into the "
                f"partition {column}={value}; filter on the partition's own {column}"
            )
