"""Run the pipeline for a range of days through Dagster, on the persistent instance under $CLOUDOPT_HOME.

This is what ``cloudopt run`` and ``make demo`` call: one run of the daily job per account and day,
as a backfill launches them, then the warehouse refresh. Every run is recorded in the instance, so
the Dagster UI shows the same materialisations afterwards.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from cloudopt_pipelines.assets.plan import PLAN_JOB
from cloudopt_pipelines.automation import CATALOG_JOB, DAILY_JOB, WAREHOUSE_JOB
from cloudopt_pipelines.definitions import build_definitions, source_for
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, account_day_key, daily_partitions
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.settings import Settings, load_settings
from cloudopt_pipelines.storage.lake import Lake

INSTANCE_YAML = """\
# The Dagster instance of cloudopt_pipelines (SQLite storage under this folder).
concurrency:
  pools:
    # Writers of the DuckDB warehouse (pool "duckdb_warehouse") run one at a time.
    default_limit: 1
telemetry:
  enabled: false
"""


@dataclass
class PartitionOutcome:
    account_id: str
    day: date
    success: bool
    run_id: str
    error: str | None = None


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


def ensure_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent Dagster instance under ``$CLOUDOPT_HOME/dagster`` (created on first use)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return dg.DagsterInstance.from_config(str(home))


def register_accounts(instance: dg.DagsterInstance, accounts: list[str]) -> list[str]:
    """Add accounts not yet known as partitions; returns the ones added."""
    known = set(instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME))
    new = sorted(set(accounts) - known)
    if new:
        instance.add_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME, new)
    return new


def day_range(start: date, end: date) -> list[date]:
    """Every day from start to end, checked against the daily partitions (complete UTC days only)."""
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    first = date.fromisoformat(daily_partitions.get_first_partition_key())
    last_key = daily_partitions.get_last_partition_key()
    last = date.fromisoformat(last_key) if last_key else first
    if start < first:
        raise ValueError(f"--start {start} is before the first partition {first}: pick --start {first} or later")
    if end > last:
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
) -> RangeResult:
    """Materialise every account x day in [start, end], then refresh the warehouse."""
    days = day_range(start, end)
    settings = settings or load_settings()
    source = source or source_for(settings)
    defs = build_definitions(settings, source)
    instance = ensure_instance(settings)
    accounts = sorted(accounts) if accounts else source.get_collector().list_accounts()
    if not accounts:
        raise ValueError(
            "no accounts to run: pass --accounts, set CLOUDOPT_ACCOUNTS, or give the collector access "
            "to AWS Organizations (organizations:ListAccounts)"
        )
    added = register_accounts(instance, accounts)
    if added:
        progress(f"registered {len(added)} account partition(s): {', '.join(added)}")
    result = RangeResult(accounts=accounts, days=days)
    lake = Lake(settings.lake_dir)
    run_config = QUIET_RUN_CONFIG if quiet else None

    if refresh_catalog or not lake.exists("price_catalog"):
        progress("building the price catalogue ...")
        outcome = defs.resolve_job_def(CATALOG_JOB).execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config
        )
        if not outcome.success:
            raise RuntimeError(f"the price catalogue failed to build: {_first_error(outcome)}")

    daily = defs.resolve_job_def(DAILY_JOB)
    total = len(days) * len(accounts)
    for n, (day, account) in enumerate(((d, a) for d in days for a in accounts), start=1):
        outcome = daily.execute_in_process(
            instance=instance,
            partition_key=account_day_key(account, day),
            raise_on_error=False,
            run_config=run_config,
            tags={"cloudopt/launched_by": "cloudopt run"},
        )
        error = None if outcome.success else _first_error(outcome)
        result.outcomes.append(PartitionOutcome(account, day, outcome.success, outcome.run_id, error))
        status = "ok" if outcome.success else f"FAILED: {error}"
        progress(f"[{n}/{total}] {day} account {account}: {status}")

    plan_job = defs.resolve_job_def(PLAN_JOB)
    for day in days:
        if not any(o.success and o.day == day for o in result.outcomes):
            progress(f"[plan] {day} skipped: no account of that day was materialised")
            continue
        outcome = plan_job.execute_in_process(
            instance=instance,
            partition_key=day.isoformat(),
            raise_on_error=False,
            run_config=run_config,
            tags={"cloudopt/launched_by": "cloudopt run"},
        )
        error = None if outcome.success else _first_error(outcome)
        result.outcomes.append(PartitionOutcome(PLAN_OUTCOME_ACCOUNT, day, outcome.success, outcome.run_id, error))
        status = "ok" if outcome.success else f"FAILED: {error}"
        progress(f"[plan] {day} portfolio plan across {len(accounts)} account(s): {status}")

    progress("refreshing the warehouse ...")
    # The rebuild is idempotent. A second try covers a Dagster race: two processes that first use the
    # pool "duckdb_warehouse" at the same moment both insert its limit row, and one of them fails.
    for attempt in range(1, WAREHOUSE_ATTEMPTS + 1):
        outcome = defs.resolve_job_def(WAREHOUSE_JOB).execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config
        )
        if outcome.success:
            break
        if attempt == WAREHOUSE_ATTEMPTS:
            raise RuntimeError(f"the warehouse refresh failed: {_first_error(outcome)}")
        progress(f"warehouse refresh failed ({_first_error(outcome)[:200]}); trying again")
        time.sleep(1.0)
    result.warehouse_path = settings.warehouse_path
    return result


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
