"""The lake on S3 (a real moto server over HTTP): atomic partitions through manifests, the whole demo
pipeline with the same analysts' rows as on a local lake, and a run killed before a manifest commit."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from cloudopt_pipelines.settings import Settings, SettingsError, load_settings
from cloudopt_pipelines.storage.lake import STALE_STAGING_S, open_lake
from cloudopt_pipelines.storage.s3lake import HOLD_BEFORE_COMMIT_VAR, HOLD_TABLE_VAR, S3Lake
from cloudopt_pipelines.storage.warehouse import build_warehouse, read_only
from tests.aws.conftest import running_moto_server
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS
from tests.test_lake import samples

REPO = Path(__file__).resolve().parents[1]
BUCKET = "cloudopt-lake-test"
ACCOUNT = "012345678901"
DAY = date(2026, 11, 16)


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server with one bucket; the AWS variables point every S3 client at it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with running_moto_server(tmp_path_factory.mktemp("moto-lake") / "moto.log") as url:
            mp.setenv("AWS_ENDPOINT_URL_S3", url)
            boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
            yield url


def _keys(endpoint: str, prefix: str) -> list[str]:
    pages = (
        boto3.client("s3", endpoint_url=endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=BUCKET, Prefix=prefix)
    )
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_lake_url_setting_chooses_the_backend(tmp_path: Path) -> None:
    settings = load_settings({"CLOUDOPT_HOME": str(tmp_path), "CLOUDOPT_LAKE_URL": f"s3://{BUCKET}/lake/"})
    assert settings.lake_url == f"s3://{BUCKET}/lake"
    assert load_settings({"CLOUDOPT_HOME": str(tmp_path)}).lake_url == str(tmp_path / "lake")
    with pytest.raises(SettingsError, match=r"CLOUDOPT_LAKE_URL.*bucket"):
        load_settings({"CLOUDOPT_HOME": str(tmp_path), "CLOUDOPT_LAKE_URL": "s3://No_Such/lake"})
    with pytest.raises(SettingsError, match="neither s3://"):
        load_settings({"CLOUDOPT_HOME": str(tmp_path), "CLOUDOPT_LAKE_URL": "gs://bucket/lake"})


def test_write_read_and_replace_go_through_the_manifest(s3_url: str) -> None:
    lake = open_lake(f"s3://{BUCKET}/unit")
    assert isinstance(lake, S3Lake)
    first = lake.write("utilization_5m", samples(14, value=1.0), ACCOUNT, DAY)
    second = lake.write("utilization_5m", samples(21, value=2.0), ACCOUNT, DAY)
    assert first != second and str(second).startswith(f"s3://{BUCKET}/unit/utilization_5m/account_id={ACCOUNT}/")
    table = lake.read("utilization_5m", ACCOUNT, DAY)
    assert table.num_rows == 21 and set(table.column("cpu_pct").to_pylist()) == {2.0}
    assert lake.partitions("utilization_5m") == [(ACCOUNT, DAY.isoformat())]
    assert lake.files("utilization_5m") == [second]
    assert lake.tables() == ["utilization_5m"]
    # The superseded file stays for a grace period (a view planned over the old manifest still reads), then goes.
    assert lake.sweep() == []
    assert lake.sweep(now=time.time() + STALE_STAGING_S + 60) == [first]
    assert lake.read("utilization_5m", ACCOUNT, DAY).num_rows == 21
    with pytest.raises(FileNotFoundError, match="no partition for account 012345678901, date 2026-11-17"):
        lake.read("utilization_5m", ACCOUNT, date(2026, 11, 17))


def test_a_damaged_object_is_named_with_its_repair_on_every_read(s3_url: str) -> None:
    from cloudopt_pipelines.storage.lake import CorruptFileError

    lake = open_lake(f"s3://{BUCKET}/damaged")
    written = str(lake.write("utilization_5m", samples(14, value=1.0), ACCOUNT, DAY))
    assert lake.verified_file("utilization_5m", ACCOUNT, DAY) == written
    s3 = boto3.client("s3", endpoint_url=s3_url)
    key = written.removeprefix(f"s3://{BUCKET}/")
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    repair = f"cloudopt run --start {DAY} --end {DAY} --accounts {ACCOUNT}"
    for read in (lake.read, lake.verified_file):
        with pytest.raises(CorruptFileError, match="is damaged") as caught:
            read("utilization_5m", ACCOUNT, DAY)
        assert written in str(caught.value) and repair in str(caught.value)
    lake.write("utilization_5m", samples(14, value=3.0), ACCOUNT, DAY)
    assert set(lake.read("utilization_5m", ACCOUNT, DAY).column("cpu_pct").to_pylist()) == {3.0}


def test_a_damaged_manifest_is_named_with_its_repair(s3_url: str) -> None:
    from cloudopt_pipelines.storage.lake import CorruptFileError

    lake = open_lake(f"s3://{BUCKET}/bad-manifest")
    lake.write("utilization_5m", samples(14, value=1.0), ACCOUNT, DAY)
    s3 = boto3.client("s3", endpoint_url=s3_url)
    (manifest,) = [k for k in _keys(s3_url, "bad-manifest/_manifests/") if k.endswith("manifest.json")]
    repair = f"cloudopt run --start {DAY} --end {DAY} --accounts {ACCOUNT}"
    for body in (b'{"format": 1, "files": [{"key"', b'{"files": [{"rows": 3}]}', b"[]"):
        s3.put_object(Bucket=BUCKET, Key=manifest, Body=body)
        for read in (lake.read, lake.verified_file):
            with pytest.raises(CorruptFileError, match=r"manifest .* is damaged") as caught:
                read("utilization_5m", ACCOUNT, DAY)
            assert manifest in str(caught.value) and repair in str(caught.value)
    lake.write("utilization_5m", samples(14, value=2.0), ACCOUNT, DAY)
    assert set(lake.read("utilization_5m", ACCOUNT, DAY).column("cpu_pct").to_pylist()) == {2.0}


def test_a_writer_killed_before_its_manifest_leaves_the_old_partition(s3_url: str, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/killed"
    lake = open_lake(url)
    lake.write("utilization_5m", samples(7, value=1.0), ACCOUNT, DAY)
    marker = tmp_path / "uploaded"
    script = textwrap.dedent(
        f"""
        from datetime import date
        from cloudopt_pipelines.storage.lake import open_lake
        from tests.test_lake import samples
        lake = open_lake({url!r})
        lake.write("utilization_5m", samples(70, value=9.0), {ACCOUNT!r}, date(2026, 11, 16))
        lake.write("utilization_5m", samples(70, value=9.0), {ACCOUNT!r}, date(2026, 11, 17))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), HOLD_BEFORE_COMMIT_VAR: str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    try:
        _wait_for(marker, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    parts = [k for k in _keys(s3_url, "killed/utilization_5m/") if k.endswith(".parquet")]
    assert len(parts) == 2, "the killed writer had uploaded its part file"
    fresh = open_lake(url)
    assert fresh.read("utilization_5m", ACCOUNT, DAY).num_rows == 7  # the old version, whole
    assert fresh.partitions("utilization_5m") == [(ACCOUNT, DAY.isoformat())]
    assert len(fresh.files("utilization_5m")) == 1
    assert fresh.sweep(now=time.time() + STALE_STAGING_S + 60) != []
    assert len([k for k in _keys(s3_url, "killed/utilization_5m/") if k.endswith(".parquet")]) == 1
    # The retry succeeds.
    fresh.write("utilization_5m", samples(70, value=9.0), ACCOUNT, DAY)
    assert fresh.read("utilization_5m", ACCOUNT, DAY).num_rows == 70


def test_duckdb_reads_the_s3_lake_without_httpfs(s3_url: str, tmp_path: Path) -> None:
    lake = open_lake(f"s3://{BUCKET}/duck")
    lake.write("utilization_5m", samples(14, value=3.0), ACCOUNT, DAY)
    lake.write("utilization_5m", samples(7, day=date(2026, 11, 17), value=4.0), ACCOUNT, date(2026, 11, 17))
    build = build_warehouse(lake, tmp_path / "warehouse.duckdb")
    assert "utilization_5m" in build.views and not build.warnings
    with read_only(tmp_path / "warehouse.duckdb", lake) as con:
        rows = con.execute("SELECT date, count(*), max(cpu_pct) FROM utilization_5m GROUP BY 1 ORDER BY 1").fetchall()
        assert rows == [(DAY, 14, 3.0), (date(2026, 11, 17), 7, 4.0)]
        with pytest.raises(Exception, match=r"disabled|Permission"):
            con.execute("SELECT * FROM read_csv('/etc/hostname')").fetchall()


def _wait_for(marker: Path, proc: subprocess.Popen, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert proc.poll() is None, f"the writer exited ({proc.returncode}) before reaching the manifest commit"
        assert time.monotonic() < deadline, "the writer never reached the manifest commit"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------ whole pipeline


@pytest.fixture(scope="module")
def s3_home(s3_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """CLOUDOPT_HOME whose lake is on S3, after the demo run over the same accounts and days as ``demo_home``."""
    from cloudopt_pipelines.orchestration import run_range

    settings = Settings(home=tmp_path_factory.mktemp("cloudopt-s3"), env="demo", lake_s3_url=f"s3://{BUCKET}/demo")
    result = run_range(DEMO_DAYS[0], DEMO_DAYS[-1], settings=settings, progress=lambda _: None)
    assert not result.failed, result.failed
    return settings


def _views(settings: Settings) -> dict[str, list[tuple]]:
    with read_only(settings.warehouse_path, settings.lake_url) as con:
        names = [n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
        return {n: sorted(con.execute(f'SELECT * FROM "{n}"').fetchall(), key=_exact_part) for n in names}


def _exact_part(row: tuple) -> str:
    return repr(tuple(v for v in row if not isinstance(v, float)))


def _same_row(a: tuple, b: tuple) -> bool:
    """Equal, floats up to the last bits: DuckDB's parallel aggregates add in no fixed order."""
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) if isinstance(x, float) and isinstance(y, float) else x == y
        for x, y in zip(a, b, strict=True)
    )


def test_the_whole_pipeline_on_s3_gives_the_analysts_the_rows_of_a_local_lake(
    s3_home: Settings, demo_home: Settings, s3_url: str
) -> None:
    assert not (s3_home.home / "lake").exists(), "nothing was written to a local lake"
    lake = open_lake(s3_home.lake_url)
    assert lake.partitions("resources") == [(a, d.isoformat()) for a in DEMO_ACCOUNTS for d in DEMO_DAYS]
    assert _keys(s3_url, "demo/_manifests/portfolio_plan/")
    on_s3, local = _views(s3_home), _views(demo_home)
    assert set(on_s3) == set(local)
    compared = 0
    for name, rows in local.items():
        assert len(on_s3[name]) == len(rows), name
        compared += len(rows)
        different = [(x, y) for x, y in zip(on_s3[name], rows, strict=True) if not _same_row(x, y)]
        assert different == [], f"view {name}: first different rows (S3, local) {different[:2]}"
    assert compared > 1000


# One table a stage: raw, features, recommendations, plan (the warehouse file is local: tests/test_run_safety.py).
KILLED_STAGES = {
    "raw": ("resources", True),
    "features": ("utilization_daily", True),
    "recommendations": ("recommendations_standalone_ec2", True),
    "plan": ("portfolio_plan", False),
}


@pytest.mark.parametrize("stage", list(KILLED_STAGES))
def test_a_pipeline_killed_before_a_manifest_commit_shows_no_partial_partition(
    s3_url: str, tmp_path: Path, stage: str
) -> None:
    """A `cloudopt run` killed (SIGKILL, with its whole process group) after uploading the stage's part
    file and before its manifest: no reader sees that partition; the retry writes it."""
    table, per_account = KILLED_STAGES[stage]
    url = f"s3://{BUCKET}/killed-{stage}"
    home = tmp_path / "home"
    day = DEMO_DAYS[0].isoformat()
    marker = tmp_path / "uploaded"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CLOUDOPT_HOME": str(home),
        "CLOUDOPT_ENV": "demo",
        "CLOUDOPT_LAKE_URL": url,
        HOLD_BEFORE_COMMIT_VAR: str(marker),
        HOLD_TABLE_VAR: table,
    }
    partition = (DEMO_ACCOUNTS[0] if per_account else None, day)
    command = [sys.executable, "-m", "cloudopt_pipelines.cli", "run", "--start", day, "--end", day]
    command += ["--accounts", DEMO_ACCOUNTS[0]]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True)
    try:
        _wait_for(marker, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lake = open_lake(url)
    assert [k for k in _keys(s3_url, f"killed-{stage}/{table}/") if k.endswith(".parquet")], "uploaded"
    assert lake.partitions(table) == []
    with pytest.raises(FileNotFoundError, match=table):
        lake.read(table, *partition)
    assert not (home / "warehouse.duckdb").exists()
    env.pop(HOLD_BEFORE_COMMIT_VAR)
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert lake.partitions(table) == [partition]
    rows = lake.read(table, *partition).num_rows
    assert rows > 0
    with read_only(home / "warehouse.duckdb", url) as con:
        assert con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == rows


def test_arrow_tables_round_trip_unpartitioned(s3_url: str) -> None:
    lake = open_lake(f"s3://{BUCKET}/flat")
    lake.write("notes", pa.table({"x": [1, 2, 3]}))
    assert lake.read("notes").column("x").to_pylist() == [1, 2, 3]
    assert lake.partitions("notes") == [(None, None)]
