"""The DuckDB warehouse analysts query: a view per lake table plus the marts.

The warehouse file holds no data of its own, only views over the lake's Parquet files, so new
partitions show up in every query without a rebuild. It is rebuilt (when tables or marts change)
into a temporary file that then replaces the old one with ``os.replace``: an analyst who has the
warehouse open read-only keeps reading, and no writer ever waits for a reader's lock. Writers are
serialised by an exclusive file lock beside the database (and by a Dagster concurrency pool).
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from cloudopt_pipelines.sqlmodels.runner import parse_model
from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.schemas import TABLES, UNION_VIEWS


@dataclass(frozen=True)
class WarehouseBuild:
    """What a rebuild produced."""

    path: Path
    views: list[str]
    empty_views: list[str]
    marts: list[str]


@contextmanager
def writer_lock(path: Path, timeout_s: float = 300.0) -> Iterator[None]:
    """Hold the warehouse's exclusive writer lock; a clear error if another writer keeps it too long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + timeout_s
    with open(lock_path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another writer has held the warehouse lock {lock_path} for over {timeout_s:.0f} s; "
                        "wait for the running materialisation to finish"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_warehouse(lake: Lake, path: Path, marts_dir: Path | None = None) -> WarehouseBuild:
    """Rebuild the warehouse at ``path``: one view per lake table (and per known empty table), then marts."""
    views: list[str] = []
    empty: list[str] = []
    marts: list[str] = []
    with writer_lock(path):
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            con = duckdb.connect(str(tmp))
            try:
                for table in lake.tables():
                    con.execute(
                        f"CREATE VIEW {table} AS SELECT * FROM read_parquet("
                        f"'{lake.glob(table)}', hive_partitioning = false, union_by_name = true)"
                    )
                    views.append(table)
                for view, prefix in UNION_VIEWS.items():
                    members = [t for t in views if t.startswith(prefix)]
                    if members and view not in views:
                        con.execute(
                            f"CREATE VIEW {view} AS "
                            + " UNION ALL BY NAME ".join(f"SELECT * FROM {m}" for m in members)
                        )
                        views.append(view)
                for table, schema in TABLES.items():
                    if table not in views:
                        con.execute(f"CREATE VIEW {table} AS {_empty_select(schema)}")
                        empty.append(table)
                if marts_dir is not None and marts_dir.exists():
                    for mart_path in sorted(marts_dir.glob("*.sql")):
                        mart = parse_model(mart_path)
                        try:
                            con.execute(f"CREATE VIEW {mart.name} AS {mart.render()}")
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
    return WarehouseBuild(path=path, views=views, empty_views=empty, marts=marts)


def _empty_select(schema: pa.Schema) -> str:
    con = duckdb.connect()
    con.register("empty", schema.empty_table())
    described = con.sql("SELECT column_name, column_type FROM (DESCRIBE empty)").fetchall()
    columns = ", ".join(f'CAST(NULL AS {dtype}) AS "{name}"' for name, dtype in described)
    return f"SELECT {columns} WHERE false"


@contextmanager
def read_only(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """An analyst's connection: read-only, so it never blocks a pipeline run."""
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}; run 'make demo' or 'cloudopt run' first")
    con = duckdb.connect(str(path), read_only=True)
    try:
        yield con
    finally:
        con.close()
