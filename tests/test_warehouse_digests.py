"""The warehouse rebuild checks the SHA-256 of every lake file its views name: a damaged file is left out,
named with its repair, and back once its partition is re-materialised; an unchanged file is hashed once.

DuckDB reads a flipped bit in a data page as other numbers, so without this check an analyst's query
over the warehouse views would silently return wrong numbers from a damaged file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from cloudopt_pipelines.storage.lake import Lake
from cloudopt_pipelines.storage.s3lake import S3Lake
from cloudopt_pipelines.storage.verified import cache_path
from cloudopt_pipelines.storage.warehouse import WarehouseBuild, build_warehouse, read_only
from tests.test_fault_corrupt_lake import flip_a_bit
from tests.test_lake_s3 import BUCKET, s3_url  # noqa: F401  (the moto server fixture)

ACCOUNT = "012345678901"
DAYS = [date(2026, 11, 16), date(2026, 11, 17), date(2026, 11, 18)]
CLOUDOPT = Path(sys.executable).with_name("cloudopt")
BOUND_S = 600.0  # an upper bound for one command on a loaded machine, never a speed target


def _events(day: date, n: int = 2000) -> pa.Table:
    return pa.table({"day": [day.isoformat()] * n, "value": [float(i) for i in range(n)]})


def _age(lake: Lake) -> None:
    """Date every lake file back an hour, as files written by earlier runs are (a file modified just
    before it is hashed is not cached: ``storage.verified.RACY_S``)."""
    old = time.time_ns() - 3600 * 10**9
    for table in lake.tables():
        for file in lake.files(table):
            os.utime(file, ns=(old, old))


def _days(path: Path, lake: Lake | str) -> list[str]:
    with read_only(path, lake) as con:
        return [d for (d,) in con.sql("SELECT DISTINCT day FROM events ORDER BY day").fetchall()]


def _fix(day: date) -> str:
    return f"cloudopt run --start {day} --end {day} --accounts {ACCOUNT}"


@pytest.fixture
def lake_and_path(tmp_path: Path) -> tuple[Lake, Path]:
    """Three days of an `events` table, written by earlier runs, and the warehouse built over them."""
    lake = Lake(tmp_path / "lake")
    for day in DAYS:
        lake.write("events", _events(day), ACCOUNT, day)
    _age(lake)
    path = tmp_path / "warehouse.duckdb"
    first = build_warehouse(lake, path)
    assert (first.files_hashed, first.files_from_cache, first.left_out) == (3, 0, [])
    return lake, path


def _damaged_warning(build: WarehouseBuild, file: Path | str) -> str:
    [warning] = [w for w in build.warnings if str(file) in w]
    return warning


def test_a_damaged_file_is_left_out_named_with_its_fix_and_back_once_re_materialised(
    lake_and_path: tuple[Lake, Path],
) -> None:
    lake, path = lake_and_path
    damaged = lake.partition_file("events", ACCOUNT, DAYS[1])
    flip_a_bit(damaged, "value")

    build = build_warehouse(lake, path)
    assert "events" in build.views and build.left_out == [str(damaged)]
    warning = _damaged_warning(build, damaged)
    assert "table 'events'" in warning and "is damaged" in warning and _fix(DAYS[1]) in warning
    assert f"date={DAYS[1]}" in warning and f"account_id={ACCOUNT}" in warning
    assert _days(path, lake) == [DAYS[0].isoformat(), DAYS[2].isoformat()]
    with read_only(path, lake) as con:
        assert con.execute("SELECT sum(value) FROM events").fetchone() == (2 * sum(range(2000)),)

    lake.write("events", _events(DAYS[1]), ACCOUNT, DAYS[1])  # what the named run does to that partition
    repaired = build_warehouse(lake, path)
    assert repaired.left_out == [] and not repaired.warnings
    assert _days(path, lake) == [d.isoformat() for d in DAYS]


def test_an_unchanged_file_is_not_hashed_again_and_verify_all_hashes_everything(
    lake_and_path: tuple[Lake, Path],
) -> None:
    lake, path = lake_and_path
    again = build_warehouse(lake, path)
    assert (again.files_hashed, again.files_from_cache) == (0, 3)

    fresh = lake.write("events", _events(date(2026, 11, 19)), ACCOUNT, date(2026, 11, 19))
    with_new = build_warehouse(lake, path)
    assert (with_new.files_hashed, with_new.files_from_cache) == (1, 3)
    # Modified within RACY_S of its hash, the new file is not trusted to the cache yet.
    assert str(fresh) not in json.loads(cache_path(path).read_text())["files"]
    assert build_warehouse(lake, path).files_hashed == 1

    everything = build_warehouse(lake, path, verify_all=True)
    assert (everything.files_hashed, everything.files_from_cache) == (4, 0)


def test_an_edit_that_keeps_size_and_mtime_is_found_by_verify_all(lake_and_path: tuple[Lake, Path]) -> None:
    """The cache trusts (name, size, mtime): a damage that keeps all three, e.g. a bit flipped on disk
    under the file system, is found only by hashing again."""
    lake, path = lake_and_path
    damaged = lake.partition_file("events", ACCOUNT, DAYS[0])
    stat = damaged.stat()
    flip_a_bit(damaged, "value")
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert build_warehouse(lake, path).left_out == []
    found = build_warehouse(lake, path, verify_all=True)
    assert found.left_out == [str(damaged)] and _fix(DAYS[0]) in _damaged_warning(found, damaged)
    assert build_warehouse(lake, path).left_out == [str(damaged)]  # no longer in the cache


class _LakeRewrittenAfterListing(Lake):
    """A lake where a run rewrites one partition right after the rebuild listed the table's files."""

    def files(self, table: str) -> list[Path]:
        listed = super().files(table)
        if table == "events" and not getattr(self, "rewritten", False):
            self.rewritten = True
            self.write("events", _events(DAYS[0], n=7), ACCOUNT, DAYS[0])
        return listed


def test_a_file_replaced_during_the_rebuild_neither_fails_it_nor_counts_as_damaged(
    lake_and_path: tuple[Lake, Path],
) -> None:
    lake, path = lake_and_path
    racing = _LakeRewrittenAfterListing(lake.root)
    build = build_warehouse(racing, path)
    assert "events" in build.views and build.left_out == [] and not build.warnings
    with read_only(path, lake) as con:
        assert con.execute("SELECT count(*) FROM events WHERE day = ?", [DAYS[0].isoformat()]).fetchone() == (7,)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": 99, "files": {}}),
        json.dumps({"format": 1, "files": ["a"]}),
        json.dumps({"format": 1, "files": {"x": 1}}),
        "",
    ],
    ids=["truncated", "other-format", "files-not-a-map", "entry-not-a-map", "empty"],
)
def test_a_damaged_cache_is_ignored_and_every_file_verified(lake_and_path: tuple[Lake, Path], content: str) -> None:
    lake, path = lake_and_path
    cache_path(path).write_text(content)
    damaged = lake.partition_file("events", ACCOUNT, DAYS[2])
    flip_a_bit(damaged, "value")
    build = build_warehouse(lake, path)
    assert (build.files_hashed, build.left_out) == (3, [str(damaged)])
    assert set(json.loads(cache_path(path).read_text())["files"]) == {
        str(lake.partition_file("events", ACCOUNT, d)) for d in DAYS[:2]
    }


def test_a_cache_entry_with_another_digest_or_stamp_is_verified_again(lake_and_path: tuple[Lake, Path]) -> None:
    lake, path = lake_and_path
    cache = json.loads(cache_path(path).read_text())
    first, second = (str(lake.partition_file("events", ACCOUNT, d)) for d in DAYS[:2])
    cache["files"][first]["sha256"] = "0" * 64
    cache["files"][second]["stamp"][0] += 1
    cache_path(path).write_text(json.dumps(cache))
    assert build_warehouse(lake, path).files_hashed == 2


def test_cloudopt_warehouse_rebuilds_names_a_damaged_file_and_verify_all_hashes_all(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lake = Lake(home / "lake")
    for day in DAYS[:2]:
        lake.write("events", _events(day), ACCOUNT, day)
    _age(lake)
    env = {**os.environ, "CLOUDOPT_HOME": str(home), "CLOUDOPT_ENV": "demo"}
    env.pop("CLOUDOPT_LAKE_URL", None)

    def cloudopt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLOUDOPT), "warehouse", *args], env=env, capture_output=True, text=True, timeout=BOUND_S, check=False
        )

    ok = cloudopt()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "hashed 2, verified before and unchanged 0, left out 0" in ok.stdout
    assert "hashed 0, verified before and unchanged 2" in cloudopt().stdout
    damaged = lake.partition_file("events", ACCOUNT, DAYS[0])
    stat = damaged.stat()
    flip_a_bit(damaged, "value")
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    everything = cloudopt("--verify-all")
    assert everything.returncode == 1, everything.stdout + everything.stderr
    assert "hashed 2, verified before and unchanged 0, left out 1" in everything.stdout
    assert str(damaged) in everything.stderr and _fix(DAYS[0]) in everything.stderr
    assert _days(home / "warehouse.duckdb", lake) == [DAYS[1].isoformat()]


def _put(endpoint: str, url: str, body: bytes) -> None:
    key = url.removeprefix(f"s3://{BUCKET}/")
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=BUCKET, Key=key, Body=body)


def test_on_an_s3_lake_a_damaged_object_is_left_out_and_a_verified_one_not_hashed_again(
    s3_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    lake = S3Lake(f"s3://{BUCKET}/digests")
    written = {day: lake.write("events", _events(day), ACCOUNT, day) for day in DAYS}
    local = tmp_path / "copy.parquet"
    body = lake.fs.open_input_stream(written[DAYS[1]].removeprefix("s3://")).readall()
    local.write_bytes(body)
    flip_a_bit(local, "value")
    _put(s3_url, written[DAYS[1]], local.read_bytes())  # same name, other bytes: the manifest is unchanged

    path = tmp_path / "warehouse.duckdb"
    build = build_warehouse(lake, path)
    assert (build.files_hashed, build.left_out) == (3, [written[DAYS[1]]])
    warning = _damaged_warning(build, written[DAYS[1]])
    assert "is damaged" in warning and _fix(DAYS[1]) in warning
    assert _days(path, lake) == [DAYS[0].isoformat(), DAYS[2].isoformat()]

    again = build_warehouse(lake, path)
    assert (again.files_hashed, again.files_from_cache) == (1, 2)  # only the damaged one, never cached

    lake.write("events", _events(DAYS[1]), ACCOUNT, DAYS[1])
    repaired = build_warehouse(lake, path)
    assert repaired.left_out == [] and (repaired.files_hashed, repaired.files_from_cache) == (1, 2)
    assert _days(path, lake) == [d.isoformat() for d in DAYS]
    assert build_warehouse(lake, path, verify_all=True).files_hashed == 3
