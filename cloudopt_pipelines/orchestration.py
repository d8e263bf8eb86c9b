"""Run the pipeline for a range of days through Dagster, on the persistent instance under $CLOUDOPT_HOME.

This is what ``cloudopt run`` and ``make demo`` call: one run of the daily job per account and day,
as a backfill launches them, then the warehouse refresh. Runs are submitted through the instance as
runs of the code location ``cloudopt_pipelines`` (the one workspace.yaml names): the instance's run
launcher starts them (a process per run locally, a Kubernetes job when deployed), the UI lists them on
its timeline and re-executes them like any run it launched. Only a range given a source object in code
(tests) executes in this process, since that object cannot reach another process.

Every run is tagged with the process that executes it. A process killed mid-run (SIGKILL, a lost
machine) leaves its run STARTED and, in the warehouse step, the only slot of the pool
``duckdb_warehouse`` claimed; ``recover_dead_runs`` (called when a range starts and while the
warehouse refresh waits for the pool) marks such runs failed and frees their slots. A run the daemon made
(a backfill's) carries no such tags; it is judged by its run worker's pid when the code server that started
it was reached through a Unix socket of this machine. The wait for the
pool is bounded and names the run that holds it. An interrupt (Ctrl-C, SIGTERM) stops the range
instead of failing one run and going on.
"""

import json
import os
import re

# Dagster's gRPC calls give up after 60 s; starting a run worker on a busy machine can take longer (each
# imports the definitions), and a run that failed to start for that is not a failure of the pipeline.
# Read when dagster._grpc is first imported, so set before anything imports it.
os.environ.setdefault("DAGSTER_GRPC_TIMEOUT_SECONDS", "600")

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from cloudopt_pipelines.assets.plan import PLAN_JOB
from cloudopt_pipelines.assets.warehouse import WAREHOUSE_POOL
from cloudopt_pipelines.automation import CATALOG_JOB, DAILY_JOB, WAREHOUSE_JOB
from cloudopt_pipelines.definitions import build_definitions, partitions_for, source_for
from cloudopt_pipelines.instance import INSTANCE_YAML, PREVIOUS_INSTANCE_YAML, ensure_instance  # noqa: F401
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, DEPLOYMENT_PARTITIONS, Partitions, account_day_key
from cloudopt_pipelines.procfs import PARENT_PID, START_TICKS, stat_fields
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.settings import Settings, load_settings
from cloudopt_pipelines.sources.base import SCHEDULABLE_STATUSES
from cloudopt_pipelines.storage.lake import open_lake

POOL_WAIT_S = 600.0
POOL_POLL_S = 1.0
TAG_LAUNCHED_BY = "cloudopt/launched_by"
TAG_PID = "cloudopt/pid"
TAG_HOST = "cloudopt/host"
TAG_PROCESS_START = "cloudopt/process_start"
TAG_WORKER = "cloudopt/run_worker"
WORKER_LOCAL = "local process"
# The run worker's first engine event (dagster/_grpc/impl.py), whose metadata carries its pid.
WORKER_STARTED = "Started process for run (pid:"
# What the code server reports when a run worker it started died before ending its run (dagster/_grpc/server.py).
WORKER_DIED = re.compile(r"Run execution process for \S+ (?:was terminated by signal|unexpectedly exited)[^.]*")
LOCATION_NAME = "cloudopt_pipelines"  # as workspace.yaml names it: the UI lists the runs under it
DEFINITIONS_MODULE = "cloudopt_pipelines.definitions"
RUN_POLL_S = 0.5
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
DAEMON_ALIVE_S = 120.0
BACKFILL_RUNNING = frozenset({"REQUESTED", "CANCELING", "FAILING"})
IN_PROCESS_EXECUTION = {"execution": {"config": {"in_process": {}}}}
TERMINATE_WAIT_S = 60.0
# How long a wait for runs rides out the instance's database being away (a restart, a failover) before it
# gives up with a clear error; the runs themselves go on in their workers meanwhile.
DATABASE_OUTAGE_S = 120.0
UNFINISHED_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


class PoolBusyError(RuntimeError):
    """The warehouse pool stayed held by another run for longer than the wait allows."""


@dataclass
class PartitionOutcome:
    account_id: str
    day: date
    success: bool
    run_id: str
    error: str | None = None
    skipped: bool = False  # already materialised: kept as it was (``skip_done``)


@dataclass
class RangeResult:
    """What a ``cloudopt run`` did."""

    accounts: list[str]
    days: list[date]
    outcomes: list[PartitionOutcome] = field(default_factory=list)
    warehouse_path: Path | None = None

    @property
    def failed(self) -> list[PartitionOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def skipped(self) -> list[PartitionOutcome]:
        return [o for o in self.outcomes if o.skipped]


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that executes a run, so a later command can tell when it is gone."""
    pid = os.getpid() if pid is None else pid
    tags = {TAG_PID: str(pid), TAG_HOST: socket.gethostname()}
    started = _process_start(pid)
    if started is not None:
        tags[TAG_PROCESS_START] = started
    return tags


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), which tells a reused pid apart."""
    fields = stat_fields(pid)
    return fields[START_TICKS] if fields else None


def process_gone(tags: Mapping[str, str]) -> bool:
    """True when the tags name a process of this machine that no longer runs (or whose pid was reused)."""
    pid, host = tags.get(TAG_PID, ""), tags.get(TAG_HOST)
    if not pid.isdigit() or host != socket.gethostname():
        return False  # not ours to judge: launched elsewhere, or by the daemon
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    started = tags.get(TAG_PROCESS_START)
    return started is not None and _process_start(int(pid)) != started


def _run_process_gone(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """A launched run is judged by its run worker's pid once known (the command that launched it may have
    ended while the worker goes on); until then, and for a run executed in process, by its tags. A run the
    daemon made (a backfill's) carries no tags of ours: it is judged by its worker's pid when its code
    server was reached through a Unix socket that is on this machine (the daemon's own code server)."""
    if run.tags.get(TAG_WORKER) == WORKER_LOCAL:
        worker = run_worker_pid(instance, run.run_id)
        if worker is not None:
            return process_gone({TAG_PID: worker, TAG_HOST: run.tags.get(TAG_HOST, "")})
    elif TAG_PID not in run.tags and _launched_on_this_machine(instance, run):
        worker = run_worker_pid(instance, run.run_id)
        if worker is not None:
            return process_gone({TAG_PID: worker, TAG_HOST: socket.gethostname()})
    return process_gone(run.tags)


def _launched_on_this_machine(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """True when the instance's local run launcher started ``run`` through a Unix socket of this machine."""
    from dagster._core.storage.tags import GRPC_INFO_TAG

    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return False  # a Kubernetes job or the like: Dagster's run monitoring watches it
    try:
        info = json.loads(run.tags.get(GRPC_INFO_TAG, "{}"))
    except ValueError:
        return False
    path = info.get("socket") if isinstance(info, dict) else None
    # The socket file is on this machine (it outlives a killed code server): another machine's daemon, whose
    # pids mean nothing here, would name a path that does not exist here.
    return isinstance(path, str) and Path(path).is_socket()


def _gone_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The process a dead run is judged by, for the message that marks it failed."""
    if TAG_PID in run.tags:
        return f"process {run.tags[TAG_PID]} on {run.tags.get(TAG_HOST)}"
    return f"run worker {run_worker_pid(instance, run.run_id)} on {socket.gethostname()} (launched by the daemon)"


def recover_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs whose process is gone and free the pool slots they or finished runs hold.

    Returns the ids of the runs marked failed.
    """
    recovered: list[str] = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED_STATUSES)):
        run = record.dagster_run
        if not _run_process_gone(instance, run):
            continue
        instance.report_run_failed(
            run,
            message=f"{_gone_process(instance, run)} that ran this run is gone (killed); "
            "marked failed by cloudopt, which freed its pool slots",
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        recovered.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids():
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
    return recovered


def wait_for_pool(
    instance: dg.DagsterInstance,
    pool: str = WAREHOUSE_POOL,
    timeout_s: float = POOL_WAIT_S,
    progress: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait until ``pool`` has a free slot, freeing those of dead runs; a clear error after ``timeout_s``."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    deadline = clock() + timeout_s
    announced = False
    while True:
        for run_id in recover_dead_runs(instance):
            progress(f"run {run_id} had died holding the pool '{pool}': marked failed, slot freed")
        info = storage.get_concurrency_info(pool)
        if not info.claimed_slots or len(info.claimed_slots) < info.slot_count:
            return
        described = "; ".join(_describe_run(instance.get_run_by_id(s.run_id), s.run_id) for s in info.claimed_slots)
        if clock() >= deadline:
            first = info.claimed_slots[0].run_id
            raise PoolBusyError(
                f"waited {timeout_s:.0f} s for the pool '{pool}' (limit {info.slot_count}), held by {described}. "
                "If that run is still going, let it finish and run this command again; if its process is gone "
                f"(killed on another machine), mark it failed in the Dagster UI (Runs, {first}, Terminate) or "
                f"delete it: DAGSTER_HOME={instance.root_directory} dagster run delete {first}"
            )
        if not announced:
            progress(f"waiting for the pool '{pool}', held by {described} ...")
            announced = True
        sleep(POOL_POLL_S)


def _describe_run(run: dg.DagsterRun | None, run_id: str) -> str:
    if run is None:
        return f"run {run_id} (no longer in the instance)"
    who = run.tags.get(TAG_LAUNCHED_BY, "the Dagster daemon or UI")
    where = f", process {run.tags[TAG_PID]} on {run.tags.get(TAG_HOST)}" if TAG_PID in run.tags else ""
    return f"run {run_id} of job {run.job_name} ({run.status.value}, launched by {who}{where})"


def execute_job(
    job: Any,
    instance: dg.DagsterInstance,
    launched_by: str = "cloudopt run",
    tags: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """Execute ``job`` in this process, tagged with it; an interrupt of the run is raised, not returned as a failure."""
    outcome = job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags={TAG_LAUNCHED_BY: launched_by, **process_tags(), **(tags or {})},
        **kwargs,
    )
    if not outcome.success and was_interrupted(outcome):
        raise KeyboardInterrupt(f"run {outcome.run_id} was interrupted")
    return outcome


@dataclass
class RunOutcome:
    """A finished run of the instance, with the fields of an ``ExecuteInProcessResult`` the range reads."""

    run_id: str
    success: bool
    all_events: list[dg.DagsterEvent]


class LocationLauncher:
    """Submits runs of the code location ``cloudopt_pipelines`` through the instance and waits for each.

    The location is served by a code server that this launcher starts with ``environ`` (what
    ``load_settings`` reads there is what the runs see); the instance's run coordinator and run launcher
    start the runs, so a run records the location's origin and the job snapshot the UI compares.
    """

    def __init__(
        self, instance: dg.DagsterInstance, environ: Mapping[str, str], quiet: bool = True, log: Path | None = None
    ) -> None:
        self.instance = instance
        # Quiet: the code server's and the run workers' Dagster beta warnings and info logs stay out of the output.
        self.environ = {**environ, **({"PYTHONWARNINGS": "ignore"} if quiet else {})}
        self.log_level = "WARNING" if quiet else "INFO"
        self.log = log  # where the code server and the run workers write their output (quiet only)
        self._signals: dict[int, Any] = {}
        self._saved: dict[str, str] | None = None
        self._context: Any = None
        self.queued = daemon_runs_queue(instance)

    def __enter__(self) -> "LocationLauncher":
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import ModuleTarget

        # The code server (and every run worker it starts) inherits this process's environment.
        self._saved = dict(os.environ)
        os.environ.update(self.environ)
        try:
            self._interrupt_on_sigterm()
            target = ModuleTarget(
                module_name=DEFINITIONS_MODULE, attribute=None, working_directory=None, location_name=LOCATION_NAME
            )
            with _output_to(self.log):
                self._context = WorkspaceProcessContext(
                    self.instance, target, version=dg.__version__, code_server_log_level=self.log_level
                )
                self._context.__enter__()
            location = self._context.create_request_context().get_code_location_error(LOCATION_NAME)
            if location is not None:
                raise RuntimeError(f"the code location {LOCATION_NAME} failed to load: {location.message.strip()}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None
        if self._saved is not None:
            os.environ.clear()
            os.environ.update(self._saved)
            self._saved = None
        for number, handler in self._signals.items():
            signal.signal(number, handler)
        self._signals = {}

    def _interrupt_on_sigterm(self) -> None:
        """SIGTERM interrupts the wait like Ctrl-C, so that the run in progress is terminated, not orphaned."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._signals[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_interrupt)

    def run(
        self,
        job: Any,
        launched_by: str = "cloudopt run",
        partition_key: str | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> RunOutcome:
        """Submit a run of ``job`` (a job of the definitions, which names it and its partitions) and wait for it.

        An interrupt while it runs terminates the run through the run launcher and is raised.
        """
        from dagster._core.definitions.selector import JobSubsetSelector

        request = self._context.create_request_context()
        location = request.get_code_location(LOCATION_NAME)
        [repository] = location.get_repositories().values()
        remote_job = location.get_job(JobSubsetSelector(LOCATION_NAME, repository.name, job.name, None))
        # One process per run, as ``execute_in_process`` ran it: a process per step would start the
        # definitions a dozen times a partition. A backfill from the UI keeps the job's multiprocess default.
        config = {**IN_PROCESS_EXECUTION, **(run_config or {})}
        plan = location.get_execution_plan(
            remote_job, config, step_keys_to_execute=None, known_state=None, instance=self.instance
        ).execution_plan_snapshot
        partition_tags = job.partitions_def.get_tags_for_partition_key(partition_key) if partition_key else {}
        tags = {**remote_job.tags, **partition_tags, TAG_LAUNCHED_BY: launched_by, **launch_tags(self.instance)}
        run = self.instance.create_run(
            job_name=remote_job.name,
            run_id=None,
            run_config=config,
            resolved_op_selection=remote_job.resolved_op_selection,
            step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags=tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repository.asset_graph,
        )
        try:
            if self.queued:
                self.instance.submit_run(run.run_id, request)
            else:
                self.instance.launch_run(run.run_id, request)
            finished = self._wait(run.run_id)
        except KeyboardInterrupt:
            self._terminate(run.run_id)
            raise KeyboardInterrupt(f"run {run.run_id} was interrupted") from None
        events = [entry.dagster_event for entry in self.instance.all_logs(run.run_id) if entry.dagster_event]
        return RunOutcome(run.run_id, finished.status == dg.DagsterRunStatus.SUCCESS, events)

    def backfill(
        self,
        job: Any,
        partition_keys: list[str],
        launched_by: str = "cloudopt run",
        run_config: Mapping[str, Any] | None = None,
    ) -> dict[str, RunOutcome]:
        """Submit a backfill of ``job`` over ``partition_keys`` (as the UI launches one), wait
        for the daemon to finish it, and return the outcome of each partition's last run.

        An interrupt cancels the backfill and its runs, and is raised.
        """
        from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
        from dagster._core.utils import make_new_backfill_id

        request = self._context.create_request_context()
        location = request.get_code_location(LOCATION_NAME)
        [repository] = location.get_repositories().values()
        backfill_id = make_new_backfill_id()
        # A backfill of the job (as the UI's job backfill): one run per partition and nothing else; an asset
        # backfill would also take in the later days that read each day through a trailing window.
        [partition_set] = [p for p in repository.get_partition_sets() if p.job_name == job.name]
        backfill = PartitionBackfill(
            backfill_id=backfill_id,
            partition_set_origin=partition_set.get_remote_origin(),
            status=BulkActionStatus.REQUESTED,
            partition_names=partition_keys,
            from_failure=False,
            reexecution_steps=None,
            tags={TAG_LAUNCHED_BY: launched_by},
            backfill_timestamp=time.time(),
            asset_selection=None,
            title=f"{launched_by}: {len(partition_keys)} partition(s) of {job.name}",
            description=None,
            run_config={**IN_PROCESS_EXECUTION, **(run_config or {})},
        )
        self.instance.add_backfill(backfill)
        try:
            status = lambda: self.instance.get_backfill(backfill_id).status.value  # noqa: E731
            while through_outage(status, f"waited for backfill {backfill_id}") in BACKFILL_RUNNING:
                time.sleep(RUN_POLL_S * 4)
        except KeyboardInterrupt:
            current = self.instance.get_backfill(backfill_id)
            self.instance.update_backfill(current.with_status(BulkActionStatus.CANCELING))
            raise KeyboardInterrupt(f"backfill {backfill_id} was interrupted (canceling)") from None
        outcomes: dict[str, RunOutcome] = {}
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        for run in sorted(runs, key=lambda r: self.instance.get_run_record_by_id(r.run_id).create_timestamp):
            run = self._wait(run.run_id)
            events = [entry.dagster_event for entry in self.instance.all_logs(run.run_id) if entry.dagster_event]
            success = run.status == dg.DagsterRunStatus.SUCCESS
            for key in _run_partition_keys(run):
                outcomes[key] = RunOutcome(run.run_id, success, events)
        return outcomes

    def _wait(self, run_id: str) -> dg.DagsterRun:
        while True:
            run = through_outage(lambda: self.instance.get_run_by_id(run_id), f"waited for run {run_id}")
            if run is None:
                raise RuntimeError(f"run {run_id} was deleted from the instance while cloudopt waited for it")
            if run.is_finished:
                return run
            time.sleep(RUN_POLL_S)

    def _terminate(self, run_id: str) -> None:
        """Stop a run this command submitted; one its launcher cannot reach is failed and its slots freed."""
        try:
            self.instance.run_launcher.terminate(run_id)
        except Exception:  # the run is failed below all the same
            pass
        deadline = time.monotonic() + TERMINATE_WAIT_S
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                break
            time.sleep(RUN_POLL_S)
        else:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                killed = _kill_own_worker(self.instance, run)
                stopped = f"killed its run worker (pid {killed})" if killed else "could not stop this run"
                self.instance.report_run_failed(
                    run,
                    message=f"cloudopt was interrupted and {stopped}: it did not end within "
                    f"{TERMINATE_WAIT_S:.0f} s of the request to terminate",
                )
        self.instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def _kill_own_worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """SIGKILL the run worker of ``run`` if it is a descendant of this process (started by this command's
    own code server); returns its pid. A worker anywhere else is never touched.

    Without it a worker that ignored the request to terminate would go on after its run was failed, and the
    code server's shutdown, which waits for its runs, would hold the command's exit as long.
    """
    if run.tags.get(TAG_WORKER) != WORKER_LOCAL:
        return None
    pid = run_worker_pid(instance, run.run_id)
    if pid is None or not _descends_from_this_process(int(pid)):
        return None
    try:
        os.kill(int(pid), signal.SIGKILL)
    except ProcessLookupError:
        return None
    return pid


def _descends_from_this_process(pid: int) -> bool:
    """True when ``pid`` is not this process and its chain of parents (Linux ``/proc``) reaches it."""
    me, seen = os.getpid(), set()
    if pid == me:
        return False
    while pid > 0 and pid not in seen:  # down to pid 1 too: this command may be a container's init
        if pid == me:
            return True
        seen.add(pid)
        fields = stat_fields(pid)
        if fields is None:
            return False
        pid = int(fields[PARENT_PID])
    return False


class InstanceUnavailable(RuntimeError):
    """The Dagster instance's database stayed away longer than ``DATABASE_OUTAGE_S``."""


def through_outage(read: Callable[[], Any], what: str, bound_s: float = DATABASE_OUTAGE_S) -> Any:
    """``read`` of the instance, retried while its database is briefly away; past ``bound_s`` an error that
    says what cloudopt was doing, that the runs go on, and how to finish."""
    from sqlalchemy.exc import DBAPIError

    deadline = time.monotonic() + bound_s
    while True:
        try:
            return read()
        except DBAPIError as exc:
            if time.monotonic() > deadline:
                cause = exc.orig or exc
                first_line = next(iter(str(cause).strip().splitlines()), "")
                raise InstanceUnavailable(
                    f"the Dagster instance's database did not answer for {bound_s:.0f} s while cloudopt {what} "
                    f"({type(cause).__name__}: {first_line}); runs already launched go on in their "
                    "workers: once the database is back, run the same command with --only-missing"
                ) from exc
            time.sleep(RUN_POLL_S * 4)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


@contextmanager
def _output_to(path: Path | None) -> Iterator[None]:
    """Point this process's stdout and stderr at ``path`` (appended) while a child process is started, which
    inherits them: a solver's banner or a Dagster log line of a run worker goes there, not to the user."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def daemon_runs_queue(instance: dg.DagsterInstance, now: float | None = None) -> bool:
    """True when the instance queues runs and a daemon that starts them is alive (a recent heartbeat).

    Then runs are submitted to the queue, which keeps the instance's limits across every process; without
    a live daemon nothing would leave the queue, so the runs are launched directly.
    """
    if not isinstance(instance.run_coordinator, dg.QueuedRunCoordinator):
        return False
    heartbeat = instance.get_daemon_heartbeats().get(QUEUE_DAEMON)
    now = time.time() if now is None else now
    return heartbeat is not None and now - heartbeat.timestamp < DAEMON_ALIVE_S


def _run_partition_keys(run: dg.DagsterRun) -> list[str]:
    """The partition keys a backfill's run materialised: its one partition, or those of its range."""
    if "dagster/partition" in run.tags:
        return [run.tags["dagster/partition"]]
    return []  # a range run (a batch model): its partitions count as done by the per-partition runs


def launch_tags(instance: dg.DagsterInstance) -> dict[str, str]:
    """Tags of a submitted run naming where it executes: on this machine, the process that owns it
    (``recover_dead_runs`` judges the run worker's own pid once it has reported it)."""
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return {}  # a Kubernetes job or the like: Dagster's run monitoring watches it, not this machine
    return {**process_tags(), TAG_WORKER: WORKER_LOCAL}


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The pid of the process that executes a launched run, as its run worker reported it, if it has."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if entry.message.startswith(WORKER_STARTED):
            pid = entry.dagster_event.engine_event_data.metadata.get("pid") if entry.dagster_event else None
            if pid is not None:
                return str(pid.value)
    return None


class InProcessRunner:
    """Executes runs in this process (a source object given in code): the range's other runner."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance

    def __enter__(self) -> "InProcessRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(
        self,
        job: Any,
        launched_by: str = "cloudopt run",
        partition_key: str | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Execute ``job`` here; an interrupt is raised."""
        return execute_job(job, self.instance, launched_by, partition_key=partition_key, run_config=run_config)


def _settings_of(environ: Mapping[str, str]) -> Settings | None:
    """The settings a code server started with ``environ`` loads, or None when it would refuse them."""
    try:
        return load_settings(environ)
    except ValueError:
        return None


def was_interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """True when a run ended because its process was interrupted (Ctrl-C, SIGTERM), not because a step failed."""
    for event in result.all_events:
        reason = getattr(event.event_specific_data, "failure_reason", None)
        if event.event_type_value == "PIPELINE_FAILURE" and getattr(reason, "value", None) == "UNEXPECTED_TERMINATION":
            return True
        if event.is_step_failure and event.step_failure_data is not None and event.step_failure_data.error:
            if event.step_failure_data.error.cls_name in ("KeyboardInterrupt", "DagsterExecutionInterruptedError"):
                return True
    return False


def register_accounts(instance: dg.DagsterInstance, accounts: list[str]) -> list[str]:
    """Add accounts not yet known as partitions; returns the ones added."""
    known = set(instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME))
    new = sorted(set(accounts) - known)
    if new:
        try:
            instance.add_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME, new)
        except Exception:
            # The daemon's account discovery may have added the same ones meanwhile (a unique-key error).
            if set(new) - set(instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME)):
                raise
    return new


def day_range(start: date, end: date, partitions: Partitions = DEPLOYMENT_PARTITIONS) -> list[date]:
    """Every day from start to end, checked against the daily partitions (complete UTC days only)."""
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}: give the first day as --start")
    first, last = partitions.first_day, partitions.last_day
    bounded = partitions.daily.end is not None
    covers = f"the partitions cover {first} to {last}" + (" (the demo data's days)" if bounded else "")
    if start < first:
        raise ValueError(
            f"--start {start} is before the first partition {first}: {covers}; pick --start {first} or later"
        )
    if last is None or end > last:
        if bounded:
            raise ValueError(f"--end {end} is after the last partition {last}: {covers}; pick --end {last} or earlier")
        raise ValueError(f"--end {end} is not a complete UTC day yet: the latest partition is {last}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


WAREHOUSE_ATTEMPTS = 3
PLAN_OUTCOME_ACCOUNT = "all accounts (portfolio plan)"
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_range(
    start: date,
    end: date,
    accounts: list[str] | None = None,
    settings: Settings | None = None,
    source: SourceResource | None = None,
    progress: Callable[[str], None] = print,
    refresh_catalog: bool = False,
    quiet: bool = True,
    pool_wait_s: float = POOL_WAIT_S,
    skip_done: bool = False,
    tracker: "ProgressTracker | None" = None,
    launch: bool | None = None,
) -> RangeResult:
    """Materialise every account x day in [start, end], then refresh the warehouse.

    With ``skip_done``, an account x day whose every asset of the daily job is already materialised is
    kept as it is, and so is the plan of a day none of whose accounts ran again; the warehouse is
    rebuilt only when something ran (or it is missing).

    ``accounts`` (default: every account the source reaches) must be accounts the source reaches; a
    ValueError names any other before anything runs or is registered. Runs left unfinished by killed
    processes are marked failed first, and leftovers of killed writers removed.

    ``launch`` (default: when no ``source`` is given and ``settings`` are what the environment says)
    submits the runs through the instance as runs of the code location; otherwise they execute in this
    process, with ``source`` and ``settings`` as given.
    """
    settings = settings or load_settings()
    days = day_range(start, end, partitions_for(settings))
    source_given = source is not None
    source = source or source_for(settings)
    defs = build_definitions(settings, source)
    instance = ensure_instance(settings)
    for run_id in recover_dead_runs(instance):
        progress(f"run {run_id} was left unfinished by a process that is gone: marked failed")
    open_lake(settings.lake_url).sweep()
    collector = source.get_collector()
    if accounts is None:
        accounts = collector.list_accounts()
    else:
        accounts = sorted(set(accounts))
        if accounts:
            statuses = collector.list_account_statuses()
            unreachable = [a for a in accounts if statuses.get(a) not in SCHEDULABLE_STATUSES]
            if unreachable:
                reachable = sorted(a for a, status in statuses.items() if status in SCHEDULABLE_STATUSES)
                raise ValueError(
                    f"account(s) {', '.join(unreachable)} are not among the active accounts the {collector.name} "
                    f"source reaches ({', '.join(reachable) or 'none'}); check the id (a typo would otherwise "
                    "be registered and scheduled every day)"
                )
    if not accounts:
        raise ValueError(
            "no accounts to run: pass --accounts, set CLOUDOPT_ACCOUNTS, or give the collector access "
            "to AWS Organizations (organizations:ListAccounts)"
        )
    added = register_accounts(instance, accounts)
    if added:
        progress(f"registered {len(added)} account partition(s): {', '.join(added)}")
    result = RangeResult(accounts=accounts, days=days)
    tracker = tracker or ProgressTracker()
    tracker.start(len(days) * len(accounts) + len(days) + 1)  # every account-day, every plan, the warehouse
    environ = {**os.environ, "CLOUDOPT_HOME": str(settings.home), "CLOUDOPT_ENV": settings.env}
    runner: LocationLauncher | InProcessRunner
    if launch and source_given:
        raise ValueError("a source given in code runs in this process only: pass launch=False")
    if launch is None:
        launch = not source_given and _settings_of(environ) == settings
    runner = (
        LocationLauncher(instance, environ, quiet, code_server_log(settings) if quiet else None)
        if launch
        else InProcessRunner(instance)
    )
    with runner:
        lake = open_lake(settings.lake_url)
        run_config = QUIET_RUN_CONFIG if quiet else None

        if refresh_catalog or not lake.exists("price_catalog"):
            progress("building the price catalogue ...")
            outcome = runner.run(defs.resolve_job_def(CATALOG_JOB), run_config=run_config)
            if not outcome.success:
                raise RuntimeError(f"the price catalogue failed to build: {_first_error(outcome)}")

        daily = defs.resolve_job_def(DAILY_JOB)
        plan_job = defs.resolve_job_def(PLAN_JOB)
        done_partitions = finished_partitions(instance, daily) if skip_done else set()
        done_plans = finished_partitions(instance, plan_job) if skip_done else set()
        total = len(days) * len(accounts)
        # With the daemon's queue: one backfill of every partition still to do, which the daemon runs
        # as several runs at once within the instance's limits; each partition is then reported below.
        queued = getattr(runner, "queued", False)
        to_do = [
            str(account_day_key(a, d))
            for d in days
            for a in accounts
            if str(account_day_key(a, d)) not in done_partitions
        ]
        by_backfill = runner.backfill(daily, to_do, run_config=run_config) if queued and to_do else {}
        for n, (day, account) in enumerate(((d, a) for d in days for a in accounts), start=1):
            if str(account_day_key(account, day)) in by_backfill:
                outcome = by_backfill[str(account_day_key(account, day))]
                error = None if outcome.success else _failure(outcome, settings)
                result.outcomes.append(PartitionOutcome(account, day, outcome.success, outcome.run_id, error))
                status = "ok" if outcome.success else f"FAILED: {error}"
                progress(f"[{n}/{total}] {day} account {account}: {status} (backfill)")
                tracker.advance()
                continue
            if str(account_day_key(account, day)) in done_partitions:
                result.outcomes.append(PartitionOutcome(account, day, True, "", skipped=True))
                progress(f"[{n}/{total}] {day} account {account}: already materialised, kept (--force redoes it)")
                tracker.advance()
                continue
            outcome = runner.run(daily, partition_key=str(account_day_key(account, day)), run_config=run_config)
            error = None if outcome.success else _failure(outcome, settings)
            result.outcomes.append(PartitionOutcome(account, day, outcome.success, outcome.run_id, error))
            status = "ok" if outcome.success else f"FAILED: {error}"
            progress(f"[{n}/{total}] {day} account {account}: {status}")
            tracker.advance()

        for day in days:
            if not any(o.success and o.day == day for o in result.outcomes):
                progress(f"[plan] {day} skipped: no account of that day was materialised")
                tracker.advance()
                continue
            if day.isoformat() in done_plans and all(o.skipped for o in result.outcomes if o.day == day):
                result.outcomes.append(PartitionOutcome(PLAN_OUTCOME_ACCOUNT, day, True, "", skipped=True))
                progress(f"[plan] {day} already planned on the same inputs, kept")
                tracker.advance()
                continue
            outcome = runner.run(plan_job, partition_key=day.isoformat(), run_config=run_config)
            error = None if outcome.success else _failure(outcome, settings)
            result.outcomes.append(PartitionOutcome(PLAN_OUTCOME_ACCOUNT, day, outcome.success, outcome.run_id, error))
            status = "ok" if outcome.success else f"FAILED: {error}"
            progress(f"[plan] {day} portfolio plan across {len(accounts)} account(s): {status}")
            tracker.advance()

        if result.outcomes and all(o.skipped for o in result.outcomes) and settings.warehouse_path.exists():
            progress("warehouse: nothing new, kept")
            tracker.advance()
            result.warehouse_path = settings.warehouse_path
            return result
        progress("refreshing the warehouse ...")
        # The rebuild is idempotent. A second try covers a Dagster race: two processes that first use the
        # pool "duckdb_warehouse" at the same moment both insert its limit row, and one of them fails.
        for attempt in range(1, WAREHOUSE_ATTEMPTS + 1):
            wait_for_pool(instance, WAREHOUSE_POOL, pool_wait_s, progress)
            outcome = runner.run(defs.resolve_job_def(WAREHOUSE_JOB), run_config=run_config)
            if outcome.success:
                for warning in _materialization_warnings(outcome):
                    progress(f"warehouse: {warning}")
                break
            if was_interrupted(outcome):  # terminated from the UI or by another command: not ours to retry
                raise RuntimeError(
                    f"the warehouse refresh (run {outcome.run_id}) was terminated before it finished; the "
                    "warehouse file is whole (a rebuild replaces it atomically): run the command again to refresh it"
                )
            if attempt == WAREHOUSE_ATTEMPTS:
                raise RuntimeError(f"the warehouse refresh failed: {_first_error(outcome)}")
            progress(f"warehouse refresh failed ({_first_error(outcome)[:200]}); trying again")
            time.sleep(1.0)
        tracker.advance()
        result.warehouse_path = settings.warehouse_path
        return result


class ProgressTracker:
    """Told how many steps a range has and each one done (the command line draws a bar); does nothing."""

    def start(self, total: int) -> None:
        """The range has ``total`` steps."""

    def advance(self) -> None:
        """One more step is done."""


def finished_partitions(instance: dg.DagsterInstance, job: Any) -> set[str]:
    """The partition keys of ``job`` for which every asset it materialises has been materialised."""
    done: set[str] | None = None
    for key in job.asset_layer.selected_asset_keys:
        materialised = instance.get_materialized_partitions(key)
        done = materialised if done is None else done & materialised
    return done or set()


def _materialization_warnings(result: dg.ExecuteInProcessResult) -> list[str]:
    """The ``warnings`` metadata of the materialisations of a run (the warehouse rebuild's skipped entries)."""
    warnings: list[str] = []
    for event in result.all_events:
        if event.is_step_materialization:
            value = event.step_materialization_data.materialization.metadata.get("warnings")
            warnings.extend(getattr(value, "data", None) or [])
    return warnings


def code_server_log(settings: Settings) -> Path:
    """Where the output of the code server that ``cloudopt run`` starts, and of its run workers, goes."""
    return settings.home / "logs" / "code_server.log"


def failure_log(settings: Settings, run_id: str) -> Path:
    """Where the full error of a failed run is written: ``$CLOUDOPT_HOME/logs/<run id>.log``."""
    return settings.home / "logs" / f"{run_id}.log"


def _failure(result: dg.ExecuteInProcessResult, settings: Settings) -> str:
    """The failed run's one useful line; its every error with the stack goes to its log file, named there."""
    details = [
        f"{event.step_key}: {event.step_failure_data.error.to_string()}"
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data is not None and event.step_failure_data.error
    ]
    if not details:
        return _first_error(result)
    path = failure_log(settings, result.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"run {result.run_id}\n\n" + "\n\n".join(details))
    first = (_first_error(result).splitlines() or ["run failed"])[0]
    return f"{first} (full error: {path})"


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            message = error.message.strip() if error else "unknown error"
            cause = error.cause if error else None
            while cause is not None:
                message = cause.message.strip()
                cause = cause.cause
            return f"{event.step_key}: {message}"
    for event in result.all_events:
        # A run failed from outside (its worker died): the code server's report says how, the failure event does not.
        died = WORKER_DIED.search(event.message or "") if event.event_type_value == "ENGINE_EVENT" else None
        if died is not None:
            return f"run failed: {died.group(0)}"
    for event in result.all_events:
        if event.event_type_value in ("PIPELINE_FAILURE", "RUN_FAILURE", "ENGINE_EVENT") and event.message:
            data = getattr(event.event_specific_data, "error", None)
            if event.event_type_value != "ENGINE_EVENT" or data is not None:
                return f"run failed: {event.message}" + (f": {data.message.strip()}" if data is not None else "")
    return "run failed (see the Dagster UI for its logs)"
