"""PostgreSQL restarted while `cloudopt run` works through a range on the PostgreSQL instance: no partition is
lost (each ends materialised, by the run itself or by a retry with --only-missing) and none is doubled (one
successful run per partition), and no run is left STARTED.

A real PostgreSQL server (the fixture of ``test_concurrency_postgres.py``), the shipped instance template,
the real `cloudopt` command in a subprocess. The test restarts the server once the first partition's run
has succeeded and the next one is under way, so the restart lands mid-range whatever the machine's speed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy

from cloudopt_pipelines.automation import DAILY_JOB
from cloudopt_pipelines.orchestration import InstanceUnavailable, ensure_instance, through_outage
from cloudopt_pipelines.partitions import account_day_key
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS
from tests.test_concurrency_postgres import PG_BIN, _as_postgres, _free_port, postgres, postgres_home  # noqa: F401

CLOUDOPT = Path(sys.executable).with_name("cloudopt")
ACCOUNT = DEMO_ACCOUNTS[0]
DAYS = [DEMO_DAYS[0] + timedelta(days=k) for k in range(3)]
BOUND_S = 1200.0  # a hung run, not a speed target


def _data_directory(port: int) -> str:
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc", "SHOW data_directory"],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def _daily_runs(instance: dg.DagsterInstance, status: dg.DagsterRunStatus | None = None) -> list[dg.DagsterRun]:
    filters = dg.RunsFilter(job_name=DAILY_JOB, statuses=[status] if status else [])
    return list(instance.get_runs(filters=filters))


def test_postgres_restarted_mid_range_loses_and_doubles_no_partition(
    postgres: int,  # noqa: F811
    tmp_path: Path,
    monkeypatch,
) -> None:
    settings, env = postgres_home(postgres, tmp_path, monkeypatch)
    home, instance = settings.home, ensure_instance(settings)
    args = ["run", "--start", str(DAYS[0]), "--end", str(DAYS[-1]), "--accounts", ACCOUNT]
    data = _data_directory(postgres)

    log = tmp_path / "run.log"
    with open(log, "w") as out:
        first = subprocess.Popen([str(CLOUDOPT), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + BOUND_S
            success, started = dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.STARTED
            while not (_daily_runs(instance, success) and _daily_runs(instance, started)):
                assert first.poll() is None, f"cloudopt ended before the restart:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            # -l: the restarted server must not hold this process's pipes open (its output goes to the log).
            server_log = str(Path(data).parent / "log")
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", data, "-l", server_log, "-m", "fast", "-w", "restart")
            code = first.wait(timeout=BOUND_S)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    output = log.read_text()
    assert code in (0, 1), output[-3000:]
    if code == 1:
        assert "failed:" in output, output[-3000:]  # a partition that failed says so, naming it
        retry = subprocess.run(
            [str(CLOUDOPT), *args, "--only-missing"], env=env, capture_output=True, text=True, timeout=BOUND_S
        )
        assert retry.returncode == 0, retry.stdout + retry.stderr

    instance = ensure_instance(settings)
    assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    succeeded = [r.tags.get("dagster/partition") for r in _daily_runs(instance, dg.DagsterRunStatus.SUCCESS)]
    keys = [account_day_key(ACCOUNT, d) for d in DAYS]
    assert sorted(succeeded) == sorted(keys), f"lost or doubled: {succeeded}\n{output[-3000:]}"
    # Rows conserved: the lake holds what the demo source serves, once.
    demo, lake = DemoCollector(), Lake(home / "lake")
    for d in DAYS:
        assert lake.read("utilization_5m", ACCOUNT, d).num_rows == demo.collect_metrics(ACCOUNT, d).table.num_rows
    assert lake.partitions("utilization_daily") == [(ACCOUNT, d.isoformat()) for d in DAYS]


def test_a_wait_rides_out_a_database_outage_and_past_its_bound_says_what_to_do() -> None:
    """The command's polls of the instance retry through a database that refuses connections (a real psycopg2
    connection to a port nothing listens on), and past the bound fail naming what they waited for and the fix."""
    engine = sqlalchemy.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/dagster")
    attempts: list[int] = []

    def read_after_two_refusals() -> str:
        attempts.append(1)
        if len(attempts) <= 2:
            engine.connect()  # raises: connection refused
        return "STARTED"

    assert through_outage(read_after_two_refusals, "waited for run r1") == "STARTED"
    assert len(attempts) == 3
    with pytest.raises(InstanceUnavailable) as refused:
        through_outage(engine.connect, "waited for run r2", bound_s=0.0)
    message = str(refused.value)
    assert "did not answer for 0 s while cloudopt waited for run r2" in message
    assert "OperationalError" in message and "--only-missing" in message
