"""Jobs, the daily schedule and the sensors that keep accounts, the plan and the warehouse current.

The daily runs go by the clock (04:00 UTC, when CloudWatch has settled); everything after them goes by
state: the plan of a day once every active account's recommendations for it exist (or its deadline has
passed), the warehouse once the lake has stopped changing.
"""

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

import dagster as dg

from cloudopt_pipelines.assets.plan import PLAN_JOB, PLAN_KEY
from cloudopt_pipelines.partitions import ACCOUNTS_PARTITIONS_NAME, account_daily_partitions, account_day_key
from cloudopt_pipelines.resources.sources import SourceResource
from cloudopt_pipelines.settings import DEFAULT_PLAN_DEADLINE_HOURS
from cloudopt_pipelines.sources.base import SCHEDULABLE_STATUSES, UNREACHABLE

# The jobs run one partition per run (the schedule, `cloudopt run`), which is what Dagster falls back
# to for a job whose assets have different backfill policies; the single-run policy of the batch
# feature models applies to backfills launched from the asset graph.
warnings.filterwarnings("ignore", message="Asset job .* materializes assets with varying BackfillPolicies")

DAILY_JOB = "daily_pipeline"
CATALOG_JOB = "refresh_price_catalog"
WAREHOUSE_JOB = "refresh_warehouse"
PLAN_SENSOR = "portfolio_plan_when_ready"
WAREHOUSE_SENSOR = "warehouse_refresh"

IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# BulkActionStatus is not public API; its values are stable strings.
BACKFILL_IN_PROGRESS = frozenset({"REQUESTED", "CANCELING", "FAILING"})
DATE_TAG = "dagster/partition/date"
MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION


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
    unreachable = unreachable_accounts(registered, statuses)
    if unreachable:
        context.log.warning(
            f"account(s) {', '.join(unreachable)} are registered but the source does not reach them: not run. "
            "Check the id (CLOUDOPT_ACCOUNTS keeps leading zeros) and the role it assumes there; "
            "the partitions and history stay"
        )
    active = active_accounts(registered, statuses)
    if not active:
        return dg.SkipReason(f"none of the {len(registered)} registered accounts is active")
    requests = yesterday_requests(active, context.scheduled_execution_time or datetime.now(UTC))
    job = context.repository_def.get_job(DAILY_JOB) if context.repository_def else None
    dates = job.partitions_def.get_partitions_def_for_dimension("date") if job and job.partitions_def else None
    day = requests[0].partition_key.split("|")[1]
    if dates is not None and not dates.has_partition_key(day):
        # The demo's partitions are its data's days: a later day has nothing to collect.
        return dg.SkipReason(f"{day} is not a partition of {DAILY_JOB} (the demo's partitions end at its data)")
    return requests


def active_accounts(registered: Iterable[str], statuses: Mapping[str, str]) -> list[str]:
    """The registered accounts that are scheduled and that a plan waits for: ACTIVE or CONFIGURED in the
    source. An account the source does not list (a mistyped id, a role that cannot be assumed) is
    UNREACHABLE: it keeps its partitions and history but is neither run nor waited for."""
    return sorted(a for a in registered if statuses.get(a, UNREACHABLE) in SCHEDULABLE_STATUSES)


def unreachable_accounts(registered: Iterable[str], statuses: Mapping[str, str]) -> list[str]:
    """Registered accounts the source does not reach at all (not even as suspended)."""
    return sorted(a for a in registered if statuses.get(a, UNREACHABLE) == UNREACHABLE)


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


# --- the plan of a day, once its inputs are there -------------------------------------------------------


def plan_deadline(day: date, deadline: timedelta) -> datetime:
    """When the plan of ``day`` stops waiting for missing accounts: ``deadline`` after the day ends (UTC)."""
    return datetime.combine(day + timedelta(days=1), time(), UTC) + deadline


@dataclass(frozen=True)
class PlanDecision:
    """What the plan sensor does about one day, and why."""

    day: date
    action: Literal["plan", "wait", "done"]
    reason: str
    missing: tuple[str, ...] = ()
    run_key: str | None = None


def decide_plan(
    day: date,
    expected: Sequence[str],
    inputs: Mapping[tuple[str, str], int],
    recommendation_keys: Sequence[str],
    plan_storage_id: int | None,
    busy: bool,
    now: datetime,
    deadline: timedelta,
) -> PlanDecision:
    """Plan ``day`` when every expected account has every recommendations asset, or once the deadline has
    passed with at least one account; never twice for the same inputs.

    ``inputs`` maps (recommendations asset key, account) to the storage id of its latest materialisation
    of ``day``; ``plan_storage_id`` is the latest plan materialisation of ``day``; ``busy`` says that a run
    for ``day`` is still queued or running (it may write newer inputs).
    """
    if not inputs:
        return PlanDecision(day, "done", "no recommendations for this day")
    missing = tuple(a for a in expected if any((key, a) not in inputs for key in recommendation_keys))
    due = plan_deadline(day, deadline)
    if now < due:
        if missing:
            return PlanDecision(
                day, "wait", f"waiting until {due:%Y-%m-%d %H:%M} UTC for {', '.join(missing)}", missing
            )
        if busy:
            return PlanDecision(day, "wait", "runs of this day are still queued or running")
    if plan_storage_id is not None and plan_storage_id > max(inputs.values()):
        return PlanDecision(day, "done", "the plan is newer than every input", missing)
    signature = "\n".join(f"{key}|{account}|{sid}" for (key, account), sid in sorted(inputs.items()))
    digest = hashlib.sha256(signature.encode()).hexdigest()[:16]
    reason = "every active account is present" if not missing else f"deadline passed without {', '.join(missing)}"
    return PlanDecision(day, "plan", reason, missing, f"plan|{day.isoformat()}|{digest}")


@dataclass
class PlanCursor:
    """The plan sensor's state: the last recommendations event it has read, and the days still waiting."""

    after: int | None = None
    pending: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> "PlanCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(after=data.get("after"), pending=list(data.get("pending", [])))

    def dump(self) -> str:
        return json.dumps({"after": self.after, "pending": sorted(self.pending)})


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_plan_sensor(
    recommendation_keys: Sequence[dg.AssetKey],
    deadline: timedelta = timedelta(hours=DEFAULT_PLAN_DEADLINE_HOURS),
    clock: Callable[[], datetime] = _utc_now,
    minimum_interval_seconds: int = 300,
    max_requests_per_tick: int = 25,
) -> dg.SensorDefinition:
    """The sensor that plans day D once every active registered account has every one of
    ``recommendation_keys`` for D, or, with some still missing, once ``deadline`` after D has passed (the
    plan then names them in ``missing_accounts``). A day is planned again only when its inputs change (a
    late account, a re-run); the run key is a hash of the inputs, so the same inputs never plan twice.
    At most ``max_requests_per_tick`` days are requested per tick, newest first (a backfill of a year
    is planned over a few ticks, not in one burst); the others wait for the next tick."""
    keys = list(recommendation_keys)
    if not keys:
        raise ValueError("build_plan_sensor needs the asset keys of the recommendations the plan reads; got none")
    key_names = [k.to_user_string() for k in keys]
    plan_key = PLAN_KEY

    @dg.sensor(
        name=PLAN_SENSOR,
        job_name=PLAN_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def portfolio_plan_when_ready(context: dg.SensorEvaluationContext, source: SourceResource):
        """Plan a day once every active account's recommendations for it exist, or at its deadline
        (CLOUDOPT_PLAN_DEADLINE_HOURS after the day ends) with the accounts still missing named."""
        instance = context.instance
        cursor = PlanCursor.parse(context.cursor)
        days = {date.fromisoformat(d) for d in cursor.pending}
        after = cursor.after
        for key in keys:
            changed = instance.get_latest_storage_id_by_partition(key, MATERIALIZATION, after_cursor=cursor.after)
            for partition, storage_id in changed.items():
                days.add(_day_of(partition))
                after = storage_id if after is None else max(after, storage_id)
        if not days:
            return dg.SkipReason("no new recommendations and no day waiting")

        registered = sorted(instance.get_dynamic_partitions(ACCOUNTS_PARTITIONS_NAME))
        expected = active_accounts(registered, source.get_collector().list_account_statuses())
        busy_days = _busy_days(instance)
        now = clock()
        requests, pending = [], []
        for day in sorted(days, reverse=True):
            decision = decide_plan(
                day,
                expected,
                _inputs(instance, keys, registered, day),
                key_names,
                instance.get_latest_storage_id_by_partition(
                    plan_key, MATERIALIZATION, partitions={day.isoformat()}
                ).get(day.isoformat()),
                day.isoformat() in busy_days,
                now,
                deadline,
            )
            context.log.info(f"{day}: {decision.action} ({decision.reason})")
            if decision.action == "wait" or (decision.action == "plan" and len(requests) >= max_requests_per_tick):
                pending.append(day.isoformat())
            elif decision.action == "plan":
                requests.append(
                    dg.RunRequest(
                        run_key=decision.run_key,
                        partition_key=day.isoformat(),
                        tags={
                            "cloudopt/plan_trigger": "deadline" if decision.missing else "all_accounts",
                            "cloudopt/missing_account_count": str(len(decision.missing)),
                        },
                    )
                )
        new_cursor = PlanCursor(after=after, pending=pending).dump()
        if not requests:
            waiting = f"{len(pending)} day(s) waiting for accounts or runs" if pending else "every day is planned"
            return dg.SensorResult(skip_reason=waiting, cursor=new_cursor)
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return portfolio_plan_when_ready


def _day_of(partition: str) -> date:
    key = account_daily_partitions.get_partition_key_from_str(partition)
    return date.fromisoformat(key.keys_by_dimension["date"])


def _inputs(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey], registered: Sequence[str], day: date
) -> dict[tuple[str, str], int]:
    """(asset key, account) -> storage id of the latest materialisation of that account on ``day``."""
    if not registered:  # an empty partition set would mean every partition to the event log
        return {}
    by_partition = {str(account_day_key(a, day)): a for a in registered}
    inputs = {}
    for key in keys:
        latest = instance.get_latest_storage_id_by_partition(key, MATERIALIZATION, partitions=set(by_partition))
        for partition, storage_id in latest.items():
            inputs[(key.to_user_string(), by_partition[partition])] = storage_id
    return inputs


def _busy_days(instance: dg.DagsterInstance) -> set[str]:
    """The days of account x day runs still queued or running (not the plan's own runs)."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES))
    return {r.tags[DATE_TAG] for r in runs if DATE_TAG in r.tags and r.job_name != PLAN_JOB}


# --- the warehouse, once the lake has stopped changing --------------------------------------------------


def build_warehouse_refresh_sensor(
    warehouse_asset: dg.AssetsDefinition, minimum_interval_seconds: int = 60
) -> dg.SensorDefinition:
    """The sensor that rebuilds the warehouse once per burst of lake writes: when some lake table has a
    materialisation the last rebuild has not seen and no run that writes the lake (nor a backfill) is
    still queued or running. A backfill of N partitions thus gives one rebuild, not N."""
    warehouse_key = warehouse_asset.key
    lake_keys = sorted(warehouse_asset.dependency_keys - {warehouse_key}, key=lambda k: k.to_user_string())

    @dg.sensor(
        name=WAREHOUSE_SENSOR,
        job_name=WAREHOUSE_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def warehouse_refresh(context: dg.SensorEvaluationContext):
        """Rebuild the warehouse once the lake has new materialisations and nothing writes it any more."""
        instance = context.instance
        entries = {
            r.asset_entry.asset_key: r.asset_entry for r in instance.get_asset_records([*lake_keys, warehouse_key])
        }
        writes = [
            e.last_materialization_record.storage_id
            for k, e in entries.items()
            if k != warehouse_key and e.last_materialization_record is not None
        ]
        if not writes:
            return dg.SkipReason("nothing has been written to the lake yet")
        latest = max(writes)
        refresh = entries.get(warehouse_key)
        covered = _refresh_covers(instance, warehouse_key, refresh.last_materialization_record if refresh else None)
        if covered is not None and latest < covered:
            return dg.SkipReason("the warehouse is newer than every lake write")
        if context.cursor and latest <= int(context.cursor):
            return dg.SkipReason(f"a refresh for the lake up to event {context.cursor} was already requested")
        busy = _writers_in_flight(instance, warehouse_key)
        if busy:
            return dg.SkipReason(f"waiting for {busy}")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"warehouse-after-{latest}")], cursor=str(latest))

    return warehouse_refresh


def _refresh_covers(
    instance: dg.DagsterInstance, warehouse_key: dg.AssetKey, record: dg.EventLogRecord | None
) -> int | None:
    """The event id up to which the latest rebuild saw the lake: the planned-materialisation event of
    the run that made it, written before the run started (a lake write during that run may have come
    after the rebuild listed the lake). ``None`` when unknown, e.g. a later refresh failed."""
    if record is None:
        return None
    planned = instance.get_latest_planned_materialization_info(warehouse_key)
    return planned.storage_id if planned is not None and planned.run_id == record.run_id else None


def _writers_in_flight(instance: dg.DagsterInstance, warehouse_key: dg.AssetKey) -> str:
    """What still writes the lake (or rebuilds the warehouse): runs queued or running, backfills in
    progress; empty when nothing does."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES))
    refreshes = [r for r in runs if r.job_name == WAREHOUSE_JOB or r.asset_selection == {warehouse_key}]
    writers = len(runs) - len(refreshes)
    backfills = [b for b in instance.get_backfills(limit=100) if b.status.value in BACKFILL_IN_PROGRESS]
    parts = []
    if writers:
        parts.append(f"{writers} run(s) writing the lake")
    if backfills:
        parts.append(f"{len(backfills)} backfill(s) in progress")
    if refreshes:
        parts.append("a warehouse refresh already queued or running")
    return " and ".join(parts)
