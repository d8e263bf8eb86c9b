"""The analysts' warehouse is read-only for real, and one bad lake entry never breaks its rebuild."""

import fcntl
import os
import re
import socket
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloudopt_pipelines.storage.lake import STAGING, STALE_STAGING_S, Lake, sweep_leftovers
from cloudopt_pipelines.storage.warehouse import (
    MAX_SQL_ROWS,
    WriterWaitStopped,
    analyst_query,
    build_warehouse,
    read_only,
    writer_lock,
)

ACCOUNT = "012345678901"
DAYS = [date(2026, 11, 16), date(2026, 11, 17)]


def _events(day: date, n: int = 500) -> pa.Table:
    return pa.table({"day": [day.isoformat()] * n, "value": [float(i) for i in range(n)]})


@pytest.fixture
def warehouse(tmp_path: Path) -> tuple[Lake, Path]:
    """A lake with two days of an `events` table and the warehouse built over it."""
    lake = Lake(tmp_path / "lake")
    for day in DAYS:
        lake.write("events", _events(day), ACCOUNT, day)
    path = tmp_path / "warehouse.duckdb"
    build_warehouse(lake, path)
    return lake, path


# --- defect 4: the analysts' connection cannot write or read files, nor load extensions ---------------


def test_analyst_connection_reads_the_lake_views(warehouse: tuple[Lake, Path]) -> None:
    _lake, path = warehouse
    with read_only(path) as con:
        assert con.execute("SELECT count(*) FROM events").fetchone() == (1000,)


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 42 AS value) TO '{outside}/poison.parquet'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('{lake}/../secret.txt')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "ATTACH '{outside}/other.duckdb' AS other",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "SET lock_configuration = false",
        "RESET lock_configuration",
        "CREATE TABLE planted AS SELECT 1",
    ],
)
def test_analyst_connection_refuses_every_escape(warehouse: tuple[Lake, Path], statement: str) -> None:
    lake, path = warehouse
    outside = path.parent / "outside"
    outside.mkdir()
    (path.parent / "secret.txt").write_text("not for analysts")
    sql = statement.format(outside=outside, lake=lake.root)
    with read_only(path) as con:
        with pytest.raises(duckdb.Error):
            con.execute(sql)
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (False,)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 42 AS value) TO '{part}'",
        "EXPORT DATABASE '{lake}/export'",
        "ATTACH '{lake}/planted.duckdb' AS planted",
        "CREATE TEMP TABLE planted AS SELECT 1",
        "SET threads = 1",
        "SELECT 1; SELECT 2",
    ],
)
def test_analyst_query_refuses_writes_into_the_lake(warehouse: tuple[Lake, Path], statement: str) -> None:
    """The lake must stay readable, so writes into it are refused before DuckDB runs anything."""
    lake, path = warehouse
    before = sorted(p for p in lake.root.rglob("*") if STAGING not in p.parts)
    planted = lake.partition_dir("events", ACCOUNT, DAYS[0]) / "part-poison.parquet"
    with pytest.raises((PermissionError, ValueError), match=r"read-only|exactly one"):
        analyst_query(path, statement.format(part=planted, lake=lake.root), max_rows=10)
    assert sorted(p for p in lake.root.rglob("*") if STAGING not in p.parts) == before


def test_analyst_query_keeps_at_most_max_rows(warehouse: tuple[Lake, Path]) -> None:
    _lake, path = warehouse
    result = analyst_query(path, "SELECT value FROM events ORDER BY value", max_rows=3)
    assert result.rows == [(0.0,), (0.0,), (1.0,)] and result.truncated
    whole = analyst_query(path, "SELECT count(*) AS n FROM events", max_rows=3)
    assert whole.columns == ["n"] and whole.rows == [(1000,)] and not whole.truncated
    for bad in (0, -1, MAX_SQL_ROWS + 1):
        with pytest.raises(ValueError, match="--max-rows must be between 1"):
            analyst_query(path, "SELECT 1", max_rows=bad)


# --- defect 11: one bad lake entry is skipped, named, with its fix -------------------------------------


def test_truncated_file_is_left_out_and_named_with_its_repair(warehouse: tuple[Lake, Path]) -> None:
    lake, path = warehouse
    bad = lake.partition_file("events", ACCOUNT, DAYS[1])
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    build = build_warehouse(lake, path)
    assert "events" in build.views
    with read_only(path) as con:
        assert con.sql("SELECT DISTINCT day FROM events").fetchall() == [(DAYS[0].isoformat(),)]
    [warning] = [w for w in build.warnings if str(bad) in w]
    assert f"cloudopt run --start {DAYS[1]} --end {DAYS[1]} --accounts {ACCOUNT}" in warning


def test_folders_that_are_not_tables_are_skipped_with_a_warning(warehouse: tuple[Lake, Path]) -> None:
    lake, path = warehouse
    for name in ("price_catalog backup", "x AS SELECT 42 AS v; CREATE VIEW y"):
        copy = lake.root / name / "part-0.parquet"
        copy.parent.mkdir()
        pq.write_table(pa.table({"v": [1]}), copy)
    build = build_warehouse(lake, path)
    assert "events" in build.views
    assert sum("is not a table" in w for w in build.warnings) == 2
    with read_only(path) as con:
        views = {v for (v,) in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert "events" in views and not {"x", "y", "price_catalog backup"} & views
    assert not any(" " in v for v in views)


# --- defect 17: page checksums are written and verified ------------------------------------------------


def test_a_flipped_bit_in_a_data_page_fails_the_read(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    written = lake.write("events", _events(DAYS[0], 5000), ACCOUNT, DAYS[0])
    column = pq.read_metadata(written).row_group(0).column(1)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(written.read_bytes())
    # A bit in the middle of the column's compressed pages: past every page header.
    data[start + column.total_compressed_size // 2] ^= 0x10
    written.write_bytes(bytes(data))
    with pytest.raises(OSError, match=rf"{re.escape(str(written))}.*re-materialise that partition"):
        lake.read("events", ACCOUNT, DAYS[0])


def test_lake_files_carry_page_checksums(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    written = lake.write("events", _events(DAYS[0]), ACCOUNT, DAYS[0])
    with pq.ParquetFile(written, page_checksum_verification=True) as handle:
        assert handle.read().num_rows == 500
    # pyarrow reports no per-page CRC in its metadata, so compare with a file written without them.
    plain = tmp_path / "plain.parquet"
    pq.write_table(_events(DAYS[0]), plain, compression="zstd")
    assert written.stat().st_size > plain.stat().st_size


# --- defect 21: leftovers of killed writers are swept, live writers' are not ---------------------------


def test_sweep_removes_dead_and_stale_staging_but_not_a_live_writers(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.write("events", _events(DAYS[0]), ACCOUNT, DAYS[0])
    staging = lake.root / STAGING
    host = socket.gethostname()
    live = staging / f"{os.getpid()}@{host}-0a1b"
    dead = staging / f"999999999@{host}-0a1b"
    elsewhere = staging / "999999999@another-machine-0a1b"
    legacy = staging / "0123abcd"
    for directory in (live, dead, elsewhere, legacy):
        directory.mkdir()
        (directory / "part-x.parquet").write_bytes(b"half")
    now = live.stat().st_mtime + 60
    assert set(sweep_leftovers(lake.root, now=now)) == {dead}
    assert live.exists() and elsewhere.exists() and legacy.exists()
    assert set(sweep_leftovers(lake.root, now=now + STALE_STAGING_S)) == {live, elsewhere, legacy}


def test_rebuild_removes_temporary_files_of_a_killed_rebuild(warehouse: tuple[Lake, Path]) -> None:
    lake, path = warehouse
    leftovers = [path.with_name(f".{path.name}.dead.tmp"), path.with_name(f".{path.name}.dead.tmp.wal")]
    for leftover in leftovers:
        leftover.write_bytes(b"killed")
    build_warehouse(lake, path)
    assert not any(leftover.exists() for leftover in leftovers)


# --- a writer waiting for another's lock stops when asked, having written nothing ----------------------


def test_a_rebuild_waiting_for_the_lock_stops_when_asked_and_writes_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.write("events", _events(DAYS[0]), ACCOUNT, DAYS[0])
    path = tmp_path / "warehouse.duckdb"
    asked: list[int] = []

    def stop_on_third_ask() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with open(path.with_name(path.name + ".lock"), "w") as other_writer:
        fcntl.flock(other_writer, fcntl.LOCK_EX)
        with pytest.raises(WriterWaitStopped, match="asked to stop; nothing was written"):
            build_warehouse(lake, path, should_stop=stop_on_third_ask)
    assert len(asked) == 3
    assert not path.exists()
    assert list(tmp_path.glob("warehouse.duckdb.*tmp*")) == []


def test_should_stop_is_not_asked_when_the_lock_is_free(tmp_path: Path) -> None:
    def never() -> bool:
        raise AssertionError("asked although no other writer held the lock")

    with writer_lock(tmp_path / "warehouse.duckdb", should_stop=never):
        pass
