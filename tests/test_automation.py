"""The daily schedule, account discovery and the warehouse refresh, evaluated against real instances."""

from datetime import UTC, datetime

import dagster as dg

from cloudopt_pipelines.automation import DAILY_JOB, WAREHOUSE_JOB, account_discovery, daily_pipeline_schedule
from cloudopt_pipelines.definitions import build_definitions
from cloudopt_pipelines.orchestration import ensure_instance, register_accounts
from cloudopt_pipelines.partitions import daily_partitions
from cloudopt_pipelines.resources.sources import DemoSourceResource
from cloudopt_pipelines.settings import Settings
from tests.conftest import DEMO_ACCOUNTS


def _tick(
    instance: dg.DagsterInstance, defs: dg.Definitions, source: DemoSourceResource
) -> dg.ScheduleEvaluationContext:
    return dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 23, 4, 0, tzinfo=UTC),
        resources={"source": source},
        repository_def=defs.get_repository_def(),
    )


def test_schedule_tick_requests_yesterday_for_every_registered_account(fresh_home: Settings) -> None:
    instance = ensure_instance(fresh_home)
    register_accounts(instance, ["000000000042", *DEMO_ACCOUNTS])
    defs = build_definitions(fresh_home)
    schedule = defs.resolve_schedule_def("daily_pipeline_schedule")
    result = schedule.evaluate_tick(_tick(instance, defs, DemoSourceResource()))
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [f"{a}|2026-11-22" for a in ["000000000042", *DEMO_ACCOUNTS]]
    assert len({r.run_key for r in result.run_requests}) == 3
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
