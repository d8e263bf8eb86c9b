"""The daily schedule, account discovery and the warehouse refresh, evaluated against real instances."""

from datetime import UTC, datetime

import dagster as dg

from cloudopt_pipelines.automation import DAILY_JOB, WAREHOUSE_JOB, account_discovery, daily_pipeline_schedule
from cloudopt_pipelines.config import Settings
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.partitions import account_daily_partitions
from cloudopt_pipelines.resources.sources import DemoSourceResource
from tests.conftest import DEMO_ACCOUNTS


def test_schedule_tick_requests_yesterday_for_every_registered_account(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    register_accounts(instance, ["000000000042", *DEMO_ACCOUNTS])
    tick = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
    result = daily_pipeline_schedule.evaluate_tick(context)
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [f"{a}|2026-11-22" for a in ["000000000042", *DEMO_ACCOUNTS]]
    assert len({r.run_key for r in result.run_requests}) == 3
    for key in keys:
        assert account_daily_partitions.has_partition_key(key, dynamic_partitions_store=instance)
    defs = build_definitions(fresh_home)
    assert defs.resolve_schedule_def("daily_pipeline_schedule").job_name == DAILY_JOB


def test_schedule_skips_when_no_account_is_registered(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 23, 4, tzinfo=UTC)
    )
    result = daily_pipeline_schedule.evaluate_tick(context)
    assert not result.run_requests
    assert "no accounts registered" in result.skip_message


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


def test_successful_daily_run_triggers_a_warehouse_refresh(demo_home: Settings) -> None:
    instance = ensure_instance(demo_home)
    defs = build_definitions(demo_home)
    [run] = instance.get_runs(
        filters=dg.RunsFilter(job_name=DAILY_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    [success] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
    sensor = defs.resolve_sensor_def("warehouse_refresh")
    context = dg.build_run_status_sensor_context(
        sensor_name="warehouse_refresh", dagster_instance=instance, dagster_run=run, dagster_event=success.dagster_event
    )
    request = sensor(context)
    assert isinstance(request, dg.RunRequest) and request.run_key == f"after-{run.run_id}"
    assert sensor.job_name == WAREHOUSE_JOB or WAREHOUSE_JOB in {t.job_name for t in sensor.targets}
