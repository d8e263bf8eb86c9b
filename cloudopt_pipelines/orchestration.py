"""Run the pipeline for a range of days through Dagster, on the persistent instance under $CLOUDOPT_HOME.

This is what ``cloudopt run`` and ``make demo`` call: one run of the daily job per account and day,
as a backfill launches them, then the warehouse refresh. Every run is recorded in the instance, so
the Dagster UI shows the same materialisations afterwards.

Every run is tagged with the process that executes it. A process killed mid-run (SIGKILL, a lost
machine) leaves its run STARTED and, in the warehouse step, the only slot of the pool
``duckdb_warehouse`` claimed; ``recover_dead_runs`` (called when a range starts and while the
warehouse refresh waits for the pool) marks such runs failed and frees their slots. The wait for the
pool is bounded and names the run that holds it. An interrupt (Ctrl-C, SIGTERM) stops the range
instead of failing one run and going on.
"""

import os
import socket
import time
from collections.abc import Callable, Mapping
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
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


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


def recover_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs whose process is gone and free the pool slots they or finished runs hold.

    Returns the ids of the runs marked failed.
    """
    recovered: list[str] = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED_STATUSES)):
        run = record.dagster_run
        if not process_gone(run.tags):
            continue
        instance.report_run_failed(
            run,
            message=f"process {run.tags[TAG_PID]} on {run.tags[TAG_HOST]} that ran this run is gone (killed); "
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
        instance.add_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME, new)
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
) -> RangeResult:
    """Materialise every account x day in [start, end], then refresh the warehouse.

    With ``skip_done``, an account x day whose every asset of the daily job is already materialised is
    kept as it is, and so is the plan of a day none of whose accounts ran again; the warehouse is
    rebuilt only when something ran (or it is missing).

    ``accounts`` (default: every account the source reaches) must be accounts the source reaches; a
    ValueError names any other before anything runs or is registered. Runs left unfinished by killed
    processes are marked failed first, and leftovers of killed writers removed.
    """
    settings = settings or load_settings()
    days = day_range(start, end, partitions_for(settings))
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
    lake = open_lake(settings.lake_url)
    run_config = QUIET_RUN_CONFIG if quiet else None

    if refresh_catalog or not lake.exists("price_catalog"):
        progress("building the price catalogue ...")
        outcome = execute_job(defs.resolve_job_def(CATALOG_JOB), instance, run_config=run_config)
        if not outcome.success:
            raise RuntimeError(f"the price catalogue failed to build: {_first_error(outcome)}")

    daily = defs.resolve_job_def(DAILY_JOB)
    plan_job = defs.resolve_job_def(PLAN_JOB)
    done_partitions = finished_partitions(instance, daily) if skip_done else set()
    done_plans = finished_partitions(instance, plan_job) if skip_done else set()
    total = len(days) * len(accounts)
    for n, (day, account) in enumerate(((d, a) for d in days for a in accounts), start=1):
        if str(account_day_key(account, day)) in done_partitions:
            result.outcomes.append(PartitionOutcome(account, day, True, "", skipped=True))
            progress(f"[{n}/{total}] {day} account {account}: already materialised, kept (--force redoes it)")
            tracker.advance()
            continue
        outcome = execute_job(daily, instance, partition_key=account_day_key(account, day), run_config=run_config)
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
        outcome = execute_job(plan_job, instance, partition_key=day.isoformat(), run_config=run_config)
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
        outcome = execute_job(defs.resolve_job_def(WAREHOUSE_JOB), instance, run_config=run_config)
        if outcome.success:
            for warning in _materialization_warnings(outcome):
                progress(f"warehouse: {warning}")
            break
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
        if event.event_type_value in ("PIPELINE_FAILURE", "RUN_FAILURE", "ENGINE_EVENT") and event.message:
            data = getattr(event.event_specific_data, "error", None)
            if event.event_type_value != "ENGINE_EVENT" or data is not None:
                return f"run failed: {event.message}" + (f": {data.message.strip()}" if data is not None else "")
    return "run failed (see the Dagster UI for its logs)"
