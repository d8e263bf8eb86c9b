"""Faults on the daemon's path: the runs that `dagster-daemon` launches from its queue and its backfills.

A real PostgreSQL server and the shipped template ``deploy/dagster.postgres.yaml`` (the fixtures of
``test_concurrency_postgres.py``), a real `dagster-daemon run` in a subprocess, and the real `cloudopt run`,
which submits a backfill of the daily job (and its other runs) to the queue when the daemon is alive:
the daemon's backfill daemon makes the runs and its queue launches them, each in a run worker of the
daemon's code server. Each test waits on the instance's state, never on a sleep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from cloudopt_pipelines.automation import DAILY_JOB, WAREHOUSE_JOB
from cloudopt_pipelines.orchestration import QUEUE_DAEMON, WAREHOUSE_POOL, daemon_runs_queue, ensure_instance
from cloudopt_pipelines.partitions import account_day_key
from cloudopt_pipelines.sources.demo import DemoCollector
from cloudopt_pipelines.storage.lake import STAGING, Lake
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS
from tests.kill_at import HOOK_DIR, POINT_VAR, SCOPE_VAR
from tests.processes import terminate
from tests.test_concurrency_postgres import (  # noqa: F401
    BIN,
    PG_BIN,
    REPO,
    _as_postgres,
    _wait,
    postgres,
    postgres_home,
)
from tests.test_fault_kills import _every_partition_reads, _lock_is_free
from tests.test_postgres_restart import _data_directory

CLOUDOPT = Path(sys.executable).with_name("cloudopt")
BOUND_S = 1200.0  # a hung daemon or run, not a speed target
DAYS = DEMO_DAYS[:2]
# What a run, or the command, says when it lost its connection to PostgreSQL.
CONNECTION_LOST = re.compile(
    r"OperationalError|server closed the connection|terminating connection|connection to server|could not connect",
    re.IGNORECASE,
)


@contextmanager
def _daemon(env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` on the workspace of the repository, stopped at the end; yields once its queue runs."""
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    with open(log, "ab") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait(lambda: daemon.poll() is not None or daemon_runs_queue(instance), "the daemon's heartbeat", log)
            assert daemon.poll() is None, log.read_text()[-3000:]
            yield daemon
        finally:
            terminate(daemon)


def _cloudopt(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLOUDOPT), *args], env=dict(env), capture_output=True, text=True, timeout=BOUND_S)


def _all_finished(instance: dg.DagsterInstance) -> bool:
    """No run waits in the queue or runs: what the daemon was given has ended (the sensors' refreshes too)."""
    return all(r.is_finished for r in instance.get_runs())


def _run_messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(
        (entry.message or "")
        + "\n"
        + (str(entry.dagster_event.event_specific_data) if entry.dagster_event is not None else "")
        for entry in instance.all_logs(run_id)
    )


def _successful_materialisations(instance: dg.DagsterInstance, key: list[str]) -> list[str]:
    """The partitions of ``key`` materialised by successful runs, once per materialisation."""
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
    ok = {r.run_id for r in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))}
    return sorted(r.partition_key for r in records if r.run_id in ok)


def _no_slot_held(instance: dg.DagsterInstance) -> bool:
    storage = instance.event_log_storage
    return not storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots and not storage.get_concurrency_run_ids()


def test_postgres_restarted_during_a_daemon_backfill_loses_and_doubles_no_partition(
    postgres: int,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, env = postgres_home(postgres, tmp_path, monkeypatch)
    instance = ensure_instance(settings)
    args = ["run", "--start", str(DAYS[0]), "--end", str(DAYS[-1]), "--accounts", ",".join(DEMO_ACCOUNTS)]
    keys = sorted(str(account_day_key(a, d)) for a in DEMO_ACCOUNTS for d in DAYS)
    data = _data_directory(postgres)
    log = tmp_path / "daemon.log"

    def backfill_run_started() -> bool:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=DAILY_JOB, statuses=[dg.DagsterRunStatus.STARTED]))
        return any("dagster/backfill" in r.tags for r in runs)

    with _daemon(env, log) as daemon:
        with open(tmp_path / "run.log", "w") as out:
            first = subprocess.Popen([str(CLOUDOPT), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: first.poll() is not None or backfill_run_started(), "a run of the backfill", log)
            assert first.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            restarted_at = time.time()
            server_log = str(Path(data).parent / "log")
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", data, "-l", server_log, "-m", "fast", "-w", "restart")
            code = first.wait(timeout=BOUND_S)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        output = (tmp_path / "run.log").read_text()
        assert code in (0, 1), output[-3000:]

        # The daemon lived through it (the same process) and beats again, on the restarted server.
        assert daemon.poll() is None, log.read_text()[-3000:]
        _wait(
            lambda: (
                (beat := instance.get_daemon_heartbeats().get(QUEUE_DAEMON)) is not None
                and beat.timestamp > restarted_at
            ),
            "a heartbeat after the restart",
            log,
        )
        # Every run it was given ends (none left QUEUED or STARTED); a failed one names the lost connection.
        _wait(lambda: _all_finished(instance), "the end of every run", log)
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        for run in failed:
            assert CONNECTION_LOST.search(_run_messages(instance, run.run_id)), run.run_id
        if code == 1:
            assert "failed:" in output, output[-3000:]  # the command names what failed
        if code == 1 or failed:
            retry = _cloudopt(env, *args, "--only-missing")
            assert retry.returncode == 0, retry.stdout + retry.stderr
            _wait(lambda: _all_finished(instance), "the end of every run of the retry", log)
        assert daemon.poll() is None, log.read_text()[-3000:]

    # Each partition materialised exactly once among the successful runs, and one successful run each.
    daily = instance.get_runs(filters=dg.RunsFilter(job_name=DAILY_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert sorted(r.tags["dagster/partition"] for r in daily) == keys, output[-3000:]
    for key in (["raw", "resources"], ["raw", "utilization_5m"], ["features", "utilization_daily"]):
        assert _successful_materialisations(instance, key) == keys, key
    # Rows conserved: the lake holds what the demo source serves, once; nothing is left staged.
    demo, lake = DemoCollector(), Lake(settings.lake_dir)
    for account in DEMO_ACCOUNTS:
        for day in DAYS:
            served = demo.collect_metrics(account, day).table.num_rows
            assert lake.read("utilization_5m", account, day).num_rows == served
    assert lake.partitions("utilization_daily") == sorted((a, d.isoformat()) for a in DEMO_ACCOUNTS for d in DAYS)
    staging = lake.root / STAGING
    assert not staging.is_dir() or not list(staging.iterdir())


# stage -> (kill point, the job whose run worker dies there): a lake table's partition staged and not swapped
# in yet, in a run of the daemon's backfill; the warehouse built aside and not swapped in, holding the pool slot.
KILLED_STAGES = {"features": ("utilization_daily", DAILY_JOB), "warehouse": ("warehouse", WAREHOUSE_JOB)}


@pytest.mark.parametrize("stage", list(KILLED_STAGES))
def test_a_run_worker_of_the_daemon_killed_mid_write_fails_frees_its_slot_and_the_retry_succeeds(
    postgres: int,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
) -> None:
    point, job = KILLED_STAGES[stage]
    settings, env = postgres_home(postgres, tmp_path, monkeypatch)
    instance = ensure_instance(settings)
    lake = Lake(settings.lake_dir)
    account, day = DEMO_ACCOUNTS[0], DAYS[0]
    args = ["run", "--start", str(day), "--end", str(day), "--accounts", account]
    # The hook in every process of the daemon (its code server, their run workers); the first run worker
    # that reaches the point dies alone, and the daemon and the runs after it go on.
    hooked = {
        **env,
        POINT_VAR: point,
        SCOPE_VAR: "process",
        "PYTHONPATH": os.pathsep.join(p for p in (str(HOOK_DIR), str(REPO), env.get("PYTHONPATH")) if p),
    }
    log = tmp_path / "daemon.log"
    with _daemon(hooked, log) as daemon:
        first = _cloudopt(env, *args)
        assert (settings.home / "killed_at").read_text() == point, first.stdout + first.stderr
        assert daemon.poll() is None, log.read_text()[-3000:]
        _wait(lambda: _all_finished(instance), "the end of every run", log)

        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
        killed = [r for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
        assert len(killed) == 1 and killed[0].status == dg.DagsterRunStatus.FAILURE, [r.status for r in runs]
        # Failed by the daemon's code server, which saw its run worker die (no stale-run sweep of ours is needed),
        # or, when the warehouse refresh is the daemon's sensor's run (the multiprocess executor: whether the
        # sensor or the command asks first is a race), by the run worker, which saw the step's process die.
        messages = _run_messages(instance, killed[0].run_id)
        killed_how = r"Run execution process for \S+ was terminated by signal 9|ChildProcessCrashException"
        assert re.search(killed_how, messages), messages[-3000:]
        if point != "warehouse":  # for the warehouse the command's next attempt goes on at once
            # The partition failed naming how, and nothing of the killed write is visible.
            assert first.returncode == 1, first.stdout + first.stderr
            assert "terminated by signal 9" in first.stderr, first.stderr
            assert lake.partitions(point) == []
            _every_partition_reads(lake)
        _wait(lambda: _no_slot_held(instance), "the pool slots of the killed run freed", log)

        if first.returncode != 0:  # for the warehouse, the command's own next attempt may have rebuilt it
            retry = _cloudopt(env, *args, "--only-missing")
            assert retry.returncode == 0, retry.stdout + retry.stderr
            _wait(lambda: _all_finished(instance), "the end of every run of the retry", log)
        assert daemon.poll() is None, log.read_text()[-3000:]

    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
    assert [r.status for r in runs].count(dg.DagsterRunStatus.SUCCESS) >= 1
    assert _no_slot_held(instance)
    assert settings.warehouse_path.exists()
    assert not list(settings.home.glob(".warehouse.duckdb.*.tmp"))
    assert _lock_is_free(settings.warehouse_path.with_name("warehouse.duckdb.lock"))
    assert lake.partitions("utilization_daily") == [(account, day.isoformat())]
    _every_partition_reads(lake)
    staging = lake.root / STAGING
    assert not staging.is_dir() or not list(staging.iterdir())


def test_the_daemon_killed_with_its_run_worker_leaves_a_run_the_next_command_fails_and_redoes(
    postgres: int,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on a lost machine: the daemon, its code server and the run worker die together mid-write (the
    hook kills the daemon's process group), and so does the command that submitted the backfill."""
    settings, env = postgres_home(postgres, tmp_path, monkeypatch)
    instance = ensure_instance(settings)
    lake = Lake(settings.lake_dir)
    account, day, point = DEMO_ACCOUNTS[0], DAYS[0], "utilization_daily"
    args = ["run", "--start", str(day), "--end", str(day), "--accounts", account]
    hooked = {
        **env,
        POINT_VAR: point,
        "PYTHONPATH": os.pathsep.join(p for p in (str(HOOK_DIR), str(REPO), env.get("PYTHONPATH")) if p),
    }
    log = tmp_path / "daemon.log"
    with _daemon(hooked, log) as daemon, open(tmp_path / "run.log", "w") as out:
        first = subprocess.Popen(
            [str(CLOUDOPT), *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait(lambda: daemon.poll() is not None or first.poll() is not None, "the kill", log)
            assert (settings.home / "killed_at").read_text() == point, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    left = [r for r in instance.get_runs(filters=dg.RunsFilter(job_name=DAILY_JOB)) if not r.is_finished]
    assert len(left) == 1 and "dagster/backfill" in left[0].tags, [r.status for r in left]
    assert lake.partitions(point) == []

    # A new daemon (no hook), and the command again: it fails the dead run, judged by its worker's pid.
    with _daemon(env, log) as daemon:
        retry = _cloudopt(env, *args, "--only-missing")
        assert retry.returncode == 0, retry.stdout + retry.stderr
        assert f"run {left[0].run_id} was left unfinished by a process that is gone" in retry.stdout, retry.stdout
        _wait(lambda: _all_finished(instance), "the end of every run of the retry", log)
        assert daemon.poll() is None, log.read_text()[-3000:]

    killed = instance.get_run_by_id(left[0].run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    assert "launched by the daemon" in _run_messages(instance, killed.run_id)
    daily = instance.get_runs(filters=dg.RunsFilter(job_name=DAILY_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert [r.tags["dagster/partition"] for r in daily] == [str(account_day_key(account, day))]
    assert _no_slot_held(instance)
    assert lake.partitions(point) == [(account, day.isoformat())]
    _every_partition_reads(lake)
    staging = lake.root / STAGING
    assert not staging.is_dir() or not list(staging.iterdir())


def test_a_daemons_run_is_judged_only_when_its_code_servers_socket_is_on_this_machine(tmp_path: Path) -> None:
    """The socket the run names must exist here: a run another machine's daemon launched (its path absent
    here, its pids meaning nothing here) is never failed, however dead its worker's pid looks on this one."""
    import socket as sockets

    from dagster._core.events import EngineEventData
    from dagster._core.storage.tags import GRPC_INFO_TAG

    from cloudopt_pipelines.orchestration import recover_dead_runs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    here = tmp_path / "grpc.sock"
    with sockets.socket(sockets.AF_UNIX) as server, dg.instance_for_test() as instance:
        server.bind(str(here))
        assert isinstance(instance.run_launcher, dg.DefaultRunLauncher)
        runs = {}
        for name, path in (("elsewhere", tmp_path / "absent.sock"), ("here", here)):
            tags = {GRPC_INFO_TAG: json.dumps({"host": "localhost", "socket": str(path)})}
            run = instance.add_run(dg.DagsterRun(job_name=name, status=dg.DagsterRunStatus.STARTED, tags=tags))
            instance.report_engine_event(
                f"Started process for run (pid: {gone.pid}).", run, EngineEventData.in_process(gone.pid)
            )
            runs[name] = run.run_id
        assert recover_dead_runs(instance) == [runs["here"]]
        assert instance.get_run_by_id(runs["elsewhere"]).status == dg.DagsterRunStatus.STARTED
        assert instance.get_run_by_id(runs["here"]).status == dg.DagsterRunStatus.FAILURE
