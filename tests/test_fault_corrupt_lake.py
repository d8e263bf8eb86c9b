"""A damaged lake file is detected by its SHA-256, named with its repair, and fixed by re-materialising it.

DuckDB, which runs the feature models, verifies no Parquet page checksum: a flipped bit in a data page of
a float column reads back as other numbers. Each part file therefore carries the SHA-256 of its bytes,
recorded when it was written; the models and ``Lake.read`` check it before reading.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloudopt_pipelines.backtest.features import run_feature_models
from cloudopt_pipelines.storage.lake import CorruptFileError, Lake, digest_path, file_sha256
from cloudopt_pipelines.storage.schemas import UTILIZATION_5M
from cloudopt_pipelines.storage.warehouse import read_only
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS
from tests.test_features import ACCOUNT, DAY0, ts_of

CLOUDOPT = Path(sys.executable).with_name("cloudopt")
BOUND_S = 600.0  # an upper bound for a 1-partition run on a loaded machine, never a speed target
FIX = re.compile(r"\(cloudopt (run --start [^)]*)\)")


def _samples() -> pa.Table:
    rng = np.random.default_rng(11)
    cpu = rng.uniform(5, 60, 288)
    return pa.table(
        {
            "account_id": [ACCOUNT] * 288,
            "date": [DAY0] * 288,
            "resource_id": ["i-0000000000000beef"] * 288,
            "ts": [ts_of(i) for i in range(288)],
            "cpu_pct": cpu,
            "cpu_max_pct": cpu + 5,
            "mem_pct": pa.nulls(288, pa.float64()),
            "net_in_bytes": pa.nulls(288, pa.float64()),
            "net_out_bytes": pa.nulls(288, pa.float64()),
            "source": ["test"] * 288,
        }
    ).cast(UTILIZATION_5M)


def flip_a_bit(path: Path, column: str) -> None:
    """Flip one bit in the middle of ``column``'s compressed pages (past every page header)."""
    meta = pq.read_metadata(path).row_group(0)
    [chunk] = [meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column]
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + chunk.total_compressed_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_every_part_file_carries_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    written = lake.write("utilization_5m", _samples(), ACCOUNT, DAY0)
    assert digest_path(written).read_text().strip() == file_sha256(written)
    assert lake.partitions("utilization_5m") == [(ACCOUNT, DAY0.isoformat())]  # the digest is no partition


def test_a_flipped_bit_fails_the_feature_models_and_the_read_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    written = lake.write("utilization_5m", _samples(), ACCOUNT, DAY0)
    flip_a_bit(written, "cpu_pct")
    fix = f"cloudopt run --start {DAY0} --end {DAY0} --accounts {ACCOUNT}"
    with pytest.raises(CorruptFileError) as error:
        run_feature_models(lake, ACCOUNT, [DAY0], ("stg_utilization_5m",))
    assert str(written) in str(error.value) and fix in str(error.value)
    assert lake.partitions("stg_utilization_5m") == []  # nothing computed from the damaged file
    with pytest.raises(CorruptFileError, match=re.escape(fix)):
        lake.read("utilization_5m", ACCOUNT, DAY0)


def _cloudopt(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUDOPT_HOME": str(home), "CLOUDOPT_ENV": "demo"}
    return subprocess.run([str(CLOUDOPT), *args], env=env, capture_output=True, text=True, timeout=BOUND_S, check=False)


def test_a_damaged_file_fails_the_run_that_reads_it_and_the_named_fix_repairs_it(tmp_path: Path) -> None:
    home, account = tmp_path / "home", DEMO_ACCOUNTS[0]
    first, second = DEMO_DAYS[0], DEMO_DAYS[0] + timedelta(days=1)
    done = _cloudopt(home, "run", "--start", str(first), "--end", str(first), "--accounts", account)
    assert done.returncode == 0, done.stdout + done.stderr
    lake = Lake(home / "lake")
    damaged = lake.partition_file("utilization_daily", account, first)
    flip_a_bit(damaged, "cpu_mean_pct")

    # The next day's window reads the damaged day: that run fails, naming the file and the fix.
    failed = _cloudopt(home, "run", "--start", str(second), "--end", str(second), "--accounts", account)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert str(damaged) in output
    [fix] = set(FIX.findall(output))
    assert fix == f"run --start {first} --end {first} --accounts {account}"
    assert lake.partitions("utilization_window") == [(account, first.isoformat())]  # none for the second day
    # The run's warehouse refresh leaves the damaged file out of the analysts' view, naming it and the fix.
    assert f"warehouse: lake file {damaged} of table 'utilization_daily' is damaged" in output
    assert _warehouse_days(home, account) == [second.isoformat()]  # the intact partition stays queryable

    repaired = _cloudopt(home, *shlex.split(fix))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert lake.partition_file("utilization_daily", account, first) != damaged
    lake.read("utilization_daily", account, first)
    again = _cloudopt(home, "run", "--start", str(second), "--end", str(second), "--accounts", account)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (account, second.isoformat()) in lake.partitions("utilization_window")
    assert _warehouse_days(home, account) == [first.isoformat(), second.isoformat()]


def _warehouse_days(home: Path, account: str) -> list[str]:
    """The days of ``account`` the analysts' ``utilization_daily`` view shows."""
    with read_only(home / "warehouse.duckdb", home / "lake") as con:
        rows = con.execute(
            "SELECT DISTINCT CAST(date AS VARCHAR) FROM utilization_daily WHERE account_id = ? ORDER BY 1", [account]
        ).fetchall()
    return [d for (d,) in rows]


def test_the_fix_of_a_file_of_a_day_table_names_that_day(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    day = date(2026, 11, 16)
    written = lake.write("portfolio_plan_probe", pa.table({"v": [1.0, 2.0, 3.0]}), day=day)
    flip_a_bit(written, "v")
    with pytest.raises(CorruptFileError, match=re.escape(f"cloudopt run --start {day} --end {day})")):
        lake.read("portfolio_plan_probe", day=day)
