"""The daily schedule, account discovery and the coalesced warehouse refresh, evaluated against real
instances; and the definitions import without a Dagster deprecation warning."""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from cloudopt_pipelines.assets.raw import resources
from cloudopt_pipelines.automation import (
    DAILY_JOB,
    WAREHOUSE_JOB,
    WAREHOUSE_SENSOR,
    account_discovery,
    daily_pipeline_schedule,
)
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.partitions import account_day_key, daily_partitions
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.resources.storage import LakeResource
from cloudopt_pipelines.settings import Settings
from tests.conftest import DEMO_ACCOUNTS

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _tick(
    instance: dg.DagsterInstance, defs: dg.Definitions, source: DemoSourceResource
) -> dg.ScheduleEvaluationContext:
    return dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 23, 4, 0, tzinfo=UTC),
        resources={"source": source},
        repository_def=defs.get_repository_def(),
    )


def test_schedule_tick_requests_yesterday_for_every_reachable_registered_account(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    register_accounts(instance, ["000000000042", *DEMO_ACCOUNTS])  # 000000000042: a mistyped id, say
    defs = build_definitions(fresh_home)
    schedule = defs.resolve_schedule_def("daily_pipeline_schedule")
    result = schedule.evaluate_tick(_tick(instance, defs, DemoSourceResource()))
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [f"{a}|2026-11-22" for a in DEMO_ACCOUNTS]  # the source does not reach 000000000042
    assert len({r.run_key for r in result.run_requests}) == 2
    assert instance.has_dynamic_partition("accounts", "000000000042")  # marked, not forgotten
    for request in result.run_requests:
        account, day = request.partition_key.split("|")
        assert instance.has_dynamic_partition("accounts", account)
        assert daily_partitions.has_partition_key(day)
        assert request.tags["dagster/schedule_name"] == "daily_pipeline_schedule"
    assert schedule.job_name == DAILY_JOB


def test_schedule_skips_when_no_account_is_registered(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    result = daily_pipeline_schedule.evaluate_tick(_tick(instance, build_definitions(fresh_home), DemoSourceResource()))
    assert not result.run_requests
    assert "no accounts registered" in result.skip_message


class _OrgWithSuspendedAccount(DemoSourceResource):
    """The demo source, but AWS Organizations reports the second account SUSPENDED."""

    def get_collector(self):
        collector = super().get_collector()
        statuses = {DEMO_ACCOUNTS[0]: "ACTIVE", DEMO_ACCOUNTS[1]: "SUSPENDED"}
        collector.list_account_statuses = lambda: statuses
        return collector


def test_suspended_account_is_neither_registered_nor_scheduled_but_keeps_history(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    discovery = account_discovery.evaluate_tick(
        dg.build_sensor_context(instance=instance, resources={"source": _OrgWithSuspendedAccount()})
    )
    assert list(discovery.dynamic_partitions_requests[0].partition_keys) == [DEMO_ACCOUNTS[0]]
    register_accounts(instance, DEMO_ACCOUNTS)
    source = _OrgWithSuspendedAccount()
    tick = _tick(instance, build_definitions(fresh_home, source), source)
    result = daily_pipeline_schedule.evaluate_tick(tick)
    assert [r.partition_key for r in result.run_requests] == [f"{DEMO_ACCOUNTS[0]}|2026-11-22"]
    assert sorted(instance.get_dynamic_partitions("accounts")) == DEMO_ACCOUNTS


def test_account_discovery_adds_only_new_accounts(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    register_accounts(instance, [DEMO_ACCOUNTS[0]])
    context = dg.build_sensor_context(instance=instance, resources={"source": DemoSourceResource()})
    result = account_discovery.evaluate_tick(context)
    [request] = result.dynamic_partitions_requests
    assert request.partitions_def_name == "accounts"
    assert list(request.partition_keys) == [DEMO_ACCOUNTS[1]]
    register_accounts(instance, DEMO_ACCOUNTS)
    again = account_discovery.evaluate_tick(
        dg.build_sensor_context(instance=instance, resources={"source": DemoSourceResource()})
    )
    assert not again.dynamic_partitions_requests and "none new" in again.skip_message


class _Lake:
    """Real runs against one fresh home: ``raw/resources`` partitions written, the warehouse rebuilt."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = ensure_instance(settings)
        register_accounts(self.instance, DEMO_ACCOUNTS)
        self.defs = build_definitions(settings)
        self.sensor = self.defs.resolve_sensor_def(WAREHOUSE_SENSOR)
        self.cursor: str | None = None

    def write(self, days: list[str]) -> None:
        for day in days:
            for account in DEMO_ACCOUNTS:
                result = dg.materialize(
                    [resources],
                    partition_key=account_day_key(account, day),
                    instance=self.instance,
                    resources={"source": DemoSourceResource(), "lake": LakeResource(root=str(self.settings.lake_dir))},
                    run_config=QUIET,
                )
                assert result.success

    def refresh(self) -> None:
        result = self.defs.resolve_job_def(WAREHOUSE_JOB).execute_in_process(instance=self.instance, run_config=QUIET)
        assert result.success

    def tick(self) -> tuple[list[dg.RunRequest], str | None]:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, repository_def=self.defs.get_repository_def()
        )
        result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor if result.cursor is not None else self.cursor
        return list(result.run_requests or []), result.skip_message


def test_n_successful_runs_give_one_warehouse_refresh(fresh_home: Settings) -> None:
    lake = _Lake(fresh_home)
    assert lake.tick() == ([], "nothing has been written to the lake yet")
    lake.write(["2026-11-16", "2026-11-17"])  # 4 runs, as a backfill of 2 accounts x 2 days makes them
    successes = lake.instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert len(successes) == 4
    [request], _ = lake.tick()
    assert request.run_key.startswith("warehouse-after-")
    assert request.tags["dagster/sensor_name"] == WAREHOUSE_SENSOR
    requests, skip = lake.tick()
    assert not requests and "already requested" in skip

    lake.refresh()
    requests, skip = lake.tick()
    assert not requests and "newer than every lake write" in skip
    lake.write(["2026-11-18"])
    [again], _ = lake.tick()
    assert again.run_key != request.run_key
    assert lake.sensor.job_name == WAREHOUSE_JOB


def test_the_refresh_waits_while_a_run_still_writes_the_lake(fresh_home: Settings) -> None:
    lake = _Lake(fresh_home)
    lake.write(["2026-11-16"])
    queued = lake.instance.create_run_for_job(
        lake.defs.resolve_job_def(DAILY_JOB), status=dg.DagsterRunStatus.NOT_STARTED
    )
    requests, skip = lake.tick()
    assert not requests and skip == "waiting for 1 run(s) writing the lake"
    lake.instance.report_run_canceled(queued)
    [request], _ = lake.tick()
    assert request.run_key.startswith("warehouse-after-")


def test_a_refresh_already_running_is_not_requested_twice(fresh_home: Settings) -> None:
    lake = _Lake(fresh_home)
    lake.write(["2026-11-16"])
    lake.instance.create_run_for_job(lake.defs.resolve_job_def(WAREHOUSE_JOB), status=dg.DagsterRunStatus.NOT_STARTED)
    requests, skip = lake.tick()
    assert not requests and "a warehouse refresh already queued or running" in skip


def test_definitions_emit_no_dagster_deprecation_warning(tmp_path: Path) -> None:
    """Import and build the definitions in a fresh interpreter (the jobs are made at import) and list
    every Dagster deprecation warning; ``define_asset_job(partitions_def=...)`` was one of them."""
    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import cloudopt_pipelines.definitions as d\n"
        "    d.build_definitions().get_repository_def().get_all_jobs()\n"
        "for w in caught:\n"
        "    if 'is deprecated and will be removed' in str(w.message):\n"
        "        print(f'{w.filename}:{w.lineno}: {w.message}')\n"
    )
    env = {**os.environ, "CLOUDOPT_HOME": str(tmp_path / "home"), "CLOUDOPT_ENV": "demo"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "", out.stdout


def test_schedule_skips_a_day_after_the_demo_window(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    register_accounts(instance, DEMO_ACCOUNTS)
    defs = build_definitions(fresh_home)
    tick = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 12, 5, 4, 0, tzinfo=UTC),
        resources={"source": DemoSourceResource()},
        repository_def=defs.get_repository_def(),
    )
    result = defs.resolve_schedule_def("daily_pipeline_schedule").evaluate_tick(tick)
    assert not result.run_requests
    assert "2026-12-04 is not a partition of daily_pipeline" in result.skip_message
