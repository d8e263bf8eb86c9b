"""`cloudopt run` survives killed runs, ends on signals, and refuses bad requests in one line.

The signal tests run the real command in a subprocess on a real persistent instance. A test holds the
warehouse's writer lock (or a slot of the pool) itself, so that the command is provably inside the
warehouse step when the signal arrives, whatever the machine's speed.
"""

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from typer.testing import CliRunner

from cloudopt_pipelines.cli import app
from cloudopt_pipelines.orchestration import (
    TAG_WORKER,
    WAREHOUSE_POOL,
    WORKER_LOCAL,
    WORKER_STARTED,
    PoolBusyError,
    _kill_own_worker,
    ensure_instance,
    process_tags,
    recover_dead_runs,
    wait_for_pool,
)
from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import STAGING
from tests.conftest import DEMO_ACCOUNTS

CLOUDOPT = Path(sys.executable).with_name("cloudopt")
DAY = "2026-11-16"
RUN_ARGS = ["run", "--start", DAY, "--end", DAY, "--accounts", DEMO_ACCOUNTS[0]]
BOUND_S = 300.0  # an upper bound for a 1-partition run on a loaded machine, never a speed target
WAREHOUSE_STEP = "warehouse__duckdb_warehouse"


def _sigint_as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Command:
    """A `cloudopt` subprocess whose output is collected by a thread as it comes."""

    def __init__(self, home: Path, *args: str) -> None:
        env = {**os.environ, "CLOUDOPT_HOME": str(home), "CLOUDOPT_ENV": "demo"}
        # A session of its own: the command, its code server and the run workers they start form one
        # process group, which a test can kill at once, as a lost machine would.
        self.process = subprocess.Popen(
            [str(CLOUDOPT), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # Ctrl-C reaches a command started from a terminal; one started as a background job of a shell
            # without job control (as CI may start the tests) inherits SIGINT ignored and would never see it.
            preexec_fn=_sigint_as_at_a_terminal,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float = BOUND_S) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill_all(self) -> None:
        """SIGKILL the command and every process it started (its run workers)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.kill_all()


def _until(condition: Callable[[], bool], command: _Command, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if command.process.poll() is not None:
            pytest.fail(f"cloudopt exited ({command.process.returncode}) before {what}:\n{command.output}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {BOUND_S:.0f} s:\n{command.output}")
        time.sleep(0.2)


def _claims(settings: Settings) -> list[str]:
    instance = ensure_instance(settings)
    info = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL)
    return [slot.run_id for slot in info.claimed_slots]


@contextmanager
def _writer_lock(settings: Settings) -> Iterator[None]:
    """Hold the warehouse's writer lock, as a long rebuild of another process would."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.warehouse_path.with_name("warehouse.duckdb.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> str:
    """A STARTED run of this instance holding the only slot of the warehouse pool."""
    run_id = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(job_name="warehouse_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    storage = instance.event_log_storage
    storage.set_concurrency_slots(WAREHOUSE_POOL, 1)
    assert storage.claim_concurrency_slot(WAREHOUSE_POOL, run_id, WAREHOUSE_STEP).is_claimed
    return run_id


def _dead_pid_tags() -> dict[str, str]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tags = process_tags(child.pid)
    child.kill()
    child.wait()
    return {**tags, "cloudopt/launched_by": "cloudopt run"}


# --- defects 1 and 21: a run killed in the warehouse step no longer wedges the next ones ----------------


def test_a_run_killed_holding_the_warehouse_pool_is_failed_and_the_next_run_completes(fresh_home: Settings) -> None:
    ensure_instance(fresh_home)
    first = _Command(fresh_home.home, *RUN_ARGS)
    try:
        with _writer_lock(fresh_home):
            _until(lambda: bool(_claims(fresh_home)), first, "claim of the warehouse pool")
            [dead_run] = _claims(fresh_home)
            first.kill_all()  # the command and the run worker that holds the slot
            first.wait()
    finally:
        first.stop()
    instance = ensure_instance(fresh_home)
    assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.STARTED
    assert _claims(fresh_home) == [dead_run]
    leftover = fresh_home.lake_dir / STAGING / f"{first.process.pid}@{socket.gethostname()}-{uuid.uuid4().hex}"
    leftover.mkdir(parents=True)

    second = _Command(fresh_home.home, *RUN_ARGS)
    try:
        assert second.wait() == 0, second.output
    finally:
        second.stop()
    assert dead_run in second.output
    assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
    assert _claims(fresh_home) == []
    assert not leftover.exists()
    assert instance.get_latest_materialization_event(dg.AssetKey(["warehouse", "duckdb_warehouse"])) is not None


def test_runs_left_unstarted_or_started_by_dead_processes_are_marked_failed(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    tags = _dead_pid_tags()
    stuck = []
    for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED):
        run_id = str(uuid.uuid4())
        instance.add_run(dg.DagsterRun(job_name="daily_pipeline", run_id=run_id, status=status, tags=tags))
        stuck.append(run_id)
    live = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(job_name="daily_pipeline", run_id=live, status=dg.DagsterRunStatus.STARTED, tags=process_tags())
    )
    assert sorted(recover_dead_runs(instance)) == sorted(stuck)
    assert {instance.get_run_by_id(r).status for r in stuck} == {dg.DagsterRunStatus.FAILURE}
    assert instance.get_run_by_id(live).status == dg.DagsterRunStatus.STARTED


def test_the_wait_for_the_pool_is_bounded_and_names_the_run_and_the_fix(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    holder = _holder_run(instance, {**process_tags(), "cloudopt/launched_by": "cloudopt run"})
    now = [0.0]
    said: list[str] = []
    with pytest.raises(PoolBusyError) as refused:
        wait_for_pool(
            instance,
            timeout_s=30,
            progress=said.append,
            clock=lambda: now[0],
            sleep=lambda s: now.__setitem__(0, now[0] + s),
        )
    message = str(refused.value)
    assert holder in message and "dagster run delete" in message and "30 s" in message
    assert holder in said[0]
    assert now[0] >= 30


def test_the_wait_frees_a_slot_held_by_a_dead_process(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    holder = _holder_run(instance, _dead_pid_tags())
    said: list[str] = []
    wait_for_pool(instance, timeout_s=30, progress=said.append, clock=lambda: 0.0, sleep=lambda _s: None)
    assert _claims(fresh_home) == []
    assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
    assert holder in said[0]


# --- defects 1 and 22: SIGTERM and Ctrl-C end the command, with a non-zero code --------------------------


def test_sigterm_ends_a_run_that_waits_for_the_pool(fresh_home: Settings) -> None:
    holder = _holder_run(ensure_instance(fresh_home), {**process_tags(), "cloudopt/launched_by": "test"})
    command = _Command(fresh_home.home, *RUN_ARGS)
    try:
        _until(lambda: "waiting for the pool" in command.output, command, "wait for the pool")
        assert holder in command.output
        command.process.send_signal(signal.SIGTERM)
        assert command.wait(timeout=BOUND_S) == 130, command.output  # the command waits up to TERMINATE_WAIT_S itself
    finally:
        command.stop()
    assert "interrupted" in command.output


def test_ctrl_c_during_the_warehouse_step_exits_130(fresh_home: Settings) -> None:
    ensure_instance(fresh_home)
    command = _Command(fresh_home.home, *RUN_ARGS)
    try:
        with _writer_lock(fresh_home):
            _until(lambda: bool(_claims(fresh_home)), command, "claim of the warehouse pool")
            command.process.send_signal(signal.SIGINT)
            code = command.wait(timeout=BOUND_S)
    finally:
        command.stop()
    assert code == 130, command.output
    assert "trying again" not in command.output
    assert _claims(fresh_home) == []


def test_a_termination_whose_interrupt_is_lost_still_ends_the_warehouse_wait(fresh_home: Settings) -> None:
    """The run worker gets no signal here (as when Dagster's interrupt lands while interrupts are captured):
    the request recorded on the instance alone ends the wait for the lock, long before the lock's timeout."""
    instance = ensure_instance(fresh_home)
    command = _Command(fresh_home.home, *RUN_ARGS)
    try:
        with _writer_lock(fresh_home):
            _until(lambda: bool(_claims(fresh_home)), command, "claim of the warehouse pool")
            [run_id] = _claims(fresh_home)
            instance.report_run_canceling(instance.get_run_by_id(run_id))
            _until(lambda: instance.get_run_by_id(run_id).is_finished, command, "end of the canceled run")
            # Still inside the lock: the run ended on the request, not on the lock's timeout.
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
        code = command.wait(timeout=BOUND_S)
    finally:
        command.stop()
    assert code == 1, command.output
    assert f"the warehouse refresh (run {run_id}) was terminated" in command.output
    assert "trying again" not in command.output
    logs = "\n".join(entry.message for entry in instance.all_logs(run_id))
    assert "asked to stop; nothing was written" in logs
    assert not fresh_home.warehouse_path.exists()
    assert _claims(fresh_home) == []


def test_a_worker_that_ignores_termination_is_killed_only_if_it_is_this_process_s_own(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    # A grandchild whose parent has exited: reparented away, no longer a descendant of this process.
    spawn = (
        "import subprocess, sys; "
        "print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
    )
    stranger = subprocess.Popen([sys.executable, "-c", spawn], stdout=subprocess.PIPE, text=True)
    orphan_pid = int(stranger.communicate()[0])
    try:
        outcome = {}
        for name, pid, worker in (
            ("own", own.pid, WORKER_LOCAL),
            ("orphan", orphan_pid, WORKER_LOCAL),
            ("elsewhere", own.pid, None),
        ):
            run = dg.DagsterRun(
                job_name="warehouse_job",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.STARTED,
                tags={TAG_WORKER: worker} if worker else {},
            )
            instance.add_run(run)
            instance.report_engine_event(
                f"{WORKER_STARTED} {pid}).", run, EngineEventData(metadata={"pid": dg.MetadataValue.int(pid)})
            )
            outcome[name] = _kill_own_worker(instance, run)
        assert outcome == {"own": str(own.pid), "orphan": None, "elsewhere": None}
        assert own.wait(timeout=BOUND_S) == -signal.SIGKILL
        os.kill(orphan_pid, 0)  # still alive: not ours to kill
    finally:
        own.kill()
        try:
            os.kill(orphan_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- defects 14, 18 and 23: bad requests are refused in one line, before anything runs --------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--start", DAY, "--end", DAY, "--accounts", ""], "names no account"),
        (["--start", DAY, "--end", DAY, "--accounts", ", ,"], "names no account"),
        (["--start", DAY, "--end", DAY, "--accounts", "12345"], "not 12-digit"),
        (["--start", "2026-11-17", "--end", DAY], "is before --start"),
        (["--start", DAY, "--end", "2999-01-01"], "after the last partition 2026-11-29"),
        (["--start", "2025-01-01", "--end", "2025-01-02"], "before the first partition"),
        (["--start", DAY, "--end", DAY, "--accounts", "999999999999"], "not among the active accounts"),
    ],
)
def test_run_refuses_a_bad_request_in_one_line(fresh_home: Settings, args: list[str], says: str) -> None:
    result = CliRunner().invoke(
        app, ["run", *args], env={"CLOUDOPT_HOME": str(fresh_home.home), "CLOUDOPT_ENV": "demo"}
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and "Warning" not in line]
    assert any(says in line and line.startswith("error: ") for line in lines), result.output
    assert "Traceback" not in result.output
    if (fresh_home.dagster_home / "dagster.yaml").exists():
        assert ensure_instance(fresh_home).get_dynamic_partitions("accounts") == []


def test_sql_refuses_max_rows_out_of_bounds(fresh_home: Settings) -> None:
    for bad in ("0", "-1", "2000000"):
        result = CliRunner().invoke(
            app, ["sql", "SELECT 1", "--max-rows", bad], env={"CLOUDOPT_HOME": str(fresh_home.home)}
        )
        assert result.exit_code == 2 and "--max-rows must be between 1 and" in result.output, result.output


def test_plan_and_execute_refuse_bad_files_in_one_line(fresh_home: Settings, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"instances": ' + "[" * 50_000 + "]" * 50_000 + "}")
    env = {"CLOUDOPT_HOME": str(fresh_home.home)}
    cases = [
        (["plan", "--input", str(deep)], "nested more than"),
        (["execute", "--date", DAY, "--config", str(tmp_path / "missing.yaml")], "No such file"),
        (
            ["plan", "--input", str(deep), "--sweep", "budget", "--chart", str(tmp_path / "no" / "curve.svg")],
            "does not exist; create it first",
        ),
    ]
    for args, says in cases:
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and says in result.output, (args, result.output)


def test_approve_refuses_a_plan_that_failed_its_check_in_one_line(demo_home: Settings, tmp_path: Path) -> None:
    import shutil

    import dagster as dg

    from cloudopt_pipelines.assets.plan import PLAN_CHECK, PLAN_KEY, latest_plan_check, plan_check_metadata
    from cloudopt_pipelines.executor_cli import approve_command
    from cloudopt_pipelines.orchestration import ensure_instance

    settings = Settings(home=tmp_path / "home", env="demo")
    shutil.copytree(demo_home.lake_dir, settings.lake_dir)
    shutil.copytree(demo_home.dagster_home, settings.dagster_home)
    day = date.fromisoformat(DAY)
    instance = ensure_instance(settings)
    passed = latest_plan_check(instance, day)
    assert passed is not None and passed.passed
    # The check of the very same rows, evaluated again and failed (as after a stricter constraints file).
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=PLAN_KEY,
            check_name=PLAN_CHECK,
            passed=False,
            metadata=plan_check_metadata(day, passed.plan_id, passed.plan_sha256, "optimal", ["budget: over"]),
        )
    )
    said: list[str] = []
    code = approve_command(day, None, True, "alice", False, settings=settings, echo=lambda m, **_k: said.append(m))
    assert code == 2 and said[-1].startswith("error: ") and "check" in said[-1], said


def test_accounts_marks_a_registered_id_the_source_does_not_reach(fresh_home: Settings) -> None:
    from cloudopt_pipelines.orchestration import register_accounts

    register_accounts(ensure_instance(fresh_home), ["000000000042", DEMO_ACCOUNTS[0]])
    result = CliRunner().invoke(app, ["accounts"], env={"CLOUDOPT_HOME": str(fresh_home.home), "CLOUDOPT_ENV": "demo"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line[:1].isdigit()]
    assert lines == [
        "000000000042  UNREACHABLE (the source does not list it: check the id)",
        f"{DEMO_ACCOUNTS[0]}  ACTIVE",
    ]


def test_the_instance_config_turns_on_run_monitoring_and_upgrades_only_the_previous_default(tmp_path: Path) -> None:
    from cloudopt_pipelines.orchestration import PREVIOUS_INSTANCE_YAML

    old = Settings(home=tmp_path / "old", env="demo")
    old.dagster_home.mkdir(parents=True)
    (old.dagster_home / "dagster.yaml").write_text(PREVIOUS_INSTANCE_YAML)
    settings = ensure_instance(old).run_monitoring_settings
    assert settings["enabled"] and settings["free_slots_after_run_end_seconds"] > 0
    edited = Settings(home=tmp_path / "edited", env="demo")
    edited.dagster_home.mkdir(parents=True)
    (edited.dagster_home / "dagster.yaml").write_text(PREVIOUS_INSTANCE_YAML + "# edited by hand\n")
    ensure_instance(edited)
    assert (edited.dagster_home / "dagster.yaml").read_text().endswith("# edited by hand\n")


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("CLOUDOPT_DEPLOYMENT_TYPES", "warp", "CLOUDOPT_DEPLOYMENT_TYPES names 'warp'"),
        ("CLOUDOPT_ENV", "bogus", "CLOUDOPT_ENV='bogus' is not one of demo, aws"),
    ],
)
def test_a_bad_setting_ends_any_command_in_one_line(tmp_path: Path, variable: str, value: str, says: str) -> None:
    env = {**os.environ, "CLOUDOPT_HOME": str(tmp_path / "home"), variable: value}
    done = subprocess.run([str(CLOUDOPT), "info"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: ") and says in done.stderr
