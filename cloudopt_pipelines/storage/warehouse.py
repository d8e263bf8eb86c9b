"""The DuckDB warehouse analysts query: a view per lake table plus the marts.

The warehouse file holds no data of its own, only views over the lake's Parquet files, so new
partitions show up in every query without a rebuild (on an S3 lake the views list the files the
manifests name, so new partitions show up at the next rebuild, which every run ends with). It is
rebuilt (when tables or marts change) into a temporary file that then replaces the old one with
``os.replace``: an analyst who has the warehouse open read-only keeps reading, and no writer ever
waits for a reader's lock. Writers are serialised by an exclusive file lock beside the database (and
by a Dagster concurrency pool).

DuckDB verifies no checksum and reads a flipped bit as other numbers, so the rebuild checks every
file a view names against the SHA-256 recorded when it was written (``storage/verified.py`` keeps the
digests already checked, so an unchanged file is hashed once). One bad lake entry never breaks the
rebuild: a folder that is not a table name is skipped, a table with a damaged or unreadable file gets a
view over its intact files only, and each is reported with the command that repairs it. Analysts'
connections (``read_only``) cannot write or read anything but the warehouse and the lake, nor load
extensions, nor undo those settings.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from cloudopt_pipelines.sqlmodels.runner import parse_model
from cloudopt_pipelines.storage.lake import Lake, open_lake, quote_identifier, quote_literal, repair_hint
from cloudopt_pipelines.storage.schemas import TABLES, UNION_VIEWS
from cloudopt_pipelines.storage.verified import FileVerifier, cache_path

MAX_SQL_ROWS = 10_000
"""The most rows ``cloudopt sql`` prints: larger results belong in a tool that reads the warehouse directly."""
FETCH_BATCH_ROWS = 1_000
ANALYST_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


@dataclass(frozen=True)
class WarehouseBuild:
    """What a rebuild produced."""

    path: Path
    views: list[str]
    empty_views: list[str]
    marts: list[str]
    warnings: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    """Lake files no view reads: damaged (SHA-256 mismatch) or unreadable; each is also in ``warnings``."""
    files_hashed: int = 0
    """Lake files whose SHA-256 this rebuild computed (the others were verified before, unchanged since)."""
    files_from_cache: int = 0
    """Lake files found verified in the cache beside the warehouse: same name, size and mtime (same digest on S3)."""
    files_without_digest: int = 0
    """Lake files written before digests existed: read unchecked."""


class WriterWaitStopped(RuntimeError):
    """The wait for the warehouse's writer lock was given up because the caller was asked to stop."""


STOP_CHECK_S = 1.0
"""How often a writer waiting for the lock asks whether it should stop (a run being terminated)."""


@contextmanager
def writer_lock(path: Path, timeout_s: float = 300.0, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
    """Hold the warehouse's exclusive writer lock; a clear error if another writer keeps it too long.

    ``should_stop`` is asked about once a second while the lock is held by another writer: once it says
    yes the wait ends with ``WriterWaitStopped``, and nothing has been written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + timeout_s
    next_stop_check = time.monotonic()
    with open(lock_path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(
                        f"another writer has held the warehouse lock {lock_path} for over {timeout_s:.0f} s; "
                        "wait for the running materialisation to finish"
                    ) from None
                if should_stop is not None and now >= next_stop_check:
                    if should_stop():
                        raise WriterWaitStopped(
                            f"stopped waiting for the warehouse lock {lock_path} (held by another writer): "
                            "this rebuild was asked to stop; nothing was written"
                        ) from None
                    next_stop_check = now + STOP_CHECK_S
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_warehouse(
    lake: Lake,
    path: Path,
    marts_dir: Path | None = None,
    verify_all: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> WarehouseBuild:
    """Rebuild the warehouse at ``path``: one view per lake table (and per known empty table), then marts.

    Every file a view names is first checked against the SHA-256 recorded when it was written; files
    verified by an earlier rebuild and unchanged since are not hashed again (the cache beside the
    warehouse, ignored with ``verify_all``). Folders of the lake that are not table names are skipped,
    and a table with damaged or unreadable files gets a view over its intact files; both are listed in
    ``warnings`` with the fix. ``should_stop`` ends a wait for another writer's lock (``writer_lock``).
    """
    views: list[str] = []
    empty: list[str] = []
    marts: list[str] = []
    warnings: list[str] = []
    left_out: list[str] = []
    with writer_lock(path, should_stop=should_stop):
        verifier = FileVerifier(cache_path(path), verify_all=verify_all)
        lake.sweep()
        _sweep_warehouse_temps(path)
        warnings.extend(
            f"lake folder {lake.url}/{name} is not a table (a table name is lower-case letters, digits and "
            "'_'); skipped: move it out of the lake"
            for name in lake.ignored_folders()
        )
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            con = lake.attach(duckdb.connect(str(tmp)))
            try:
                for table in lake.tables():
                    if _create_table_view(con, lake, table, verifier, warnings, left_out):
                        views.append(table)
                for view, prefix in UNION_VIEWS.items():
                    members = [t for t in views if t.startswith(prefix)]
                    if members and view not in views:
                        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {quote_identifier(m)}" for m in members)
                        con.execute(f"CREATE VIEW {quote_identifier(view)} AS {union}")
                        views.append(view)
                for table, schema in TABLES.items():
                    if table not in views:
                        con.execute(f"CREATE VIEW {quote_identifier(table)} AS {_empty_select(schema)}")
                        empty.append(table)
                if marts_dir is not None and marts_dir.exists():
                    for mart_path in sorted(marts_dir.glob("*.sql")):
                        mart = parse_model(mart_path)
                        try:
                            con.execute(f"CREATE VIEW {quote_identifier(mart.name)} AS {mart.render()}")
                            marts.append(mart.name)
                        except duckdb.Error as exc:
                            # A mart over a table no stage has written yet waits for that stage.
                            if "does not exist" not in str(exc):
                                raise
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, path)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                if leftover.exists():
                    leftover.unlink()
        verifier.save()
    return WarehouseBuild(
        path=path,
        views=views,
        empty_views=empty,
        marts=marts,
        warnings=warnings,
        left_out=left_out,
        files_hashed=verifier.hashed,
        files_from_cache=verifier.from_cache,
        files_without_digest=verifier.without_digest,
    )


def _create_table_view(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    table: str,
    verifier: FileVerifier,
    warnings: list[str],
    left_out: list[str],
) -> bool:
    """The view of one lake table; over its intact files only when some are damaged or cannot be read.
    False if none can be read."""
    options = "hive_partitioning = false, union_by_name = true"
    name = quote_identifier(table)
    files = lake.files(table)
    if not files:
        return False
    intact: list[Path | str] = []
    gone = 0
    for file in files:
        try:
            damage = verifier.damage(lake, file)
        except FileNotFoundError:
            gone += 1  # a run rewrote its partition since the listing: the new file is checked next rebuild
            continue
        if damage is None:
            intact.append(file)
            continue
        actual, recorded = damage
        left_out.append(str(file))
        warnings.append(
            f"lake file {file} of table '{table}' is damaged (its SHA-256 is {actual[:12]}..., {recorded[:12]}... "
            f"when written); the view '{table}' leaves it out and shows no new partition of that table until "
            f"it is repaired: {repair_hint(lake, table, file)}"
        )
    first_error = "every file is damaged"
    if len(intact) + gone == len(files):
        # A local lake's view is a glob, so partitions written after this rebuild show up in it.
        source = lake.parquet_source(table) if lake.is_local else _listing(intact)
        try:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({source}, {options})")
            return True
        except duckdb.Error as exc:
            first_error = str(exc).splitlines()[0]
    good: list[Path | str] = []
    for file in intact:
        try:
            lake.read_footer(file)
            good.append(file)
        except (OSError, pa.ArrowException) as exc:
            left_out.append(str(file))
            warnings.append(
                f"lake file {file} of table '{table}' cannot be read ({str(exc).splitlines()[0]}); the view "
                f"'{table}' leaves it out and shows no new partition of that table until it is repaired: "
                f"{repair_hint(lake, table, file)}"
            )
    if good:
        try:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_listing(good)}, {options})")
            return True
        except duckdb.Error as exc:
            first_error = str(exc).splitlines()[0]
    warnings.append(f"no view of lake table '{table}': {first_error}; re-materialise that table")
    return False


def _listing(files: list[Path | str]) -> str:
    return "[" + ", ".join(quote_literal(str(f)) for f in files) + "]"


def _sweep_warehouse_temps(path: Path) -> None:
    """Remove temporary warehouse files a killed rebuild left; the caller holds the writer lock."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp*"):
        leftover.unlink(missing_ok=True)


def _empty_select(schema: pa.Schema) -> str:
    con = duckdb.connect()
    con.register("empty", schema.empty_table())
    described = con.sql("SELECT column_name, column_type FROM (DESCRIBE empty)").fetchall()
    columns = ", ".join(f'CAST(NULL AS {dtype}) AS "{name}"' for name, dtype in described)
    return f"SELECT {columns} WHERE false"


@contextmanager
def read_only(path: Path, lake_root: Path | str | Lake | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An analyst's connection: read-only, so it never blocks a pipeline run, and locked down.

    Nothing but the warehouse file and the lake (``lake_root``: a ``Lake``, its URL or directory; default
    the ``lake`` folder beside the warehouse) can be read, no file can be written (``COPY``, ``EXPORT``,
    ``ATTACH`` are refused by DuckDB's ``enable_external_access = false``), no extension installed or loaded, and the
    configuration is locked so a ``SET`` cannot undo any of it.
    """
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}; run 'make demo' or 'cloudopt run' first")
    path = path.resolve()
    lake = lake_root if isinstance(lake_root, Lake) else open_lake(lake_root or path.with_name("lake"))
    lake_dir = f"{lake.root.resolve()}/" if lake.is_local else f"{lake.url}/"
    # An in-memory database is never shared through DuckDB's instance cache, so locking its
    # configuration cannot leak into another connection of this process.
    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_persistent_secrets": False,
        },
    )
    try:
        lake.attach(con)
        con.execute(f"ATTACH {quote_literal(str(path))} AS warehouse (READ_ONLY)")
        con.execute("USE warehouse")
        con.execute("SET allowed_paths = $paths", {"paths": [str(path), f"{path}.wal"]})
        con.execute("SET allowed_directories = $dirs", {"dirs": [lake_dir]})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


@dataclass(frozen=True)
class QueryResult:
    """The first rows of an analyst's query."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool


def analyst_query(path: Path, query: str, max_rows: int, lake_root: Path | str | Lake | None = None) -> QueryResult:
    """Run one read-only statement (a query or EXPLAIN) on the warehouse; at most ``max_rows`` rows are kept.

    Rows are fetched in batches and the query is limited to one row more than kept, so memory stays
    bounded whatever the query returns.
    """
    if not 1 <= max_rows <= MAX_SQL_ROWS:
        raise ValueError(f"--max-rows must be between 1 and {MAX_SQL_ROWS} (got {max_rows})")
    statements = duckdb.extract_statements(query)
    if len(statements) != 1:
        raise ValueError(f"give exactly one SQL statement (got {len(statements)})")
    if statements[0].type not in ANALYST_STATEMENTS:
        raise PermissionError(
            f"the warehouse is read-only: {statements[0].type.name} statements are refused; "
            "only queries (SELECT, FROM, WITH, DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN run here"
        )
    rows: list[tuple] = []
    with read_only(path, lake_root) as con:
        relation = con.sql(query)
        columns = list(relation.columns)
        reader = relation.limit(max_rows + 1).to_arrow_reader(FETCH_BATCH_ROWS)
        for batch in reader:
            rows.extend(zip(*(column.to_pylist() for column in batch.columns), strict=True))
            if len(rows) > max_rows:
                break
    return QueryResult(columns=columns, rows=rows[:max_rows], truncated=len(rows) > max_rows)
