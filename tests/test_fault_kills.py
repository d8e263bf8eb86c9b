"""A run SIGKILLed mid-write at every stage leaves nothing partial, holds no slot or lock, and its retry succeeds.

The real `cloudopt` command runs in a subprocess on a real persistent Dagster instance, through
``tests/kill_at.py``, which kills the process at one write point: a lake table's new partition staged
and fsynced but not swapped in yet (raw, features, recommendations, plan, executor), or the new
warehouse built aside but not swapped in. The hook writes where it killed, so the test knows the kill
came from there. Then the same command runs again, as a user retrying would.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cloudopt_pipelines.executor.lock import LOCK_FILE
from cloudopt_pipelines.orchestration import WAREHOUSE_POOL, ensure_instance
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import STAGING, Lake
from tests.conftest import DEMO_ACCOUNTS

CLOUDOPT = Path(sys.executable).with_name("cloudopt")
KILL_AT = Path(__file__).with_name("kill_at.py")
DAY = "2026-11-16"
RUN = ["run", "--start", DAY, "--end", DAY, "--accounts", DEMO_ACCOUNTS[0]]
EXECUTE = ["execute", "--date", DAY]
BOUND_S = 600.0  # an upper bound for a 1-partition run on a loaded machine, never a speed target

# stage -> (kill point, the command killed there)
STAGES = {
    "raw": ("utilization_5m", RUN),
    "features": ("utilization_daily", RUN),
    "recommendations": ("recommendations_standalone_ec2", RUN),
    "plan": ("portfolio_plan", RUN),
    "warehouse": ("warehouse", RUN),
    "executor": ("executed_actions", EXECUTE),
}


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "CLOUDOPT_HOME": str(home), "CLOUDOPT_ENV": "demo"}


def _cloudopt(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLOUDOPT), *args], env=_env(home), capture_output=True, text=True, timeout=BOUND_S, check=False
    )


def _killed_at(home: Path, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(KILL_AT), point, *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        check=False,
        start_new_session=True,  # the hook kills the command's whole process group
    )
    assert done.returncode == -signal.SIGKILL, f"not killed at {point}:\n{done.stdout}\n{done.stderr}"
    assert (home / "killed_at").read_text() == point
    (home / "killed_at").unlink()
    return done


def _lock_is_free(path: Path) -> bool:
    if not path.exists():
        return True
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def _every_partition_reads(lake: Lake) -> None:
    """Whatever is visible is whole: every partition of every table reads, its digest matching."""
    for table in lake.tables():
        for account, day in lake.partitions(table):
            lake.read(table, account, day)


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_run_killed_mid_write_at_each_stage_leaves_nothing_partial_and_the_retry_succeeds(
    tmp_path: Path, stage: str
) -> None:
    point, command = STAGES[stage]
    settings = Settings(home=tmp_path / "home", env="demo")
    home, lake = settings.home, Lake(settings.lake_dir)
    if command is EXECUTE:
        first = _cloudopt(home, *RUN)  # the plan the executor runs on
        assert first.returncode == 0, first.stdout + first.stderr

    _killed_at(home, point, *command)

    staged = list((lake.root / STAGING).rglob("part-*.parquet")) if (lake.root / STAGING).is_dir() else []
    if point == "warehouse":
        assert not settings.warehouse_path.exists()  # the first build never swapped in
        assert list(home.glob(".warehouse.duckdb.*.tmp")), "the kill was not mid-build"
    else:
        assert lake.partitions(point) == [], "a partition of the killed write is visible"
        assert staged, "the kill was not mid-write: no staged part file"
    _every_partition_reads(lake)
    instance = ensure_instance(settings)
    killed = [r.run_id for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))]
    assert killed, "the killed run should be left STARTED in the instance"

    retry = _cloudopt(home, *command)
    assert retry.returncode == 0, retry.stdout + retry.stderr

    instance = ensure_instance(settings)
    for run_id in killed:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    claims = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots
    assert [c.run_id for c in claims] == []
    assert _lock_is_free(settings.warehouse_path.with_name("warehouse.duckdb.lock"))
    assert _lock_is_free(home / LOCK_FILE)
    staging = lake.root / STAGING
    assert not staging.is_dir() or not list(staging.iterdir())
    assert not list(home.glob(".warehouse.duckdb.*.tmp"))
    if point == "warehouse":
        assert settings.warehouse_path.exists()
    else:
        assert lake.partitions(point), f"the retry did not write {point}"
    _every_partition_reads(lake)
