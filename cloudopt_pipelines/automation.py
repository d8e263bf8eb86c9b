"""Jobs, the daily schedule and the sensors that keep accounts and the warehouse current."""

import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg

from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, account_daily_partitions, account_day_key
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.sources.base import SCHEDULABLE_STATUSES

# The jobs run one partition per run (the schedule, `cloudopt run`), which is what Dagster falls back
# to for a job whose assets have different backfill policies; the single-run policy of the batch
# feature models applies to backfills launched from the asset graph.
warnings.filterwarnings("ignore", message="Asset job .* materializes assets with varying BackfillPolicies")

DAILY_JOB = "daily_pipeline"
CATALOG_JOB = "refresh_price_catalog"
WAREHOUSE_JOB = "refresh_warehouse"


def build_jobs(account_daily_keys: list[dg.AssetKey], catalog_keys: list[dg.AssetKey], warehouse_key: dg.AssetKey):
    daily = dg.define_asset_job(
        DAILY_JOB,
        selection=dg.AssetSelection.assets(*account_daily_keys),
        description="Collect, then compute features, for one account on one UTC day.",
    )
    catalog = dg.define_asset_job(
        CATALOG_JOB, selection=dg.AssetSelection.assets(*catalog_keys), description="Rebuild the price catalogue."
    )
    warehouse = dg.define_asset_job(
        WAREHOUSE_JOB,
        selection=dg.AssetSelection.assets(warehouse_key),
        description="Rebuild the DuckDB warehouse views and marts.",
    )
    return daily, catalog, warehouse


def yesterday_requests(accounts: list[str], now: datetime) -> list[dg.RunRequest]:
    """One run request per account for the UTC day before ``now``."""
    day = (now.astimezone(UTC) - timedelta(days=1)).date().isoformat()
    return [
        dg.RunRequest(run_key=f"{account}|{day}", partition_key=account_day_key(account, day))
        for account in sorted(accounts)
    ]


@dg.schedule(job_name=DAILY_JOB, cron_schedule="0 4 * * *", execution_timezone="UTC")
def daily_pipeline_schedule(context: dg.ScheduleEvaluationContext, source: SourceResource):
    """At 04:00 UTC, materialise yesterday for every registered account that is still active
    (CloudWatch has settled by then). Suspended accounts keep their history and are skipped."""
    registered = context.instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME)
    if not registered:
        return dg.SkipReason("no accounts registered yet: turn on the account_discovery sensor or run 'cloudopt run'")
    statuses = source.get_collector().list_account_statuses()
    active = [a for a in registered if statuses.get(a, "ACTIVE") in SCHEDULABLE_STATUSES]
    if not active:
        return dg.SkipReason(f"none of the {len(registered)} registered accounts is active")
    return yesterday_requests(active, context.scheduled_execution_time or datetime.now(UTC))


@dg.schedule(job_name="portfolio_plan_job", cron_schedule="0 6 * * *", execution_timezone="UTC")
def daily_plan_schedule(context: dg.ScheduleEvaluationContext):
    """At 06:00 UTC, two hours after the accounts' runs, plan yesterday across every account that has
    recommendations (accounts still missing are listed in the plan's metadata)."""
    now = context.scheduled_execution_time or datetime.now(UTC)
    day = (now.astimezone(UTC) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"plan|{day}", partition_key=day)


@dg.sensor(minimum_interval_seconds=3600, default_status=dg.DefaultSensorStatus.RUNNING)
def account_discovery(context: dg.SensorEvaluationContext, source: SourceResource):
    """Register the accounts the source can reach as partitions (demo: the embedded fleet; AWS:
    CLOUDOPT_ACCOUNTS or the ACTIVE accounts of AWS Organizations). A suspended account is not
    registered; one already registered keeps its partitions and history, and the schedule skips it."""
    known = set(context.instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME))
    statuses = source.get_collector().list_account_statuses()
    found = {account for account, status in statuses.items() if status in SCHEDULABLE_STATUSES}
    new = sorted(found - known)
    inactive = sorted(a for a in known if a in statuses and statuses[a] not in SCHEDULABLE_STATUSES)
    if inactive:
        context.log.info(f"accounts no longer active (kept, not scheduled): {', '.join(inactive)}")
    if not new:
        return dg.SkipReason(f"{len(known)} accounts registered, none new")
    return dg.SensorResult(dynamic_partitions_requests=[account_partitions_request(new)])


def account_partitions_request(accounts: list[str]) -> dg.AddDynamicPartitionsRequest:
    return dg.AddDynamicPartitionsRequest(partitions_def_name=ACCOUNTS_PARTITIONS_NAME, partition_keys=accounts)


def build_warehouse_refresh_sensor(warehouse_job) -> dg.SensorDefinition:
    """After each successful run that wrote the lake (the daily job, a backfill, a materialisation from
    the UI), rebuild the warehouse so that new tables and marts appear as views."""

    @dg.run_status_sensor(
        name="warehouse_refresh",
        run_status=dg.DagsterRunStatus.SUCCESS,
        request_job=warehouse_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def warehouse_refresh(context: dg.RunStatusSensorContext):
        """Rebuild the warehouse once a run that wrote the lake has succeeded."""
        if context.dagster_run.job_name == WAREHOUSE_JOB:
            return dg.SkipReason("the warehouse refresh itself")
        return dg.RunRequest(run_key=f"after-{context.dagster_run.run_id}")

    return warehouse_refresh
